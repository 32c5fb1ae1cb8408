"""Typer options for reading and shaping the change map, shared by `edit`, `plan`, `map preview` and `fan`.

Kept free of numpy and PIL so that `diffdiff --help` stays light.
"""

from __future__ import annotations

import typer

MapChannelOpt = typer.Option(
    "luma", "--map-channel",
    help="Which channel of the map file is the change: luma (default), alpha (transparent = change, opaque = keep), red, green, blue.",
)
MapLevelsOpt = typer.Option(None, "--map-levels", metavar="LOW:HIGH", help="Remap the map: LOW and below -> 0, HIGH and above -> 1 (e.g. 0.2:0.8).")
MapGammaOpt = typer.Option(1.0, "--map-gamma", help="Midtone gamma, c ** (1/G): above 1 lifts greys (more change), below 1 lowers them.")
MapMinOpt = typer.Option(0.0, "--map-min", help="Floor of change wherever the map changes at all (black stays black, kept exactly).")
MapMaxOpt = typer.Option(1.0, "--map-max", help="Ceiling of change everywhere.")
MapGrowOpt = typer.Option(0.0, "--map-grow", metavar="PX", help="Grow the change area by PX image pixels (each pixel takes the largest change within PX).")
MapBlurOpt = typer.Option(0.0, "--map-blur", metavar="PX", help="Gaussian feather of the map, standard deviation PX image pixels.")
DitherOpt = typer.Option(
    False, "--dither",
    help="Jitter each latent pixel's threshold with a fixed ordered pattern so that few-step runs follow gradients "
    "on average instead of banding.",
)
StrictSizeOpt = typer.Option(False, "--strict-size", help="Refuse a map whose size differs from the image's (default: resize it, with a notice).")


def map_settings(invert_map, map_channel, map_levels, map_gamma, map_min, map_max, map_grow, map_blur, dither) -> dict:
    """The map fields of EditSettings, by name, from the options above."""
    return dict(
        invert_map=invert_map, map_channel=map_channel, map_levels=map_levels, map_gamma=map_gamma,
        map_min=map_min, map_max=map_max, map_grow=map_grow, map_blur=map_blur, dither=dither,
    )


# The working region (diffdiff_cli/fit.py): shared by `edit`, `plan`, `map preview` and `fan`.
FitOpt = typer.Option(
    "auto", "--fit", metavar="auto|full",
    help="auto: work on the map's region (what it changes, plus --context) scaled to the model's native "
    "area, then stitch it back into the full-size image; full: the whole image at its own size.",
)
ContextOpt = typer.Option(
    None, "--context", metavar="PX",
    help="Surroundings the model sees around the changed area, in image pixels "
    "(default: a quarter of the changed area's longer side, at least 32).",
)
WorkSizeOpt = typer.Option(
    None, "--work-size", metavar="WxH", help="Run the model at this size (rounded to its multiple of 8 or 16) instead of its native area.",
)


def fit_settings(fit, context, work_size) -> dict:
    """The working-region fields of EditSettings, by name, from the options above."""
    return dict(fit=fit, context=context, forced_work_size=work_size)
