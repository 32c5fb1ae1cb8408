"""One edit, end to end: load -> prepare map -> plan -> sample -> finish -> write."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass

import numpy as np

from diffdiff_cli import __version__
from diffdiff_cli.errors import InputError
from diffdiff_cli.finish import DEFAULT_PASTE_FEATHER, stitch_back, to_uint8
from diffdiff_cli.fit import Region, check_fit_settings, oversize_warning, parse_work_size, plan_region
from diffdiff_cli.load import MAP_CHANNELS, load_map, load_source
from diffdiff_cli.plan import SCHEDULES, Plan, banding_warning, plan_schedule, schedule_run
from diffdiff_cli.prepare_map import MapShaping, changes_nothing, dither_prepared, fit_image, fit_map, shaped_map, support_box
from diffdiff_cli.progress import Reporter
from diffdiff_cli.prompts import unsupported_syntax
from diffdiff_cli.schedulers import check_scheduler_name, sampler_label
from diffdiff_cli.write import save_atomically

DEFAULT_MODEL = "demo"  # as cli_options.DEFAULT_MODEL
DEFAULT_STEPS = 30


@dataclass
class EditSettings:
    prompt: str
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    scheduler: str | None = None  # None: the model's own
    steps: int = DEFAULT_STEPS
    guidance: float | None = None  # None: the family's usual scale
    strength: float = 1.0
    hardness: float = 1.0
    schedule: str = "timestep"
    invert_map: bool = False
    map_channel: str = "luma"  # luma, alpha, red, green, blue
    map_levels: str | None = None  # "LOW:HIGH"
    map_gamma: float = 1.0
    map_min: float = 0.0
    map_max: float = 1.0
    map_grow: float = 0.0  # pixels
    map_blur: float = 0.0  # pixels (Gaussian standard deviation)
    dither: bool = False
    strict_size: bool = False
    paste_back: bool = True
    paste_feather: float = DEFAULT_PASTE_FEATHER
    seed: int | None = None
    refiner: str | None = None  # an SDXL refiner, as --refiner named it (recorded, so --like reuses it)
    refiner_start: float = 0.8
    # What users bring to a checkpoint (issue 12): applied once per model load (models/extras.py)
    loras: tuple[str, ...] = ()  # "PATH:SCALE"
    embeddings: tuple[str, ...] = ()  # "PATH:TOKEN"
    vae: str | None = None
    clip_skip: int | None = None  # A1111's meaning: 1 = last layer, 2 = the one before
    fuse_lora: bool = True
    fit: str = "auto"  # auto: the map's region at the model's native area; full: the whole image at its own size
    context: int | None = None  # pixels around the map's support (None: fit.auto_context)
    forced_work_size: str | None = None  # "WxH": run the model at this size instead

    def guidance_for(self, family) -> float:
        return family.default_guidance if self.guidance is None else self.guidance

    def validate(self) -> None:
        """Range checks, each a one-line usage error naming the flag."""
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: must be at least 1")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"--strength {self.strength:g}: must be in (0, 1]; 1 lets white change fully")
        if not 0.0 <= self.hardness <= 1.0:
            raise InputError(f"--hardness {self.hardness:g}: must be in [0, 1]; 1 = binary masks, 0 = fully soft")
        if not 0.0 < self.refiner_start < 1.0:
            raise InputError(f"--refiner-start {self.refiner_start:g}: must be between 0 and 1 (exclusive)")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise InputError(f"--guidance {self.guidance:g}: must be a finite number, 0 or more")
        if not 0.0 <= self.paste_feather <= 1.0:
            raise InputError(f"--paste-feather {self.paste_feather:g}: must be in [0, 1]")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InputError(f"--seed {self.seed}: must be in 0 .. 2^64-1, or -1 for a random seed")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule}: choose one of: {', '.join(SCHEDULES)}")
        check_scheduler_name(self.scheduler)
        if self.clip_skip is not None and self.clip_skip < 1:
            raise InputError(f"--clip-skip {self.clip_skip}: must be 1 or more (1 = the last layer, as in A1111)")
        if self.map_channel not in MAP_CHANNELS:
            raise InputError(f"--map-channel {self.map_channel}: choose one of: {', '.join(MAP_CHANNELS)}")
        MapShaping.from_settings(self).validate()
        check_fit_settings(self.fit, self.context, self.forced_work_size)


def new_seed() -> int:
    return secrets.randbelow(2**32)


@dataclass
class EditResult:
    image: object  # PIL image, the input's size and mode
    seed: int
    plan: Plan
    x0: object  # clean latent (tensor)
    noise: object  # the run's noise tensor (the start latent and every pinned copy use it)
    latents: object  # final latent (tensor)
    change_latent: np.ndarray
    seconds: float
    region: Region | None = None
    denoiser_calls: list | None = None  # the latent (h, w) of every denoiser call


@dataclass
class RunPlan:
    prepared: object  # PreparedMap (dithered when asked), or None without a map
    scheduler: object  # None when planned without sampling
    timesteps: object
    plan: Plan
    region: Region | None = None  # None without a map or an image size
    change: np.ndarray | None = None  # the shaped map at the image's full size (for the paste-back)


def plan_with_map(
    family, scheduler_config: dict, factor: int, settings: EditSettings, raw_map=None, image_size=None,
    seed: int | None = None, refiner_start: float | None = None, map_label: str = "--map", reporter: Reporter | None = None,
    sampling: bool = True,
    native_side: int | None = None,
    shaped: tuple | None = None,
) -> RunPlan:
    """Weights-free part of a run: shape the map, choose the working region, bring the map onto the
    latent grid of the working size, plan the schedule, dither.

    `raw_map` is the map's values at its own size; `image_size` the image it applies to (default: the
    map's size). `native_side` is the model's resolution (default: the family's). Without a map the
    whole image (or, without one either, the native size) is planned. `sampling=False` (plan, map
    preview) gives the plan alone, without a scheduler, torch or diffusers where `schedule_np` covers it.
    `shaped` is the map already shaped at the image's size, with its notices (caches.RunCaches.shaped_map),
    in place of `raw_map`.
    """
    native_side = native_side or family.default_size
    multiple = factor * family.patch
    prepared = change = region = None
    latent_shape = (native_side // factor,) * 2
    if raw_map is not None or image_size is not None:
        size = image_size or (raw_map.shape[1], raw_map.shape[0])
        support = (0, 0, *size)
        if raw_map is not None or shaped is not None:
            if shaped is None:
                shaped = shaped_map(raw_map, size, MapShaping.from_settings(settings), settings.strict_size, map_label)
            change, notices = shaped
            support = support_box(change)
            for notice in notices:
                if reporter is not None:
                    reporter.notice(notice)
        work_size = parse_work_size(settings.forced_work_size)
        region = plan_region(support, size, native_side, multiple, settings.fit, settings.context, work_size)
        warning = oversize_warning(region, forced=work_size is not None)
        if warning and reporter is not None:
            reporter.warn(warning)
        latent_shape = (region.work_size[1] // factor, region.work_size[0] // factor)
        if change is not None:
            prepared = fit_map(change, region, factor)
            latent_shape = prepared.latent.shape
    scheduling = (family, scheduler_config, settings.scheduler, settings.steps, settings.strength, settings.schedule, latent_shape, seed)
    if sampling:
        scheduler, timesteps, plan = schedule_run(*scheduling, refiner_start=refiner_start)
    else:
        scheduler, timesteps, plan = None, None, plan_schedule(*scheduling, refiner_start=refiner_start)
    if prepared is not None:
        if settings.dither:
            prepared = dither_prepared(prepared, plan.thresholds, plan.level_rule)
        warning = banding_warning(plan, prepared.latent)
        if warning and reporter is not None:
            reporter.warn(warning)
    return RunPlan(prepared, scheduler, timesteps, plan, region, change)


def _record_denoiser_calls(adapter) -> list:
    """Wrap the adapter's denoiser call to note the latent (h, w) it sees each time (reported in the JSON)."""
    calls = []
    denoise = adapter.denoise

    def counted(latents, t, conditioning):
        calls.append(tuple(latents.shape[-2:]))
        return denoise(latents, t, conditioning)

    adapter.denoise = counted
    return calls


# Schedulers whose per-step noise cannot be drawn per image from each image's own generator (DPM++ SDE's
# Brownian tree is seeded once for the whole latent): their jobs are never batched.
UNBATCHABLE_SCHEDULERS = ("DPMSolverSDEScheduler",)


@dataclass
class PreparedEdit:
    """One job loaded and planned (load -> prepare map -> plan): everything before the denoiser."""

    settings: EditSettings
    image_path: str
    map_path: object  # a file path, or map values in memory
    label: str
    seed: int
    source: object  # load.SourceImage
    run: RunPlan
    work: object  # PIL image: the working region, at the working size
    started: float
    index: int = 0  # a caller's tag (the job it came from)

    def batch_key(self, family) -> tuple:
        """Jobs with equal keys can share denoiser calls: the same working size, plan and denoiser settings.

        The plan (timesteps, sigmas, thresholds) stands for the model, sampler, steps, strength, schedule
        and resolution shift; prompts, maps, seeds and outputs are per image.
        """
        s, run = self.settings, self.run
        if type(run.scheduler).__name__ in UNBATCHABLE_SCHEDULERS:
            return ("alone", id(self))
        evaluations = tuple((e.timestep, e.sigma, e.threshold, e.denoiser) for e in run.plan.evaluations)
        return (
            self.work.size, run.prepared.latent.shape, evaluations, run.plan.schedule, s.guidance_for(family), s.hardness,
            s.clip_skip, type(run.scheduler).__name__, tuple(sorted(run.scheduler.config.items(), key=str)).__repr__(),
        )


def prepare_edit(
    model, settings: EditSettings, image_path: str, map_path, reporter: Reporter | None = None, label: str | None = None,
    caches=None,
) -> PreparedEdit:
    """Load the image and the map (the map through `caches`, once per file, shaping and size) and plan the run."""
    from PIL import Image

    from diffdiff_cli.caches import RunCaches

    reporter = reporter or Reporter(quiet=True)
    caches = caches if caches is not None else RunCaches()
    started = time.monotonic()
    seed = new_seed() if settings.seed is None else settings.seed
    source = load_source(image_path, label)
    family = model.family
    for flag, text in (("--prompt", settings.prompt), ("--negative-prompt", settings.negative_prompt)):
        for note in unsupported_syntax(text or ""):
            reporter.warn(f"{flag}: {note}")
    if settings.negative_prompt and not family.negative_prompts:
        reporter.warn(f"{family.label} models ignore --negative-prompt (no classifier-free guidance)")
    map_label = f"--map {map_path}" if isinstance(map_path, str) else "--map"
    shaped = caches.shaped_map(
        map_path, settings.map_channel, MapShaping.from_settings(settings), source.size, settings.strict_size, map_label
    )
    run = plan_with_map(
        family, model.scheduler_config, model_latent_factor(model), settings, None, source.size, seed,
        refiner_start=settings.refiner_start if model.refiner is not None else None, map_label=map_label,
        reporter=reporter, native_side=model.native_size, shaped=shaped,
    )
    work = Image.fromarray(fit_image(source.rgb, run.region))  # the image cut and resized as the map was
    return PreparedEdit(settings, image_path, map_path, label or image_path, seed, source, run, work, started)


def model_latent_factor(model) -> int:
    """Image pixels per engine latent cell of a loaded model (FLUX.2: 16, the VAE factor x its latent patch)."""
    return model.pipe.vae_scale_factor * model.family.latent_patch


def _adapter_for_group(model, settings: EditSettings, reporter: Reporter):
    from diffdiff_cli.sample.families import adapter_for
    from diffdiff_cli.sample.families.sdxl import Refiner
    from diffdiff_cli.sample.families.text import PromptOptions

    family = model.family
    refiner = Refiner(model.refiner, settings.refiner_start) if model.refiner is not None else None
    adapter = adapter_for(family.name, model.pipe, settings.guidance_for(family), refiner=refiner)
    adapter.prompt_options = PromptOptions(clip_skip=settings.clip_skip, warn=reporter.warn)
    return adapter


def _conditioning(adapter, item: PreparedEdit, caches):
    """The item's prompt conditioning, encoded once per run for each (prompt, negative prompt, ...)."""
    s = item.settings
    size = item.work.size if adapter.prompt_depends_on_size else None
    key = (type(adapter).__name__, s.prompt, s.negative_prompt or "", getattr(adapter, "guided", None), s.clip_skip, size)
    return caches.prompt(key, lambda: adapter.encode_prompt(s.prompt, s.negative_prompt, item.work.size))


def denoise_edits(model, items: list[PreparedEdit], reporter: Reporter | None = None, caches=None, on_model_input=None) -> list:
    """Denoise prepared jobs of one batch key together and finish them: one EditResult per item, or the
    exception that failed it (each image's failure is that image's). A group that fails as a whole (out of
    memory, a bad input the denoiser chokes on) is retried image by image, so only the image at fault fails."""
    from diffdiff_cli.batch import Interrupted
    from diffdiff_cli.caches import RunCaches

    reporter = reporter or Reporter(quiet=True)
    caches = caches if caches is not None else RunCaches()
    try:
        return _denoise_group(model, items, reporter, caches, on_model_input)
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - returned as this image's failure, or retried one by one
        if len(items) == 1:
            return [e]
        reporter.notice(f"a batch of {len(items)} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); retrying image by image")
        return [result for item in items for result in denoise_edits(model, [item], reporter, caches, on_model_input)]


def _denoise_group(model, items: list[PreparedEdit], reporter: Reporter, caches, on_model_input) -> list:
    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from diffdiff_cli.errors import DiffdiffError
    from diffdiff_cli.sample.engine import SampleRequest, sample

    first = items[0]
    adapter = _adapter_for_group(model, first.settings, reporter)
    with torch.inference_mode():
        conditionings = [_conditioning(adapter, item, caches) for item in items]
    signatures = [adapter.conditioning_signature(c) for c in conditionings]
    if len(set(signatures)) > 1:  # prompts whose embeddings cannot stack (other chunk counts): one batch per kind
        results = {}
        for signature in dict.fromkeys(signatures):
            members = [i for i, s in enumerate(signatures) if s == signature]
            for i, result in zip(members, _denoise_group(model, [items[i] for i in members], reporter, caches, on_model_input)):
                results[i] = result
        return [results[i] for i in range(len(items))]

    run = first.run
    plan, scheduler = run.plan, run.scheduler
    adapter.use_scheduler(scheduler)
    calls = _record_denoiser_calls(adapter)
    generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
    chunks = _vae_chunks(len(items), first.work.size)
    with torch.inference_mode():
        # Each image draws from its own generator in the order a run of one does: the VAE posterior sample,
        # then the noise (diffusers' randn_tensor draws a list of generators one image each).
        x0 = torch.cat([adapter.encode_image(torch.cat([adapter.preprocess(item.work) for item in items[part]]),
                                             _generator_arg(generators[part])) for part in chunks])
        noise = randn_tensor(x0.shape, generator=_generator_arg(generators), device=x0.device, dtype=x0.dtype)
        # Kontext, FLUX.2: the input is also a reference
        conds = [adapter.with_reference(c, x0[i : i + 1]) for i, c in enumerate(conditionings)]
        maps = [item.run.prepared.latent for item in items]
        change = torch.from_numpy(np.stack(maps))[:, None].to(x0.device)
        request = SampleRequest(
            x0=x0, noise=noise, change=change, conditioning=adapter.stack_conditionings(conds),
            hardness=first.settings.hardness, change_min=float(min(m.min() for m in maps)),
        )
        label = first.label if len(items) == 1 else f"{first.label} +{len(items) - 1}"
        with reporter.sampling(f"{label} [{run.region.describe()}]", plan, run.prepared.latent) as progress:
            latents = sample(adapter, scheduler, run.timesteps, plan, request, _generator_arg(generators), progress, on_model_input)
        decoded = torch.cat([adapter.decode(latents[part], _generator_arg(generators[part])) for part in chunks])
    results = []
    for i, item in enumerate(items):
        try:
            # Stitch back: into the full-size original, through the full-size map.
            image = stitch_back(item.source, item.run.region, to_uint8(decoded[i : i + 1]), item.run.change, item.settings.paste_back,
                                item.settings.paste_feather)
        except DiffdiffError as e:  # NaN or Inf in this image only
            results.append(e)
            continue
        results.append(EditResult(
            image, item.seed, item.run.plan, x0[i : i + 1], noise[i : i + 1], latents[i : i + 1], item.run.prepared.latent,
            time.monotonic() - item.started, item.run.region, calls,
        ))
    return results


# Images per VAE encode or decode call: as many as make this many working pixels (the VAE's activations at
# full resolution dominate its memory; 8 images at 512 px, 2 at 1024 px).
VAE_PIXELS_PER_CALL = 2_100_000


def _vae_chunks(count: int, size: tuple[int, int]) -> list[slice]:
    per_call = max(1, VAE_PIXELS_PER_CALL // (size[0] * size[1]))
    return [slice(start, start + per_call) for start in range(0, count, per_call)]


def _generator_arg(generators: list):
    """One generator for one image (exactly a run of one), the list for a batch."""
    return generators[0] if len(generators) == 1 else generators


def compute_edit(
    model, settings: EditSettings, image_path: str, map_path: str, reporter: Reporter | None = None, label: str | None = None,
    on_model_input=None, caches=None,
) -> EditResult:
    """Run one edit in memory. `model` is a LoadedModel; nothing is written. `on_model_input(evaluation,
    latents)` sees the latent handed to the model at every evaluation (for tests and diagnostics)."""
    item = prepare_edit(model, settings, image_path, map_path, reporter, label, caches)
    (result,) = denoise_edits(model, [item], reporter, caches, on_model_input)
    if isinstance(result, Exception):
        raise result
    return result


def recorded_settings(model, settings: EditSettings, result: EditResult, image_path: str, map_path: str) -> dict:
    """Everything needed to rerun the edit, as written into the output's metadata."""
    record = asdict(settings)
    record.update(
        seed=result.seed,
        guidance=settings.guidance_for(model.family),
        model=model.label,
        family=model.family.name,
        sampler=sampler_label(settings.scheduler, model.scheduler_config.get("_class_name", "?")),
        scheduler=settings.scheduler or "default",
        input=image_path,
        map=map_path,
        map_path=_resolved(map_path),
        width=result.image.size[0],
        height=result.image.size[1],
        model_evaluations=len(result.plan.evaluations),
        diffdiff_version=__version__,
    )
    record.update(getattr(model, "extras_record", {}))  # LoRA / embedding / VAE hashes
    record.update(region_record(result.region, result.denoiser_calls))
    return record


def _resolved(path) -> str | None:
    """A file's absolute path, so that `--like` finds the map from any folder."""
    from pathlib import Path

    return str(Path(path).resolve()) if isinstance(path, str) and path != "-" else None


def region_record(region: Region | None, calls: list | None = None) -> dict:
    """The working region's keys of the metadata and JSON records (nulls when the model did not run)."""
    record = {"region": None, "work_size": None, "native_size": None}
    if region is not None:
        record.update(region.to_json())
    if calls:
        shapes = sorted(set(calls))
        record["denoiser_calls"] = len(calls)
        record["denoiser_latent_size"] = [[w, h] for h, w in shapes] if len(shapes) > 1 else [shapes[0][1], shapes[0][0]]
    return record


def write_edit(model, item: PreparedEdit, result: EditResult, output_path: str, display_input: str | None = None) -> dict:
    """Write one finished edit atomically, with its metadata; return the JSON record of the output."""
    record = recorded_settings(model, item.settings, result, display_input or item.image_path, item.map_path)
    save_atomically(result.image, output_path, record)
    return {**record, "output": output_path, "seconds": round(result.seconds, 3)}


def map_changes_nothing(settings: EditSettings, map_path: str, caches=None) -> bool:
    """True when the job's shaped map is 0 everywhere (checked before any model loads); False when the
    map cannot be read, so that the edit reports that. With `caches`, the map is read through them."""
    from diffdiff_cli.errors import DiffdiffError

    try:
        raw = caches.raw_map(map_path, settings.map_channel) if caches is not None else load_map(map_path, settings.map_channel)
        return changes_nothing(raw, MapShaping.from_settings(settings))
    except DiffdiffError:
        return False


def write_unchanged(settings: EditSettings, image_path: str, map_path: str, output_path: str, display_input: str | None = None) -> dict:
    """The output of a map that changes nothing: the input's own pixels and mode, with the metadata; no model."""
    source = load_source(image_path, display_input)
    if settings.strict_size:
        shaped_map(load_map(map_path, settings.map_channel), source.size, MapShaping(), True, f"--map {map_path}")
    record = asdict(settings)
    record.update(
        seed=settings.seed, model=settings.model, family=None, sampler="none (the map changes nothing)",
        scheduler=settings.scheduler or "default", input=display_input or image_path, map=map_path,
        map_path=_resolved(map_path), width=source.size[0], height=source.size[1], model_evaluations=0, unchanged=True, diffdiff_version=__version__,
        **region_record(None),
    )
    save_atomically(source.image, output_path, record)
    return {**record, "output": output_path, "seconds": 0.0}
