"""One edit, end to end: load -> prepare map -> plan -> sample -> finish -> write."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass

import numpy as np

from diffdiff_cli import __version__
from diffdiff_cli.errors import InputError
from diffdiff_cli.finish import DEFAULT_PASTE_FEATHER, paste_back, restore_mode, to_uint8
from diffdiff_cli.load import MAP_CHANNELS, load_map, load_source
from diffdiff_cli.plan import SCHEDULES, Plan, banding_warning, plan_schedule, schedule_run
from diffdiff_cli.prepare_map import MapShaping, dither_prepared, pad_image, prepare_map
from diffdiff_cli.progress import Reporter
from diffdiff_cli.prompts import unsupported_syntax
from diffdiff_cli.schedulers import check_scheduler_name, sampler_label
from diffdiff_cli.write import save_atomically

DEFAULT_MODEL = "tiny-sd15"
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
    refiner_start: float = 0.8
    # What users bring to a checkpoint (issue 12): applied once per model load (models/extras.py)
    loras: tuple[str, ...] = ()  # "PATH:SCALE"
    embeddings: tuple[str, ...] = ()  # "PATH:TOKEN"
    vae: str | None = None
    clip_skip: int | None = None  # A1111's meaning: 1 = last layer, 2 = the one before
    fuse_lora: bool = True

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
        if self.guidance is not None and self.guidance < 0:
            raise InputError(f"--guidance {self.guidance:g}: must be 0 or more")
        if not 0.0 <= self.paste_feather <= 1.0:
            raise InputError(f"--paste-feather {self.paste_feather:g}: must be in [0, 1]")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InputError(f"--seed {self.seed}: must be in 0 .. 2^63-1")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule}: choose one of: {', '.join(SCHEDULES)}")
        check_scheduler_name(self.scheduler)
        if self.clip_skip is not None and self.clip_skip < 1:
            raise InputError(f"--clip-skip {self.clip_skip}: must be 1 or more (1 = the last layer, as in A1111)")
        if self.map_channel not in MAP_CHANNELS:
            raise InputError(f"--map-channel {self.map_channel}: choose one of: {', '.join(MAP_CHANNELS)}")
        MapShaping.from_settings(self).validate()


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


@dataclass
class RunPlan:
    prepared: object  # PreparedMap (dithered when asked), or None without a map
    scheduler: object  # None when planned without sampling
    timesteps: object
    plan: Plan


def plan_with_map(
    family, scheduler_config: dict, factor: int, settings: EditSettings, raw_map=None, image_size=None,
    seed: int | None = None, refiner_start: float | None = None, map_label: str = "--map", reporter: Reporter | None = None,
    sampling: bool = True,
) -> RunPlan:
    """Weights-free part of a run: shape the map onto the latent grid, plan the schedule, dither.

    `raw_map` is the map's values at its own size; `image_size` the image it applies to (default: the
    map's size). Without a map the family's usual resolution is planned. `sampling=False` (plan, map
    preview) gives the plan alone, without a scheduler, torch or diffusers where `schedule_np` covers it.
    """
    prepared = None
    latent_shape = (family.default_size // factor,) * 2
    if raw_map is not None:
        size = image_size or (raw_map.shape[1], raw_map.shape[0])
        prepared = prepare_map(
            raw_map, size, factor, multiple=factor * family.patch, shaping=MapShaping.from_settings(settings),
            strict_size=settings.strict_size, map_label=map_label,
        )
        for notice in prepared.notices:
            if reporter is not None:
                reporter.notice(notice)
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
    return RunPlan(prepared, scheduler, timesteps, plan)


def compute_edit(
    model, settings: EditSettings, image_path: str, map_path: str, reporter: Reporter | None = None, label: str | None = None,
    on_model_input=None,
) -> EditResult:
    """Run one edit in memory. `model` is a LoadedModel; nothing is written. `on_model_input(evaluation,
    latents)` sees the latent handed to the model at every evaluation (for tests and diagnostics)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    from diffdiff_cli.sample.engine import SampleRequest, sample
    from diffdiff_cli.sample.families import adapter_for
    from diffdiff_cli.sample.families.sdxl import Refiner
    from diffdiff_cli.sample.families.text import PromptOptions

    reporter = reporter or Reporter(quiet=True)
    started = time.monotonic()
    seed = new_seed() if settings.seed is None else settings.seed

    source = load_source(image_path)
    family = model.family
    refiner = Refiner(model.refiner, settings.refiner_start) if model.refiner is not None else None
    adapter = adapter_for(family.name, model.pipe, settings.guidance_for(family), refiner=refiner)
    adapter.prompt_options = PromptOptions(clip_skip=settings.clip_skip, warn=reporter.warn)
    for flag, text in (("--prompt", settings.prompt), ("--negative-prompt", settings.negative_prompt)):
        for note in unsupported_syntax(text or ""):
            reporter.warn(f"{flag}: {note}")
    multiple = adapter.pixel_multiple
    if settings.negative_prompt and not family.negative_prompts:
        reporter.warn(f"{family.label} models ignore --negative-prompt (no classifier-free guidance)")
    run = plan_with_map(
        family, model.scheduler_config, adapter.latent_factor, settings, load_map(map_path, settings.map_channel),
        source.size, seed, refiner_start=settings.refiner_start if refiner else None, map_label=f"--map {map_path}",
        reporter=reporter,
    )
    prepared, scheduler, timesteps, plan = run.prepared, run.scheduler, run.timesteps, run.plan
    adapter.use_scheduler(scheduler)

    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        padded = Image.fromarray(pad_image(source.rgb, multiple))
        conditioning = adapter.encode_prompt(settings.prompt, settings.negative_prompt, padded.size)
        pixels = adapter.preprocess(padded)
        x0 = adapter.encode_image(pixels, generator)
        conditioning = adapter.with_reference(conditioning, x0)  # Kontext, FLUX.2: the input is also a reference
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        change = torch.from_numpy(prepared.latent)[None, None].to(x0.device)
        request = SampleRequest(x0=x0, noise=noise, change=change, conditioning=conditioning, hardness=settings.hardness)
        with reporter.sampling(label or image_path, plan, prepared.latent) as progress:
            latents = sample(adapter, scheduler, timesteps, plan, request, generator, progress, on_model_input)
        decoded = adapter.decode(latents, generator)

    width, height = source.size
    generated = to_uint8(decoded)[:height, :width]
    change_pixels = prepared.pixels[:height, :width]
    if settings.paste_back:
        result_rgb = paste_back(source.rgb, generated, change_pixels, settings.paste_feather)
        untouched = change_pixels == 0
    else:
        result_rgb, untouched = generated, None
    image = restore_mode(result_rgb, source.image, untouched)
    return EditResult(image, seed, plan, x0, noise, latents, prepared.latent, time.monotonic() - started)


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
        width=result.image.size[0],
        height=result.image.size[1],
        model_evaluations=len(result.plan.evaluations),
        diffdiff_version=__version__,
    )
    record.update(getattr(model, "extras_record", {}))  # LoRA / embedding / VAE hashes
    return record


def edit_file(
    model, settings: EditSettings, image_path: str, map_path: str, output_path: str, reporter: Reporter, display_input: str | None = None
) -> dict:
    """Edit one image and write it atomically; return the JSON record of the output.

    `display_input` is the name recorded for the input when it was read from elsewhere (stdin).
    """
    result = compute_edit(model, settings, image_path, map_path, reporter, label=display_input or image_path)
    record = recorded_settings(model, settings, result, display_input or image_path, map_path)
    save_atomically(result.image, output_path, record)
    return {**record, "output": output_path, "seconds": round(result.seconds, 3)}
