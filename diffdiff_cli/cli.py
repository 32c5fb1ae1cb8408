"""The `diffdiff` command line: parse, call the library, report.

Imports here stay light (typer, the standard library, pure diffdiff modules): torch and diffusers are
imported inside the commands that need them, so `diffdiff --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from diffdiff_cli import __version__
from diffdiff_cli.cli_options import (
    BATCH, DEFAULT_MAX_PIXELS, MAP, MODEL, OUTPUT, PERFORMANCE, SAMPLING,
    AllowPickleOpt, ContextOpt, DeviceOpt, DitherOpt, DtypeOpt, FitOpt, InvertOpt, JsonOpt, MapBlurOpt, MapChannelOpt,
    MapGammaOpt, MapGrowOpt, MapLevelsOpt, MapMaxOpt, MapMinOpt, ModelConfigOpt, ModelOpt, OfflineOpt, OffloadOpt, QuietOpt,
    RefinerOpt, RefinerStartOpt, ScheduleOpt, SchedulerOpt, SeedOpt, StepsOpt, StrengthOpt, StrictSizeOpt, WorkSizeOpt,
    fit_settings, map_settings,
)
from diffdiff_cli.cli_options import model_defaults as _model_defaults
from diffdiff_cli.errors import DiffdiffError, InputError

app = typer.Typer(
    name="diffdiff",
    help="Edit images with a per-pixel change map (Differential Diffusion): white = change fully, "
    "black = keep exactly, grey = in between.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # for the option panels of `edit --help`; no help text uses [markup]
)
models_app = typer.Typer(help="List the built-in models and aliases, or save a built-in as a diffusers folder.", no_args_is_help=True)
app.add_typer(models_app, name="models")

DEBUG_ENV = "DIFFDIFF_DEBUG"
_debug = {"on": False}  # --debug, anywhere on the line (main() takes it out before parsing)


def _version(value: bool) -> None:
    if value:
        print(f"diffdiff {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (any position on the line; the exit code stays)."),
) -> None:
    """diffdiff: per-pixel-strength image editing on Stable Diffusion models."""


EDIT_EXAMPLES = (
    "Examples (offline, on the built-in demo model):\n\n"
    "  diffdiff edit demo/photo.png --map sample_masks/sky-top-down.png -p \"a green background\" -o out.png\n\n"
    "  diffdiff edit shots/*.png --map 'masks/{stem}.png' -p \"a red background\" --out-dir edited/ --seed 42\n\n"
    "  diffdiff edit --manifest jobs.csv -p \"a blue background\" --out-dir edited/ --report report.jsonl"
)


@app.command(epilog=EDIT_EXAMPLES)
def edit(
    ctx: typer.Context,
    images: Optional[List[str]] = typer.Argument(None, help="Images to edit (shell globs welcome; - reads one from standard input)."),
    map_path: Optional[str] = typer.Option(None, "--map", rich_help_panel=MAP, help="Change map (white = change fully, black = keep exactly), or a template per image: 'masks/{stem}.png' ({stem}, {name}, {parent})."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", rich_help_panel=SAMPLING, help="What the changed areas should show."),
    output: Optional[str] = typer.Option(None, "--output", "-o", rich_help_panel=OUTPUT, help="Output file for a single image (.png, .jpg, .webp; - = PNG to stdout); never an input or map of the run. Default: <stem>-edited.png beside the image."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", rich_help_panel=OUTPUT, help="Folder for the outputs of many images (named by --name); every output stays inside it."),
    name: str = typer.Option("{stem}-edited.png", "--name", rich_help_panel=OUTPUT, help="Output name template: {stem}, {name}, {parent}, {ext}, {seed}, {index}."),
    allow_outside_out_dir: bool = typer.Option(False, "--allow-outside-out-dir", rich_help_panel=OUTPUT, help="Let --name or a manifest's output write outside --out-dir (or the image's folder)."),
    manifest: Optional[str] = typer.Option(None, "--manifest", rich_help_panel=BATCH, help="Jobs file (.jsonl, or .csv with a header; UTF-8): input, map, output, prompt, negative_prompt, seed, strength, hardness, steps, guidance per line."),
    like: Optional[str] = typer.Option(None, "--like", rich_help_panel=OUTPUT, help="Reuse the settings (and seed) recorded in an earlier output; flags given here override them."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", rich_help_panel=SAMPLING, help="What to steer away from."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", rich_help_panel=SAMPLING, help="Guidance scale (1 or less turns classifier-free guidance off). Default: the family's (SD 7.5, SDXL 5, SD3 7, Flux 3.5)."),
    strength: float = StrengthOpt,
    hardness: float = typer.Option(1.0, "--hardness", rich_help_panel=SAMPLING, help="1 = binary per-step masks (default), 0 = the map as a fully soft mask, between = a mix."),
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
    paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", rich_help_panel=MAP, help="Paste the original pixels back where the map is 0 (bit-identical), feathered into low-change areas."),
    paste_feather: float = typer.Option(0.1, "--paste-feather", rich_help_panel=MAP, help="Map level at which the generated pixels fully replace the original (0 = only map 0 is pasted back)."),
    fit: str = FitOpt,
    context: Optional[int] = ContextOpt,
    forced_work_size: Optional[str] = WorkSizeOpt,
    seed: Optional[int] = SeedOpt,
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    refiner: Optional[str] = RefinerOpt,
    refiner_start: float = RefinerStartOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    offload: str = OffloadOpt,
    vae_tiling: bool = typer.Option(False, "--vae-tiling", rich_help_panel=PERFORMANCE, help="Decode and encode in tiles: large images in less memory."),
    no_t5: bool = typer.Option(False, "--no-t5", rich_help_panel=PERFORMANCE, help="SD3: leave the T5 text encoder out (less memory, weaker prompts)."),
    allow_pickle: bool = AllowPickleOpt,
    skip_existing: bool = typer.Option(False, "--skip-existing", rich_help_panel=BATCH, help="Leave images whose output already exists alone (a rerun redoes nothing)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", rich_help_panel=BATCH, help="Stop at the first image that fails (default: report it and go on)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", rich_help_panel=BATCH, help="Run the valid images even when others are bad (default: stop before loading the model)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", metavar="N", rich_help_panel=BATCH, help="Largest image or map (width x height) to open, a guard against decompression bombs (Pillow's limit); 0 = no limit."),
    report_path: Optional[str] = typer.Option(None, "--report", rich_help_panel=BATCH, help="Append one JSON line per image (input, map, output, seed, status, error, seconds) to this file."),
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
    # What users bring to a checkpoint (README: "LoRAs, embeddings, a VAE, clip skip and prompt syntax")
    loras: List[str] = typer.Option([], "--lora", metavar="PATH[:SCALE]", rich_help_panel=MODEL, help="LoRA file (.safetensors: diffusers, kohya or A1111 layout), optionally PATH:SCALE (default 1); repeat to combine several."),
    embeddings: List[str] = typer.Option([], "--embedding", metavar="PATH[:TOKEN]", rich_help_panel=MODEL, help="Textual-inversion embedding (A1111 or diffusers file), optionally PATH:TOKEN (default token: the file's stem); repeatable."),
    vae: Optional[str] = typer.Option(None, "--vae", metavar="PATH|HUB_ID", rich_help_panel=MODEL, help="Replace the model's VAE: a diffusers VAE folder, a single .safetensors file or a hub id."),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip", metavar="N", rich_help_panel=MODEL, help="Text-encoder layer from the end, as A1111: 1 = last (SD's default), 2 = the one before (SDXL's and SD3's default)."),
    fuse_lora: bool = typer.Option(True, "--fuse-lora/--no-fuse-lora", rich_help_panel=PERFORMANCE, help="Merge the LoRAs into the weights once (faster steps, default) or keep them as separate layers."),
    batch_size: str = typer.Option("auto", "--batch-size", metavar="N|auto", rich_help_panel=PERFORMANCE, help="Images that share denoiser calls (same working size and settings; each keeps its own map, seed, prompt and output). auto: 1 on the CPU, on CUDA from free GPU memory."),
    compile_: bool = typer.Option(False, "--compile", rich_help_panel=PERFORMANCE, help="torch.compile the denoiser: faster steps on GPUs after a warm-up of tens of seconds per new shape; pays off on long runs."),
) -> None:
    """Edit IMAGES where --map says, as much as it says, towards --prompt. One model load for all of them.

    Every input, map, flag, manifest line and output name is checked before the model loads: bad input is exit 2 with one line, and nothing is written.
    """
    options = {k: v for k, v in locals().items() if k != "ctx"}
    from diffdiff_cli import batch
    from diffdiff_cli.progress import Reporter
    from diffdiff_cli.validate import check_edit

    if like is not None:
        _apply_like(ctx, options, like)
    reporter = Reporter(quiet=options["quiet"])
    batch_size = batch.parse_batch_size(options["batch_size"])
    checked = check_edit(options, reporter)  # every check; nothing loaded, nothing written
    try:
        summary = batch.run_edit(checked, reporter, options["report_path"], options["json_out"], options["fail_fast"],
                                 options["skip_existing"], debug=_debug["on"], batch_size=batch_size)
    finally:
        checked.cleanup()
    if checked.total > 1 or summary.exit_code != 0 or checked.world > 1:
        print(summary.line(checked.rank, checked.world), file=sys.stderr, flush=True)
    raise typer.Exit(summary.exit_code)


# Settings `--like` takes from an earlier output's record, by command-line parameter name.
_LIKE_KEYS = (
    "prompt", "negative_prompt", "model", "steps", "guidance", "strength", "hardness", "schedule", "invert_map",
    "map_channel", "map_levels", "map_gamma", "map_min", "map_max", "map_grow", "map_blur", "dither",
    "paste_back", "paste_feather", "refiner", "refiner_start", "loras", "embeddings", "vae", "clip_skip", "fuse_lora",
    "fit", "context", "forced_work_size",
)


def _apply_like(ctx: typer.Context, options: dict, path: str) -> None:
    """Fill every option not given on the command line from the output's record, its seed included. The
    map is found by its resolved path (so an output made in another folder works), else as recorded."""
    from diffdiff_cli.write import read_recorded

    record, _ = read_recorded(path, "--like")
    if record is None:
        raise InputError(f"--like {path}: carries no diffdiff settings (only files written by diffdiff edit do)")

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        # an environment default (DIFFDIFF_MODEL) is not a choice made for this rerun: the record wins over it
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP", "ENVIRONMENT")

    for key in _LIKE_KEYS:
        if key in record and not given(key):
            options[key] = record[key]
    if not given("scheduler") and record.get("scheduler") not in (None, "default"):
        options["scheduler"] = record["scheduler"]
    if not given("map_path") and record.get("map"):
        resolved = record.get("map_path")
        options["map_path"] = resolved if resolved and Path(resolved).is_file() else record["map"]
    if not given("seed") and record.get("seed") is not None:
        options["seed"] = record["seed"]


@app.command()
def plan(
    map_path: Optional[str] = typer.Option(None, "--map", help="Change map, to report the share of pixels free at each evaluation."),
    image: Optional[str] = typer.Option(None, "--image", help="The image to edit (its size decides the working region; default: the map's size)."),
    fit: str = FitOpt,
    context: Optional[int] = ContextOpt,
    forced_work_size: Optional[str] = WorkSizeOpt,
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
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    refiner: Optional[str] = typer.Option(None, "--refiner", help="Mark the evaluations an SDXL refiner would take (the refiner is not loaded)."),
    refiner_start: float = RefinerStartOpt,
    allow_pickle: bool = AllowPickleOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show the schedule a run would use, one row per model evaluation, without loading weights."""
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.models.registry import resolve_model

    steps, _ = _model_defaults(model, steps, None)
    settings = EditSettings(
        prompt="", model=model, scheduler=scheduler, steps=steps, strength=strength, schedule=schedule, refiner_start=refiner_start,
        **map_settings(invert_map, map_channel, map_levels, map_gamma, map_min, map_max, map_grow, map_blur, dither),
        **fit_settings(fit, context, forced_work_size),
    )
    settings.validate()
    from diffdiff_cli.load import check_image_header, upright_size

    if map_path is not None:
        check_image_header(map_path, "--map")
    image_size = None if image is None else upright_size(image, "--image")
    source_model = resolve_model(model, allow_pickle=allow_pickle)

    from diffdiff_cli.dither import strength_levels
    from diffdiff_cli.edit import plan_with_map
    from diffdiff_cli.load import load_map
    from diffdiff_cli.models.load import read_configs
    from diffdiff_cli.progress import Reporter

    configs = read_configs(source_model, offline=offline, model_config=model_config)
    family = configs.family
    run = plan_with_map(
        family, configs.scheduler_config, configs.latent_factor, settings,
        None if map_path is None else load_map(map_path, settings.map_channel), image_size,
        refiner_start=refiner_start if refiner else None, reporter=Reporter(), sampling=False, native_side=configs.native_size,
    )
    the_plan = run.plan
    change = None if run.prepared is None else run.prepared.latent
    report = the_plan.to_json(change)
    report.update(_region_report(run, configs.native_size, fit))
    report.update(model=model, family=family.name, scheduler=scheduler or configs.scheduler_config.get("_class_name"), strength=strength)
    report.update(strength_levels=strength_levels(the_plan.thresholds, the_plan.level_rule).tolist(), dither=dither)
    if json_out:
        print(json.dumps(report))
        return
    _print_plan_table(report)


def _stdout_console():
    """Tables for stdout: the terminal's width, or wide enough not to wrap when piped to a file."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _region_report(run, native_side: int, fit: str) -> dict:
    """The working region's keys of `plan`'s report, and a notice when the map changes nothing."""
    from diffdiff_cli.edit import region_record

    record = {"fit": fit, **region_record(run.region), "native_size": [native_side] * 2}
    record["map_changes_nothing"] = run.change is not None and not bool((run.change > 0).any())
    if record["map_changes_nothing"]:
        print("diffdiff: the map is 0 everywhere: `edit` writes the input unchanged without loading the model", file=sys.stderr)
    return record


def _print_plan_table(report: dict) -> None:
    from rich.table import Table

    where = ""
    if report.get("region"):
        x0, y0, x1, y1 = report["region"]
        where = f" · region {x0},{y0},{x1},{y1} at {report['work_size'][0]}x{report['work_size'][1]}"
    table = Table(
        title=f"{report['model']} · {report['scheduler']} · {report['steps']} steps · "
        f"{report['model_evaluations']} evaluations · {report['distinct_levels']} strength levels{where}",
    )
    for column in ("index", "step", "timestep", "sigma", "threshold", "free_share"):
        table.add_column(column, justify="right")
    for row in report["evaluations"]:
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:.4f}"
        share = "-" if row["free_share"] is None else f"{row['free_share']:.1%}"
        table.add_row(str(row["index"]), str(row["step"]), f"{row['timestep']:.2f}", sigma, f"{row['threshold']:.4f}", share)
    _stdout_console().print(table)


@app.command()
def info(
    files: List[str] = typer.Argument(..., help="Images written by diffdiff (or carrying A1111 parameters)."),
    json_out: bool = JsonOpt,
) -> None:
    """Print the settings recorded in outputs: prompt, seed, model, map and the rest."""
    from diffdiff_cli.write import read_recorded

    for path in files:
        record, parameters = read_recorded(path, "info")
        if record is None and parameters is None:
            raise InputError(f"info {path}: carries no diffdiff settings or A1111 parameters")
        if json_out:
            print(json.dumps({"file": path, "settings": record, "parameters": parameters}, sort_keys=True))
            continue
        print(f"{path}:")
        if record is None:
            print("  " + parameters.replace("\n", "\n  "))
            continue
        for key in sorted(record):
            print(f"  {key}: {record[key]}")


@models_app.command("list")
def models_list(json_out: bool = JsonOpt) -> None:
    """Built-in models (offline) and the aliases for real checkpoints."""
    from diffdiff_cli.models.registry import ALIAS_INFO, BUILTINS

    rows = [{"name": b.name, "kind": "built-in", "family": b.family, "size": "tiny", "source": b.description} for b in BUILTINS.values()]
    rows += [
        {"name": name, "kind": "alias", "family": alias.family, "size": alias.size, "source": alias.hub_id}
        for name, alias in ALIAS_INFO.items()
    ]
    if json_out:
        print(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("name", "kind", "family", "size", "source (hub id for aliases)")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["family"], row["size"], row["source"])
    _stdout_console().print(table)


@models_app.command("save")
def models_save(
    name: str = typer.Argument(..., help="A built-in model name (see 'diffdiff models list')."),
    folder: str = typer.Argument(..., help="Where to write the diffusers folder (must not exist, or be empty)."),
) -> None:
    """Write a built-in model as an ordinary diffusers folder (loads with plain diffusers)."""
    import shutil
    import tempfile

    from diffdiff_cli.models.registry import BUILTINS

    if name not in BUILTINS:
        raise InputError(f"models save {name}: not a built-in model; choose one of: {', '.join(BUILTINS)}")
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"models save: {folder} already exists and is not an empty folder; choose a new folder")
    if not target.parent.is_dir():
        raise InputError(f"models save: folder {target.parent} does not exist; create it first")
    from diffdiff_cli.models.builtin import builtin_folder
    from diffdiff_cli.models.load import quiet_libraries

    quiet_libraries(offline=True)
    cached = builtin_folder(name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(cached, staging, dirs_exist_ok=True)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"diffdiff: saved {name} to {folder}", file=sys.stderr)


def _traceback() -> None:
    import traceback

    traceback.print_exc()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code (2 usage/input, 1 run time).

    `--debug` adds the traceback above that line; the exit code stays the same.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV) == "1"
    _debug["on"] = debug
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(args, prog_name="diffdiff", standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        print("diffdiff: interrupted", file=sys.stderr)
        code = 130
    except typer.TyperException as e:  # usage errors: unknown option, missing value, bad number
        if type(e).__name__ == "NoArgsIsHelpError":
            print(e.format_message(), file=sys.stderr)
            sys.exit(2)
        if debug:
            _traceback()
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else " (see 'diffdiff --help')"
        print(f"diffdiff: error: {e.format_message()}{where}", file=sys.stderr)
        code = 2
    except DiffdiffError as e:
        if debug:
            _traceback()
        print(f"diffdiff: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("diffdiff: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # a bug or an unforeseen failure: still one line (and the traceback with --debug)
        if debug:
            _traceback()
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = "" if debug else " (rerun with --debug for the traceback)"
        print(f"diffdiff: error: {type(e).__name__}: {message}{hint}", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


# `diffdiff map ...` and `diffdiff fan` live in their own module; they are registered here.
from diffdiff_cli import cli_map  # noqa: E402

app.add_typer(cli_map.map_app, name="map")
app.command()(cli_map.fan)
