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
from diffdiff_cli.errors import DiffdiffError, InputError
from diffdiff_cli.map_options import (
    DitherOpt, MapBlurOpt, MapChannelOpt, MapGammaOpt, MapGrowOpt, MapLevelsOpt, MapMaxOpt, MapMinOpt, StrictSizeOpt, map_settings,
)
from diffdiff_cli.map_options import ContextOpt, FitOpt, WorkSizeOpt, fit_settings
from diffdiff_cli.schedulers import SCHEDULERS

app = typer.Typer(
    name="diffdiff",
    help="Edit images with a per-pixel change map (Differential Diffusion): white = change fully, "
    "black = keep exactly, grey = in between.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
models_app = typer.Typer(help="List the built-in models and aliases, or save a built-in as a diffusers folder.", no_args_is_help=True)
app.add_typer(models_app, name="models")

SCHEDULER_HELP = "Sampler: " + ", ".join(SCHEDULERS) + ". Default: the model's own."
DEBUG_ENV = "DIFFDIFF_DEBUG"


def _version(value: bool) -> None:
    if value:
        print(f"diffdiff {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (any position on the line)."),
) -> None:
    """diffdiff: per-pixel-strength image editing on Stable Diffusion models."""


# Options shared by `edit` and `plan`.
ModelOpt = typer.Option(
    "tiny-sd15", "--model", "-m", envvar="DIFFDIFF_MODEL",
    help="Built-in name, alias (sd15, sdxl, flux-schnell, ...), hub id, diffusers folder or .safetensors file.",
)
SchedulerOpt = typer.Option(None, "--scheduler", help=SCHEDULER_HELP)
StepsOpt = typer.Option(None, "--steps", help="Sampler steps before --strength cuts the schedule. Default: 30 (4 for turbo/schnell aliases).")
StrengthOpt = typer.Option(1.0, "--strength", help="Global strength in (0, 1]; a pixel with map value c changes about as much as img2img at c x strength.")
ScheduleOpt = typer.Option("timestep", "--schedule", help="Threshold rule: 'timestep' (ComfyUI's node, default) or 'steps' (the paper's code).")
InvertOpt = typer.Option(False, "--invert-map", help="Read the map as white = keep (maps made for the paper's code or diffusers' community pipelines).")
OfflineOpt = typer.Option(False, "--offline", help="Never download: use built-ins, local files and the Hugging Face cache only.")
ModelConfigOpt = typer.Option(None, "--model-config", help="For a .safetensors file: a diffusers folder whose configs (and tokenizer) match it.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
AllowPickleOpt = typer.Option(False, "--allow-pickle", help="Accept .ckpt/.pt/.bin checkpoints (read with torch's weights_only loader).")
RefinerOpt = typer.Option(None, "--refiner", help="An SDXL refiner that takes over the end of the schedule (one threshold ramp across both).")
RefinerStartOpt = typer.Option(0.8, "--refiner-start", help="Share of the schedule the base model runs before the refiner takes over.")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda | mps.")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, fp16 on GPUs) | fp32 | fp16 | bf16.")
OffloadOpt = typer.Option("none", "--offload", help="none | model (whole models to the GPU in turn) | sequential (layer by layer, least memory).")


@app.command()
def edit(
    ctx: typer.Context,
    images: Optional[List[str]] = typer.Argument(None, help="Images to edit (shell globs welcome; - reads one from standard input)."),
    map_path: Optional[str] = typer.Option(None, "--map", help="Change map (white = change fully, black = keep exactly), or a template per image: 'masks/{stem}.png' ({stem}, {name}, {parent})."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the changed areas should show."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output file for a single image (.png, .jpg, .webp; - = PNG to stdout). Default: <stem>-edited.png beside the image."),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Folder for the outputs of many images (named by --name)."),
    name: str = typer.Option("{stem}-edited.png", "--name", help="Output name template: {stem}, {name}, {parent}, {ext}, {seed}, {index}."),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="Jobs file (.jsonl, or .csv with a header): input, map, output, prompt, negative_prompt, seed, strength, hardness, steps, guidance per line."),
    like: Optional[str] = typer.Option(None, "--like", help="Reuse the settings (and seed) recorded in an earlier output; flags given here override them."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="Guidance scale (1 or less turns classifier-free guidance off). Default: the family's (SD 7.5, SDXL 5, SD3 7, Flux 3.5)."),
    strength: float = StrengthOpt,
    hardness: float = typer.Option(1.0, "--hardness", help="1 = binary per-step masks (default), 0 = the map as a fully soft mask, between = a mix."),
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
    paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Paste the original pixels back where the map is 0 (bit-identical), feathered into low-change areas."),
    paste_feather: float = typer.Option(0.1, "--paste-feather", help="Map level at which the generated pixels fully replace the original (0 = only map 0 is pasted back)."),
    fit: str = FitOpt,
    context: Optional[int] = ContextOpt,
    forced_work_size: Optional[str] = WorkSizeOpt,
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Base seed; each image's seed follows from it and the image's content (default: random; every seed used is printed and recorded)."),
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    refiner: Optional[str] = RefinerOpt,
    refiner_start: float = RefinerStartOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    offload: str = OffloadOpt,
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode and encode in tiles: large images in less memory."),
    no_t5: bool = typer.Option(False, "--no-t5", help="SD3: leave the T5 text encoder out (less memory, weaker prompts)."),
    allow_pickle: bool = AllowPickleOpt,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave images whose output already exists alone (a rerun redoes nothing)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first image that fails (default: report it and go on)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Run the valid images even when others are missing or unreadable (default: stop before loading the model)."),
    report_path: Optional[str] = typer.Option(None, "--report", help="Append one JSON line per image (input, map, output, seed, status, error, seconds) to this file."),
    json_out: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notices on stderr (errors, warnings and the seed still print)."),
    # What users bring to a checkpoint (README: "LoRAs, embeddings, a VAE, clip skip and prompt syntax")
    loras: List[str] = typer.Option([], "--lora", metavar="PATH[:SCALE]", help="LoRA file (.safetensors: diffusers, kohya or A1111 layout), optionally PATH:SCALE (default 1); repeat to combine several."),
    embeddings: List[str] = typer.Option([], "--embedding", metavar="PATH[:TOKEN]", help="Textual-inversion embedding (A1111 or diffusers file), optionally PATH:TOKEN (default token: the file's stem); repeatable."),
    vae: Optional[str] = typer.Option(None, "--vae", metavar="PATH|HUB_ID", help="Replace the model's VAE: a diffusers VAE folder, a single .safetensors file or a hub id."),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip", metavar="N", help="Text-encoder layer from the end, as A1111: 1 = last (SD's default), 2 = the one before (SDXL's and SD3's default)."),
    fuse_lora: bool = typer.Option(True, "--fuse-lora/--no-fuse-lora", help="Merge the LoRAs into the weights once (faster steps, default) or keep them as separate layers."),
) -> None:
    """Edit IMAGES where --map says, as much as it says, towards --prompt. One model load for all of them."""
    options = {k: v for k, v in locals().items() if k != "ctx"}
    from diffdiff_cli import batch
    from diffdiff_cli.edit import EditSettings, new_seed
    from diffdiff_cli.models.load import Runtime, load_model
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.progress import Reporter

    exact_seed = None
    if like is not None:
        exact_seed = _apply_like(ctx, options, like)
    o = options
    if not o["images"] and not o["manifest"]:
        raise InputError("give at least one IMAGE to edit (or --manifest FILE); see 'diffdiff edit --help'")
    if o["prompt"] is None:
        raise InputError("--prompt is required (or --like an earlier output)")
    if o["output"] == "-" and o["json_out"]:
        raise InputError("-o - writes the image to stdout, so --json cannot share it; use --report FILE")
    steps_, guidance_ = _model_defaults(o["model"], o["steps"], o["guidance"])
    from diffdiff_cli.models.extras import Extras

    extras = Extras.from_options(o["loras"], o["embeddings"], o["vae"], o["clip_skip"], o["fuse_lora"], allow_pickle=o["allow_pickle"])
    settings = EditSettings(
        prompt=o["prompt"],
        negative_prompt=o["negative_prompt"],
        model=o["model"],
        scheduler=o["scheduler"],
        steps=steps_,
        guidance=guidance_,
        strength=o["strength"],
        hardness=o["hardness"],
        schedule=o["schedule"],
        **map_settings(
            o["invert_map"], o["map_channel"], o["map_levels"], o["map_gamma"], o["map_min"], o["map_max"],
            o["map_grow"], o["map_blur"], o["dither"],
        ),
        strict_size=o["strict_size"],
        paste_back=o["paste_back"],
        paste_feather=o["paste_feather"],
        refiner_start=o["refiner_start"],
        **extras.settings(),
        **fit_settings(o["fit"], o["context"], o["forced_work_size"]),
    )
    settings.validate()
    runtime = Runtime(device=o["device"], dtype=o["dtype"], offload=o["offload"], vae_tiling=o["vae_tiling"], no_t5=o["no_t5"])
    runtime.validate()
    source_model = resolve_model(o["model"], allow_pickle=o["allow_pickle"])
    refiner_model = None if o["refiner"] is None else resolve_model(o["refiner"], allow_pickle=o["allow_pickle"])
    if o["model_config"] is not None and not Path(o["model_config"]).is_dir():
        raise InputError(f"--model-config {o['model_config']}: no such folder")

    reporter = Reporter(quiet=o["quiet"])
    base_seed = o["seed"] if o["seed"] is not None else new_seed()
    stdin_path = batch.read_stdin_to_temp() if "-" in (o["images"] or []) else None
    try:
        request = batch.JobRequest(
            inputs=list(o["images"] or []), map_template=o["map_path"], output=o["output"], out_dir=o["out_dir"],
            name_template=o["name"], base_seed=base_seed, manifest=o["manifest"],
        )
        jobs, invalid = batch.plan_jobs(request, stdin_path)
        if exact_seed is not None and o["seed"] is None:
            for job in jobs:
                job.seed = job.overrides.get("seed", exact_seed)
        total = len(jobs) + len(invalid)
        if invalid and not o["skip_invalid"]:
            more = f" ({len(invalid)} of {total} inputs are bad; nothing was run; --skip-invalid runs the rest)" if total > 1 else ""
            raise InputError(invalid[0].error + more)
        jobs, rank, world = batch.shard(jobs)
        invalid, _, _ = batch.shard(invalid)
        if o["seed"] is None and exact_seed is None and total > 1:
            reporter.notice(f"base seed {base_seed}")

        def load():
            reporter.notice(f"loading model {o['model']}")
            if o["model"].startswith("tiny-"):
                reporter.notice(f"{o['model']} has random weights: it shows the mechanics, not pictures; try --model demo or a real checkpoint (sd15, sdxl, ...)")
            return load_model(
                source_model, offline=o["offline"], model_config=o["model_config"], runtime=runtime, refiner=refiner_model, extras=extras
            )

        report = batch.Report(o["report_path"], to_stdout=o["json_out"])
        try:
            summary = batch.run_jobs(
                jobs, invalid, settings, load, reporter, report, fail_fast=o["fail_fast"], skip_existing=o["skip_existing"]
            )
        finally:
            report.close()
    finally:
        if stdin_path is not None:
            os.unlink(stdin_path)
    if total > 1 or summary.exit_code != 0 or world > 1:
        print(summary.line(rank, world), file=sys.stderr, flush=True)
    raise typer.Exit(summary.exit_code)


# Settings `--like` takes from an earlier output's record, by command-line parameter name.
_LIKE_KEYS = (
    "prompt", "negative_prompt", "model", "steps", "guidance", "strength", "hardness", "schedule", "invert_map",
    "map_channel", "map_levels", "map_gamma", "map_min", "map_max", "map_grow", "map_blur", "dither",
    "paste_back", "paste_feather", "refiner_start", "loras", "embeddings", "vae", "clip_skip", "fuse_lora",
    "fit", "context", "forced_work_size",
)


def _apply_like(ctx: typer.Context, options: dict, path: str) -> int | None:
    """Fill every option not given on the command line from the output's record; return its seed."""
    from diffdiff_cli.write import read_recorded

    record, _ = read_recorded(path, "--like")
    if record is None:
        raise InputError(f"--like {path}: carries no diffdiff settings (only files written by diffdiff edit do)")

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")

    for key in _LIKE_KEYS:
        if key in record and not given(key):
            options[key] = record[key]
    if not given("scheduler") and record.get("scheduler") not in (None, "default"):
        options["scheduler"] = record["scheduler"]
    if not given("map_path") and record.get("map"):
        options["map_path"] = record["map"]
    return record.get("seed")


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


def _model_defaults(model: str, steps: int | None, guidance: float | None) -> tuple[int, float | None]:
    """Steps and guidance not given on the command line: the model's own defaults (few-step models), else 30."""
    from diffdiff_cli.edit import DEFAULT_STEPS
    from diffdiff_cli.models.registry import model_defaults

    defaults = model_defaults(model)
    steps = steps if steps is not None else defaults.get("steps", DEFAULT_STEPS)
    return steps, guidance if guidance is not None else defaults.get("guidance")


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and an exit code (2 usage/input, 1 run time)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV) == "1"
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
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else " (see 'diffdiff --help')"
        print(f"diffdiff: error: {e.format_message()}{where}", file=sys.stderr)
        code = 2
    except DiffdiffError as e:
        if debug:
            raise
        print(f"diffdiff: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("diffdiff: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # a bug or an unforeseen failure: still one line, unless --debug
        if debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"diffdiff: error: {type(e).__name__}: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


# `diffdiff map ...` and `diffdiff fan` live in their own module and register themselves on `app`.
from diffdiff_cli import cli_map  # noqa: E402,F401
