"""`diffdiff map ...` (make, shape and preview change maps) and `diffdiff fan`; cli.py registers them on the app.

Like cli.py, nothing heavy is imported at module level: numpy, PIL and torch load inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from diffdiff_cli.cli_options import (
    AllowPickleOpt, ContextOpt, DeviceOpt, DitherOpt, DtypeOpt, FitOpt, InvertOpt, JsonOpt, MapBlurOpt, MapChannelOpt,
    MapGammaOpt, MapGrowOpt, MapLevelsOpt, MapMaxOpt, MapMinOpt, ModelConfigOpt, ModelOpt, OfflineOpt, QuietOpt, ScheduleOpt,
    SchedulerOpt, SeedOpt, StepsOpt, StrengthOpt, StrictSizeOpt, WorkSizeOpt, fit_settings, map_settings,
)
from diffdiff_cli.cli_options import model_defaults as _model_defaults
from diffdiff_cli.errors import InputError

map_app = typer.Typer(
    help="Make, shape and preview change maps. Maps are written as 16-bit grayscale PNG (white = change, black = keep).",
    no_args_is_help=True,
)

OutputOpt = typer.Option(..., "--output", "-o", help="The map to write (.png, 16-bit grayscale).")
SizeOpt = typer.Option(..., "--size", metavar="WxH", help="Width and height in pixels, e.g. 768x512.")
FalloffOpt = typer.Option("smooth", "--falloff", help="smooth (smoothstep) or linear.")
ChannelOpt = typer.Option("luma", "--channel", help="Channel of IN to read: luma, alpha (transparent = change), red, green, blue.")
MAX_SIDE = 16384


def _pair(text: str, flag: str, sep: str = ",") -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(sep))
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        example = "768x512" if sep == "x" else "X,Y"
        raise InputError(f"{flag} {text}: expected two numbers like {example}")
    return values


def parse_size(text: str) -> tuple[int, int]:
    values = _pair(text.lower(), "--size", "x")
    if len(values) != 2 or not all(v == int(v) and 1 <= v <= MAX_SIDE for v in values):
        raise InputError(f"--size {text}: expected WIDTHxHEIGHT in whole pixels (1 .. {MAX_SIDE}), e.g. 768x512")
    return int(values[0]), int(values[1])


def _unit(value: float, flag: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{flag} {value:g}: must be in [0, 1]")
    return value


def _falloff(name: str) -> str:
    from diffdiff_cli.maps import FALLOFFS

    if name not in FALLOFFS:
        raise InputError(f"--falloff {name}: choose one of: {', '.join(FALLOFFS)}")
    return name


def _read(path: str, channel: str):
    from diffdiff_cli.load import map_values, open_image

    return map_values(open_image(path, "IN"), channel, f"IN {path}")


def _write(values, output: str, record: dict) -> None:
    from diffdiff_cli.map_io import save_map

    save_map(values, output, record)
    low, high = float(values.min()), float(values.max())
    print(f"diffdiff: wrote {output} ({values.shape[1]}x{values.shape[0]}, values {low:.3f} .. {high:.3f})", file=sys.stderr)


def _check_output(output: str, inputs: list[str]) -> None:
    """Inputs readable, output a writable .png that is none of them: before any work is done."""
    from diffdiff_cli.load import check_image_header
    from diffdiff_cli.map_io import check_map_output

    for path in inputs:
        check_image_header(path, "IN")
    check_map_output(output, inputs)


@map_app.command("gradient")
def map_gradient(
    size: str = SizeOpt,
    angle: float = typer.Option(0.0, "--angle", help="Direction in degrees, counter-clockwise: 0 = left to right, 90 = bottom to top, 270 = top to bottom."),
    start: float = typer.Option(0.0, "--from", help="Value where the gradient starts."),
    end: float = typer.Option(1.0, "--to", help="Value where it ends."),
    bands: int = typer.Option(0, "--bands", help="Cut the ramp into this many flat bands of constant strength (0 = smooth)."),
    output: str = OutputOpt,
) -> None:
    """A linear gradient from --from to --to along --angle."""
    width, height = parse_size(size)
    _unit(start, "--from")
    _unit(end, "--to")
    if bands == 1 or bands < 0:
        raise InputError(f"--bands {bands}: use 0 (smooth) or 2 or more bands")
    _check_output(output, [])
    from diffdiff_cli.maps import linear_gradient

    values = linear_gradient(width, height, angle, start, end, bands)
    _write(values, output, {"map": "gradient", "size": [width, height], "angle": angle, "from": start, "to": end, "bands": bands})


@map_app.command("radial")
def map_radial(
    size: str = SizeOpt,
    center: Optional[str] = typer.Option(None, "--center", metavar="X,Y", help="Centre in pixels (default: the image centre)."),
    radius: Optional[str] = typer.Option(None, "--radius", metavar="R|RX,RY", help="Radius in pixels, or two for an ellipse (default: half the shorter side)."),
    falloff: str = FalloffOpt,
    start: float = typer.Option(1.0, "--from", help="Value at the centre."),
    end: float = typer.Option(0.0, "--to", help="Value at the radius and beyond."),
    output: str = OutputOpt,
) -> None:
    """A radial falloff: --from at --center to --to at --radius (--from 0 --to 1 makes a vignette)."""
    width, height = parse_size(size)
    _unit(start, "--from")
    _unit(end, "--to")
    centre = None
    if center is not None:
        centre = _pair(center, "--center")
        if len(centre) != 2:
            raise InputError(f"--center {center}: expected X,Y in pixels, e.g. {width // 2},{height // 2}")
    radii = None
    if radius is not None:
        radii = _pair(radius, "--radius")
        radii = radii * 2 if len(radii) == 1 else radii
        if min(radii) <= 0:
            raise InputError(f"--radius {radius}: must be above 0 pixels")
    _falloff(falloff)
    _check_output(output, [])
    from diffdiff_cli.maps import radial

    values = radial(width, height, centre, radii, falloff, start, end)
    _write(values, output, {"map": "radial", "size": [width, height], "center": centre, "radius": radii, "falloff": falloff,
                                "from": start, "to": end})


@map_app.command("feather")
def map_feather(
    mask: str = typer.Argument(..., help="A binary mask (white = change; values of 0.5 and above count as in)."),
    radius: float = typer.Option(..., "--radius", metavar="PX", help="Width of the soft edge outside the mask, in pixels."),
    falloff: str = FalloffOpt,
    channel: str = ChannelOpt,
    output: str = OutputOpt,
) -> None:
    """Soft inpainting from an ordinary mask: 1 inside, falling to 0 over --radius pixels outside it."""
    if not radius > 0:
        raise InputError(f"--radius {radius:g}: must be above 0 pixels")
    _falloff(falloff)
    _check_output(output, [mask])
    from diffdiff_cli.maps import feather

    values = _read(mask, channel)
    if not (values >= 0.5).any():
        raise InputError(f"feather {mask}: the mask has no white area (no value of 0.5 or more); nothing to feather")
    _write(feather(values, radius, falloff), output, {"map": "feather", "input": mask, "radius": radius, "falloff": falloff})


@map_app.command("levels")
def map_levels_command(
    source: str = typer.Argument(..., metavar="IN", help="The map to reshape."),
    levels: str = typer.Option("0:1", "--levels", metavar="LOW:HIGH", help="LOW and below -> 0, HIGH and above -> 1."),
    gamma: float = typer.Option(1.0, "--gamma", help="Midtone gamma, c ** (1/G): above 1 lifts greys."),
    minimum: float = typer.Option(0.0, "--min", help="Floor of change where the map is above 0 (black stays black)."),
    maximum: float = typer.Option(1.0, "--max", help="Ceiling of change."),
    channel: str = ChannelOpt,
    output: str = OutputOpt,
) -> None:
    """Remap a map's values, as --map-levels, --map-gamma, --map-min and --map-max do in `edit`."""
    from diffdiff_cli.prepare_map import MapShaping, parse_levels, shape_map

    shaping = MapShaping(levels=parse_levels(levels, "--levels"), gamma=gamma, minimum=minimum, maximum=maximum)
    _validate(shaping, {"--map-gamma": "--gamma", "--map-min": "--min", "--map-max": "--max"})
    _check_output(output, [source])
    _write(shape_map(_read(source, channel), shaping), output,
           {"map": "levels", "input": source, "levels": list(shaping.levels), "gamma": gamma, "min": minimum, "max": maximum})


@map_app.command("invert")
def map_invert(source: str = typer.Argument(..., metavar="IN"), channel: str = ChannelOpt, output: str = OutputOpt) -> None:
    """Swap change and keep (for maps made for the paper's code or diffusers' community pipelines)."""
    _check_output(output, [source])
    from diffdiff_cli.maps import invert

    _write(invert(_read(source, channel)), output, {"map": "invert", "input": source})


@map_app.command("blur")
def map_blur_command(
    source: str = typer.Argument(..., metavar="IN"),
    radius: float = typer.Option(..., "--radius", metavar="PX", help="Gaussian standard deviation in pixels."),
    channel: str = ChannelOpt,
    output: str = OutputOpt,
) -> None:
    """Gaussian feather, as --map-blur does in `edit`."""
    from diffdiff_cli.prepare_map import MapShaping

    _validate(MapShaping(blur=radius), {"--map-blur": "--radius"})
    _check_output(output, [source])
    from diffdiff_cli.maps import blur

    _write(blur(_read(source, channel), radius), output, {"map": "blur", "input": source, "radius": radius})


@map_app.command("grow")
def map_grow_command(
    source: str = typer.Argument(..., metavar="IN"),
    radius: float = typer.Option(..., "--radius", metavar="PX", help="How far the change area grows, in pixels."),
    channel: str = ChannelOpt,
    output: str = OutputOpt,
) -> None:
    """Grow the change area, as --map-grow does in `edit`."""
    from diffdiff_cli.prepare_map import MapShaping

    _validate(MapShaping(grow=radius), {"--map-grow": "--radius"})
    _check_output(output, [source])
    from diffdiff_cli.maps import grow

    _write(grow(_read(source, channel), radius), output, {"map": "grow", "input": source, "radius": radius})


def _validate(shaping, renames: dict[str, str]) -> None:
    """MapShaping's checks, with the flag names of the standalone command in the message."""
    try:
        shaping.validate()
    except InputError as e:
        message = str(e)
        for edit_flag, flag in renames.items():
            message = message.replace(edit_flag, flag)
        raise InputError(message) from None


@map_app.command("preview")
def map_preview(
    photo: str = typer.Argument(..., help="The image the map is for."),
    map_path: str = typer.Argument(..., metavar="MAP", help="The change map."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Preview file (.png, .jpg, .webp). Default: <photo stem>-preview.png."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: Optional[int] = StepsOpt,
    strength: float = StrengthOpt,
    schedule: str = ScheduleOpt,
    invert_map: bool = InvertOpt,
    map_channel: str = MapChannelOpt,
    map_levels: Optional[str] = MapLevelsOpt,
    map_gamma: float = MapGammaOpt,
    map_min: float = MapMinOpt,
    map_max: float = MapMaxOpt,
    map_grow: float = MapGrowOpt,
    map_blur: float = MapBlurOpt,
    dither: bool = DitherOpt,
    strict_size: bool = StrictSizeOpt,
    fit: str = FitOpt,
    context: Optional[int] = ContextOpt,
    forced_work_size: Optional[str] = WorkSizeOpt,
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    allow_pickle: bool = AllowPickleOpt,
    json_out: bool = JsonOpt,
) -> None:
    """The photo tinted by the strength each area will really get with these steps, and a legend of the levels."""
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.load import check_image_header
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.write import check_output_path

    steps, _ = _model_defaults(model, steps, None)
    settings = EditSettings(
        prompt="", model=model, scheduler=scheduler, steps=steps, strength=strength, schedule=schedule, strict_size=strict_size,
        **map_settings(invert_map, map_channel, map_levels, map_gamma, map_min, map_max, map_grow, map_blur, dither),
        **fit_settings(fit, context, forced_work_size),
    )
    settings.validate()
    if output is None:
        output = str(Path(photo).with_name(f"{Path(photo).stem}-preview.png"))
    check_image_header(photo, "image")
    check_image_header(map_path, "--map")
    check_output_path(output, [photo, map_path])
    source_model = resolve_model(model, allow_pickle=allow_pickle)

    from diffdiff_cli.edit import plan_with_map
    from diffdiff_cli.load import load_map, load_source
    from diffdiff_cli.map_io import save_picture
    from diffdiff_cli.models.load import read_configs
    from diffdiff_cli.preview import legend_rows, preview_strength, render_preview
    from diffdiff_cli.progress import Reporter

    configs = read_configs(source_model, offline=offline, model_config=model_config)
    source = load_source(photo)
    factor = configs.latent_factor
    run = plan_with_map(
        configs.family, configs.scheduler_config, factor, settings, load_map(map_path, map_channel), source.size,
        map_label=f"--map {map_path}", reporter=Reporter(), sampling=False, native_side=configs.native_size,
    )
    prepared, the_plan, region = run.prepared, run.plan, run.region
    scheduler_name = scheduler or configs.scheduler_config.get("_class_name", "?")
    strength_map, levels = preview_strength(prepared.latent, the_plan.thresholds, factor, region, source.size, the_plan.level_rule)
    title = f"{model} · {scheduler_name} · {steps} steps · {len(levels)} strength levels" + (" · dither" if dither else "")
    image = render_preview(source.rgb, strength_map, levels, f"{title} · {region.describe()}", region.box)
    rows = [{"strength": level, "share": share} for level, share in legend_rows(strength_map, levels)]
    record = {"preview": photo, "map": map_path, "model": model, "scheduler": scheduler_name, "steps": steps,
              "strength": strength, "schedule": schedule, "dither": dither, "levels": rows, "output": output, **region.to_json()}
    save_picture(image, output, record)
    print(f"diffdiff: wrote {output} ({len(levels)} strength levels)", file=sys.stderr)
    if json_out:
        print(json.dumps(record, sort_keys=True))


def fan(
    image: str = typer.Argument(..., help="The image to edit."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the changed areas should show."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="The grid (.png, .jpg, .webp). Default: <image stem>-fan.png."),
    strengths: str = typer.Option("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0", "--strengths", help="Uniform map values, one cell each."),
    map_path: Optional[str] = typer.Option(None, "--map", help="Add a cell with the edit under this map."),
    columns: int = typer.Option(5, "--columns", help="Cells per row."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (default: the model family's usual)."),
    schedule: str = ScheduleOpt,
    invert_map: bool = InvertOpt,
    dither: bool = DitherOpt,
    fit: str = FitOpt,
    context: Optional[int] = ContextOpt,
    forced_work_size: Optional[str] = WorkSizeOpt,
    seed: Optional[int] = SeedOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    allow_pickle: bool = AllowPickleOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """The Strength Fan: the same edit with the whole map at 0.1, 0.2 ... 1.0, side by side (one model load)."""
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.fan import parse_strengths
    from diffdiff_cli.load import check_image_header
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.write import check_output_path

    from diffdiff_cli.batch import check_seed

    values = parse_strengths(strengths)
    seed = check_seed(seed)  # -1 = random, as in `edit`
    steps, guidance = _model_defaults(model, steps, guidance)
    if columns < 1:
        raise InputError(f"--columns {columns}: must be at least 1")
    settings = EditSettings(prompt=prompt, negative_prompt=negative_prompt, model=model, scheduler=scheduler, steps=steps,
                            guidance=guidance, schedule=schedule, invert_map=invert_map, dither=dither, seed=seed,
                            **fit_settings(fit, context, forced_work_size))
    settings.validate()
    if output is None:
        output = str(Path(image).with_name(f"{Path(image).stem}-fan.png"))
    check_image_header(image, "image")
    if map_path is not None:
        check_image_header(map_path, "--map")
    check_output_path(output, [image] + ([map_path] if map_path else []))
    source_model = resolve_model(model, allow_pickle=allow_pickle)
    if model_config is not None and not Path(model_config).is_dir():
        raise InputError(f"--model-config {model_config}: no such folder")

    from diffdiff_cli.fan import fan_cells, grid
    from diffdiff_cli.map_io import save_picture
    from diffdiff_cli.models.load import Runtime, load_model
    from diffdiff_cli.progress import Reporter

    runtime = Runtime(device=device, dtype=dtype)
    runtime.validate()
    reporter = Reporter(quiet=quiet)
    reporter.notice(f"loading model {model}")
    loaded = load_model(source_model, offline=offline, model_config=model_config, runtime=runtime)
    used_seed, cells = fan_cells(loaded, settings, image, values, map_path, reporter)
    picture = grid(cells, columns)
    record = {"fan": image, "prompt": prompt, "negative_prompt": negative_prompt, "model": loaded.label, "steps": steps,
              "scheduler": scheduler or "default", "schedule": schedule, "dither": dither, "seed": used_seed,
              "strengths": values, "map": map_path, "invert_map": invert_map,
              "cells": [label for label, _ in cells], "output": output}
    save_picture(picture, output, record)
    print(f"diffdiff: wrote {output} ({len(cells)} cells, seed {used_seed})", file=sys.stderr, flush=True)
    if json_out:
        print(json.dumps(record, sort_keys=True), flush=True)
