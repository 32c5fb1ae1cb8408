"""One edit, end to end: load -> prepare map -> plan -> sample -> finish -> write."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass

import numpy as np

from diffdiff_cli import __version__
from diffdiff_cli.errors import InputError
from diffdiff_cli.finish import DEFAULT_PASTE_FEATHER, paste_back, restore_mode, to_uint8
from diffdiff_cli.load import load_map, load_source
from diffdiff_cli.plan import SCHEDULES, Plan, banding_warning, plan_run, prepare_scheduler
from diffdiff_cli.prepare_map import pad_image, prepare_map
from diffdiff_cli.progress import Reporter
from diffdiff_cli.schedulers import check_scheduler_name, make_scheduler, sampler_label
from diffdiff_cli.write import save_atomically

DEFAULT_MODEL = "tiny-sd15"
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5


@dataclass
class EditSettings:
    prompt: str
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    scheduler: str | None = None  # None: the model's own
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    strength: float = 1.0
    hardness: float = 1.0
    schedule: str = "timestep"
    invert_map: bool = False
    paste_back: bool = True
    paste_feather: float = DEFAULT_PASTE_FEATHER
    seed: int | None = None

    def validate(self) -> None:
        """Range checks, each a one-line usage error naming the flag."""
        if self.steps < 1:
            raise InputError(f"--steps {self.steps}: must be at least 1")
        if not 0.0 < self.strength <= 1.0:
            raise InputError(f"--strength {self.strength:g}: must be in (0, 1]; 1 lets white change fully")
        if not 0.0 <= self.hardness <= 1.0:
            raise InputError(f"--hardness {self.hardness:g}: must be in [0, 1]; 1 = binary masks, 0 = fully soft")
        if self.guidance < 0:
            raise InputError(f"--guidance {self.guidance:g}: must be 0 or more")
        if not 0.0 <= self.paste_feather <= 1.0:
            raise InputError(f"--paste-feather {self.paste_feather:g}: must be in [0, 1]")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InputError(f"--seed {self.seed}: must be in 0 .. 2^63-1")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--schedule {self.schedule}: choose one of: {', '.join(SCHEDULES)}")
        check_scheduler_name(self.scheduler)


def new_seed() -> int:
    return secrets.randbelow(2**32)


@dataclass
class EditResult:
    image: object  # PIL image, the input's size and mode
    seed: int
    plan: Plan
    x0: object  # clean latent (tensor)
    latents: object  # final latent (tensor)
    change_latent: np.ndarray
    seconds: float


def compute_edit(model, settings: EditSettings, image_path: str, map_path: str, reporter: Reporter | None = None) -> EditResult:
    """Run one edit in memory. `model` is a LoadedModel; nothing is written."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    from diffdiff_cli.sample.engine import SampleRequest, sample
    from diffdiff_cli.sample.family_sd import StableDiffusionFamily

    reporter = reporter or Reporter(quiet=True)
    started = time.monotonic()
    seed = new_seed() if settings.seed is None else settings.seed

    source = load_source(image_path)
    adapter = StableDiffusionFamily(model.pipe, settings.guidance)
    factor = adapter.vae_scale_factor
    prepared = prepare_map(load_map(map_path), source.size, factor, invert=settings.invert_map, map_label=f"--map {map_path}")
    for notice in prepared.notices:
        reporter.notice(notice)

    scheduler = make_scheduler(model.scheduler_config, settings.scheduler, seed)
    adapter.use_scheduler(scheduler)
    timesteps = prepare_scheduler(scheduler, settings.steps, settings.strength)
    plan = plan_run(timesteps, scheduler.order, adapter.noising, settings.schedule)
    warning = banding_warning(plan, prepared.latent)
    if warning:
        reporter.warn(warning)

    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        conditioning = adapter.encode_prompt(settings.prompt, settings.negative_prompt)
        pixels = adapter.pipe.image_processor.preprocess(Image.fromarray(pad_image(source.rgb, factor)))
        x0 = adapter.encode_image(pixels, generator)
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        change = torch.from_numpy(prepared.latent)[None, None].to(x0.device)
        request = SampleRequest(x0=x0, noise=noise, change=change, conditioning=conditioning, hardness=settings.hardness)
        with reporter.sampling(image_path, plan, prepared.latent) as progress:
            latents = sample(adapter, scheduler, timesteps, plan, request, generator, progress)
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
    return EditResult(image, seed, plan, x0, latents, prepared.latent, time.monotonic() - started)


def recorded_settings(model, settings: EditSettings, result: EditResult, image_path: str, map_path: str) -> dict:
    """Everything needed to rerun the edit, as written into the output's metadata."""
    record = asdict(settings)
    record.update(
        seed=result.seed,
        model=model.label,
        sampler=sampler_label(settings.scheduler, model.scheduler_config.get("_class_name", "?")),
        scheduler=settings.scheduler or "default",
        input=image_path,
        map=map_path,
        width=result.image.size[0],
        height=result.image.size[1],
        model_evaluations=len(result.plan.evaluations),
        diffdiff_version=__version__,
    )
    return record


def edit_file(model, settings: EditSettings, image_path: str, map_path: str, output_path: str, reporter: Reporter) -> dict:
    """Edit one image and write it atomically; return the JSON record of the output."""
    result = compute_edit(model, settings, image_path, map_path, reporter)
    record = recorded_settings(model, settings, result, image_path, map_path)
    save_atomically(result.image, output_path, record)
    return {**record, "output": output_path, "seconds": round(result.seconds, 3)}
