"""The `diffdiff` command line: parse, call the library, report.

Imports here stay light (typer, the standard library, pure diffdiff modules): torch and diffusers are
imported inside the commands that need them, so `diffdiff --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from diffdiff_cli import __version__
from diffdiff_cli.errors import DiffdiffError, InputError
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
ModelOpt = typer.Option("tiny-sd15", "--model", "-m", help="Built-in name, alias (sd15, sd21, ...), hub id, diffusers folder or .safetensors file.")
SchedulerOpt = typer.Option(None, "--scheduler", help=SCHEDULER_HELP)
StepsOpt = typer.Option(30, "--steps", help="Sampler steps (before --strength cuts the schedule).")
StrengthOpt = typer.Option(1.0, "--strength", help="Global strength in (0, 1]; a pixel with map value c changes about as much as img2img at c x strength.")
ScheduleOpt = typer.Option("timestep", "--schedule", help="Threshold rule: 'timestep' (ComfyUI's node, default) or 'steps' (the paper's code).")
InvertOpt = typer.Option(False, "--invert-map", help="Read the map as white = keep (maps made for the paper's code or diffusers' community pipelines).")
OfflineOpt = typer.Option(False, "--offline", help="Never download: use built-ins, local files and the Hugging Face cache only.")
ModelConfigOpt = typer.Option(None, "--model-config", help="For a .safetensors file: a diffusers folder whose configs (and tokenizer) match it.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


@app.command()
def edit(
    image: str = typer.Argument(..., help="The image to edit."),
    map_path: str = typer.Option(..., "--map", help="Change map: white = change fully, black = keep exactly, grey = in between."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the changed areas should show."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output file (.png, .jpg, .webp). Default: <image stem>-edited.png beside the image."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: int = StepsOpt,
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale (1 or less turns it off)."),
    strength: float = StrengthOpt,
    hardness: float = typer.Option(1.0, "--hardness", help="1 = binary per-step masks (default), 0 = the map as a fully soft mask, between = a mix."),
    schedule: str = ScheduleOpt,
    invert_map: bool = InvertOpt,
    paste_back: bool = typer.Option(True, "--paste-back/--no-paste-back", help="Paste the original pixels back where the map is 0 (bit-identical), feathered into low-change areas."),
    paste_feather: float = typer.Option(0.1, "--paste-feather", help="Map level at which the generated pixels fully replace the original (0 = only map 0 is pasted back)."),
    seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed (default: a new one, printed and recorded)."),
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    json_out: bool = JsonOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notices on stderr (errors, warnings and the seed still print)."),
) -> None:
    """Edit IMAGE where --map says, as much as it says, towards --prompt."""
    from diffdiff_cli.edit import EditSettings, edit_file
    from diffdiff_cli.load import check_image_header
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.progress import Reporter
    from diffdiff_cli.write import check_output_path

    settings = EditSettings(
        prompt=prompt,
        negative_prompt=negative_prompt,
        model=model,
        scheduler=scheduler,
        steps=steps,
        guidance=guidance,
        strength=strength,
        hardness=hardness,
        schedule=schedule,
        invert_map=invert_map,
        paste_back=paste_back,
        paste_feather=paste_feather,
        seed=seed,
    )
    settings.validate()
    if output is None:
        source = Path(image)
        output = str(source.with_name(f"{source.stem}-edited.png"))
    check_image_header(image, "image")
    check_image_header(map_path, "--map")
    check_output_path(output, [image])
    source_model = resolve_model(model)
    if model_config is not None and not Path(model_config).is_dir():
        raise InputError(f"--model-config {model_config}: no such folder")

    reporter = Reporter(quiet=quiet)
    reporter.notice(f"loading model {model}")
    from diffdiff_cli.models.load import load_model

    loaded = load_model(source_model, offline=offline, model_config=model_config)
    record = edit_file(loaded, settings, image, map_path, output, reporter)
    print(f"diffdiff: wrote {output} (seed {record['seed']}, {record['seconds']:.1f} s)", file=sys.stderr, flush=True)
    if json_out:
        print(json.dumps(record, sort_keys=True), flush=True)


@app.command()
def plan(
    map_path: Optional[str] = typer.Option(None, "--map", help="Change map, to report the share of pixels free at each evaluation."),
    model: str = ModelOpt,
    scheduler: Optional[str] = SchedulerOpt,
    steps: int = StepsOpt,
    strength: float = StrengthOpt,
    schedule: str = ScheduleOpt,
    invert_map: bool = InvertOpt,
    offline: bool = OfflineOpt,
    model_config: Optional[str] = ModelConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Show the schedule a run would use, one row per model evaluation, without loading weights."""
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.models.registry import resolve_model

    EditSettings(prompt="", model=model, scheduler=scheduler, steps=steps, strength=strength, schedule=schedule).validate()
    if map_path is not None:
        from diffdiff_cli.load import check_image_header

        check_image_header(map_path, "--map")
    source_model = resolve_model(model)

    from diffdiff_cli.load import load_map
    from diffdiff_cli.models.load import read_configs
    from diffdiff_cli.plan import banding_warning, plan_run, prepare_scheduler
    from diffdiff_cli.prepare_map import prepare_map
    from diffdiff_cli.sample.noising import DiscreteTimeNoising
    from diffdiff_cli.schedulers import make_scheduler

    configs = read_configs(source_model, offline=offline, model_config=model_config)
    sched = make_scheduler(configs.scheduler_config, scheduler)
    timesteps = prepare_scheduler(sched, steps, strength)
    the_plan = plan_run(timesteps, sched.order, DiscreteTimeNoising(sched), schedule)
    change = None
    if map_path is not None:
        raw = load_map(map_path)
        change = prepare_map(raw, (raw.shape[1], raw.shape[0]), configs.vae_scale_factor, invert=invert_map).latent
        warning = banding_warning(the_plan, change)
        if warning:
            print(f"diffdiff: warning: {warning}", file=sys.stderr)
    report = the_plan.to_json(change)
    report.update(model=model, scheduler=scheduler or configs.scheduler_config.get("_class_name"), strength=strength)
    if json_out:
        print(json.dumps(report))
        return
    _print_plan_table(report)


def _print_plan_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{report['model']} · {report['scheduler']} · {report['steps']} steps · "
        f"{report['model_evaluations']} evaluations · {report['distinct_levels']} strength levels",
    )
    for column in ("index", "step", "timestep", "sigma", "threshold", "free_share"):
        table.add_column(column, justify="right")
    for row in report["evaluations"]:
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:.4f}"
        share = "-" if row["free_share"] is None else f"{row['free_share']:.1%}"
        table.add_row(str(row["index"]), str(row["step"]), f"{row['timestep']:.2f}", sigma, f"{row['threshold']:.4f}", share)
    Console().print(table)


@models_app.command("list")
def models_list(json_out: bool = JsonOpt) -> None:
    """Built-in models (offline) and the aliases for real checkpoints."""
    from diffdiff_cli.models.registry import ALIASES, BUILTINS

    rows = [{"name": b.name, "kind": "built-in", "family": b.family, "source": b.description} for b in BUILTINS.values()]
    rows += [{"name": alias, "kind": "alias", "family": "sd", "source": f"hub: {hub_id}"} for alias, hub_id in ALIASES.items()]
    if json_out:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "family", "source")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["family"], row["source"])
    Console().print(table)


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
