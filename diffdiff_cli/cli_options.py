"""Typer options shared by the commands (`edit`, `plan`, `map preview`, `fan`), declared once.

Kept free of numpy, PIL, torch and diffusers so that `diffdiff --help` stays light. `rich_help_panel`
groups `diffdiff edit --help` by what an option is about.
"""

from __future__ import annotations

import typer

from diffdiff_cli.schedulers import SCHEDULERS

# Help panels of `diffdiff edit --help`, in the order they are shown.
MAP, MODEL, SAMPLING, OUTPUT, BATCH, PERFORMANCE = "Map", "Model", "Sampling", "Output", "Batch", "Performance"

# Pillow refuses images above twice its MAX_IMAGE_PIXELS (a decompression-bomb guard): the default of
# --max-pixels (load.DEFAULT_MAX_PIXELS computes it from Pillow; a test checks the two agree).
DEFAULT_MAX_PIXELS = 178_956_970
DEFAULT_MODEL = "demo"  # README, "Models": the one built-in that draws what a prompt says, offline

ModelOpt = typer.Option(
    DEFAULT_MODEL, "--model", "-m", envvar="DIFFDIFF_MODEL", rich_help_panel=MODEL,
    help="Built-in name (demo: a small model that runs offline), alias (sd15, sdxl, flux-schnell, ...), hub id, "
    "diffusers folder or .safetensors file. Env: DIFFDIFF_MODEL.",
)
SchedulerOpt = typer.Option(None, "--scheduler", rich_help_panel=SAMPLING, help="Sampler: " + ", ".join(SCHEDULERS) + ". Default: the model's own.")
StepsOpt = typer.Option(
    None, "--steps", rich_help_panel=SAMPLING,
    help="Sampler steps before --strength cuts the schedule (at most the scheduler's training timesteps). "
    "Default: 30 (4 for turbo/schnell aliases).",
)
StrengthOpt = typer.Option(
    1.0, "--strength", rich_help_panel=SAMPLING,
    help="Global strength in (0, 1]; a pixel with map value c changes about as much as img2img at c x strength.",
)
ScheduleOpt = typer.Option("timestep", "--schedule", rich_help_panel=SAMPLING, help="Threshold rule: 'timestep' (ComfyUI's node, default) or 'steps' (the paper's code).")
InvertOpt = typer.Option(False, "--invert-map", rich_help_panel=MAP, help="Read the map as white = keep (maps made for the paper's code or diffusers' community pipelines).")
OfflineOpt = typer.Option(False, "--offline", rich_help_panel=MODEL, help="Never download: use built-ins, local files and the Hugging Face cache only.")
ModelConfigOpt = typer.Option(None, "--model-config", rich_help_panel=MODEL, help="For a .safetensors file: a diffusers folder whose configs (and tokenizer) match it.")
JsonOpt = typer.Option(False, "--json", rich_help_panel=OUTPUT, help="Print machine-readable JSON on stdout.")
AllowPickleOpt = typer.Option(False, "--allow-pickle", rich_help_panel=MODEL, help="Accept .ckpt/.pt/.bin checkpoints (read with torch's weights_only loader).")
RefinerOpt = typer.Option(None, "--refiner", rich_help_panel=MODEL, help="An SDXL refiner that takes over the end of the schedule (one threshold ramp across both).")
RefinerStartOpt = typer.Option(0.8, "--refiner-start", rich_help_panel=MODEL, help="Share of the schedule the base model runs before the refiner takes over.")
DeviceOpt = typer.Option("auto", "--device", rich_help_panel=PERFORMANCE, help="auto | cpu | cuda | mps.")
DtypeOpt = typer.Option("auto", "--dtype", rich_help_panel=PERFORMANCE, help="auto (fp32 on CPU; on GPUs bf16 for Flux, SD3's T5 and other families that overflow fp16, fp16 elsewhere) | fp32 | fp16 | bf16.")
OffloadOpt = typer.Option("none", "--offload", rich_help_panel=PERFORMANCE, help="none | model (whole models to the GPU in turn) | sequential (layer by layer, least memory).")
SeedOpt = typer.Option(
    None, "--seed", "-s", rich_help_panel=SAMPLING,
    help="Seed, used exactly as diffusers, A1111 and ComfyUI do (0 .. 2^64-1; -1 = random). In a batch every "
    "image uses it. Default: each image draws its own; every seed used is printed and recorded.",
)
QuietOpt = typer.Option(False, "--quiet", "-q", rich_help_panel=OUTPUT, help="No progress or notices on stderr (errors, warnings and the seed still print).")

# Reading and shaping the change map: `edit`, `plan`, `map preview`.
MapChannelOpt = typer.Option(
    "luma", "--map-channel", rich_help_panel=MAP,
    help="Which channel of the map file is the change: luma (default), alpha (transparent = change, opaque = keep), red, green, blue.",
)
MapLevelsOpt = typer.Option(None, "--map-levels", metavar="LOW:HIGH", rich_help_panel=MAP, help="Remap the map: LOW and below -> 0, HIGH and above -> 1 (e.g. 0.2:0.8).")
MapGammaOpt = typer.Option(1.0, "--map-gamma", rich_help_panel=MAP, help="Midtone gamma, c ** (1/G): above 1 lifts greys (more change), below 1 lowers them.")
MapMinOpt = typer.Option(0.0, "--map-min", rich_help_panel=MAP, help="Floor of change wherever the map changes at all (black stays black, kept exactly).")
MapMaxOpt = typer.Option(1.0, "--map-max", rich_help_panel=MAP, help="Ceiling of change everywhere.")
MapGrowOpt = typer.Option(0.0, "--map-grow", metavar="PX", rich_help_panel=MAP, help="Grow the change area by PX image pixels (each pixel takes the largest change within PX).")
MapBlurOpt = typer.Option(0.0, "--map-blur", metavar="PX", rich_help_panel=MAP, help="Gaussian feather of the map, standard deviation PX image pixels.")
DitherOpt = typer.Option(
    False, "--dither", rich_help_panel=MAP,
    help="Jitter each latent pixel's threshold with a fixed ordered pattern so that few-step runs follow gradients "
    "on average instead of banding.",
)
StrictSizeOpt = typer.Option(False, "--strict-size", rich_help_panel=MAP, help="Refuse a map whose size differs from the image's (default: resize it, with a notice).")

# The working region (diffdiff_cli/fit.py).
FitOpt = typer.Option(
    "auto", "--fit", metavar="auto|full", rich_help_panel=MAP,
    help="auto: work on the map's region (what it changes, plus --context) scaled to the model's native "
    "area, then stitch it back into the full-size image; full: the whole image at its own size.",
)
ContextOpt = typer.Option(
    None, "--context", metavar="PX", rich_help_panel=MAP,
    help="Surroundings the model sees around the changed area, in image pixels "
    "(default: a quarter of the changed area's longer side, at least 32).",
)
WorkSizeOpt = typer.Option(
    None, "--work-size", metavar="WxH", rich_help_panel=MAP,
    help="Run the model at this size (rounded to its multiple of 8 or 16) instead of its native area.",
)


def map_settings(invert_map, map_channel, map_levels, map_gamma, map_min, map_max, map_grow, map_blur, dither) -> dict:
    """The map fields of EditSettings, by name, from the options above."""
    return dict(
        invert_map=invert_map, map_channel=map_channel, map_levels=map_levels, map_gamma=map_gamma,
        map_min=map_min, map_max=map_max, map_grow=map_grow, map_blur=map_blur, dither=dither,
    )


def fit_settings(fit, context, work_size) -> dict:
    """The working-region fields of EditSettings, by name, from the options above."""
    return dict(fit=fit, context=context, forced_work_size=work_size)


def model_defaults(model: str, steps: int | None, guidance: float | None) -> tuple[int, float | None]:
    """Steps and guidance not given on the command line: the model's own defaults (few-step models), else 30."""
    from diffdiff_cli.edit import DEFAULT_STEPS
    from diffdiff_cli.models.registry import model_defaults as named_defaults

    defaults = named_defaults(model)
    steps = steps if steps is not None else defaults.get("steps", DEFAULT_STEPS)
    return steps, guidance if guidance is not None else defaults.get("guidance")
