"""One validation pass over everything a run will read and write, before any model loads.

The contract (README, "Bad input"): bad usage or input is exit 2 with one line naming the file or flag and
the fix, nothing written, and no model loaded. So before `load_model` this pass

- checks every flag, and every manifest field with the same rules and messages (EditSettings.validate);
- reads the model's configs (no weights) and plans every distinct schedule: a scheduler the family cannot
  use, more steps than the scheduler has training timesteps, a strength too small for any step;
- decodes every input and every map completely (a truncated file fails here, named), maps with their
  values checked (NaN, out of range, --strict-size, the channel asked for), images against --max-pixels;
- resolves every output and checks it against every input, map and other output of the run, and against
  the folder it must stay inside (--out-dir; --allow-outside-out-dir lifts that).

What it cannot foresee (NaN from the model, a disk that fills up) fails at run time with exit 1.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from diffdiff_cli.batch import STDIN, Job, JobRequest, MANIFEST_FIELDS, plan_jobs
from diffdiff_cli.errors import InputError

STDIN_LABEL = "-"  # how standard input is named in messages (never the temporary copy's path)


@dataclass
class ModelCheck:
    """What the configs say about the run's schedules (cached per distinct steps / strength / scheduler)."""

    configs: object  # models.load.ModelConfigs
    planned: dict = field(default_factory=dict)

    def check(self, settings) -> None:
        from diffdiff_cli.plan import plan_schedule

        limit = self.configs.scheduler_config.get("num_train_timesteps")
        if isinstance(limit, int) and settings.steps > limit:
            raise InputError(
                f"--steps {settings.steps}: more than the {limit} training timesteps the model's scheduler has; "
                f"use at most {limit} (20-50 is usual)"
            )
        key = (settings.steps, settings.strength, settings.scheduler, settings.schedule)
        if key not in self.planned:
            side = self.configs.native_size // self.configs.latent_factor
            self.planned[key] = plan_schedule(
                self.configs.family, self.configs.scheduler_config, settings.scheduler, settings.steps, settings.strength,
                settings.schedule, (side, side),
            )


def job_settings(base, job: Job, where: str | None):
    """The job's EditSettings (the flags', with its manifest line's fields on top), checked by the flags'
    rules; a manifest field's message names the manifest line and the field instead of the flag."""
    changes = {k: v for k, v in job.overrides.items() if k in MANIFEST_FIELDS}
    settings = replace(base, **{**changes, "seed": job.seed})
    try:
        settings.validate()
    except InputError as e:
        message = str(e)
        for key in changes:
            flag = "--" + key.replace("_", "-")
            if message.startswith(flag + " "):
                raise InputError(f"{where}: {key}{message[len(flag):]}") from None
        raise
    return settings


def _where(request: JobRequest, job: Job) -> str:
    if request.manifest:
        return f"--manifest {request.manifest} line {job.overrides.get('_line', '?')}"
    return f"image {job.input}"


class _Files:
    """Each distinct file decoded once: the image's upright size, the map's size and whether it changes nothing."""

    def __init__(self, settings):
        self.settings = settings
        self.images: dict[str, tuple[int, int]] = {}
        self.maps: dict[str, tuple[tuple[int, int], bool]] = {}

    def prefetch(self, jobs: list[Job]) -> None:
        """Decode the distinct files of many jobs on a few threads (Pillow's decoders release the GIL);
        each result, or its error, is kept for `image` and `map` to return or raise in job order."""
        images = {job.path: job for job in jobs if job.status != "failed"}
        maps = {job.map for job in jobs if job.status != "failed" and job.map}
        if len(images) + len(maps) < 4:
            return
        from concurrent.futures import ThreadPoolExecutor

        def attempt(work):
            try:
                return work[0](*work[1:])
            except InputError as e:
                return e

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = pool.map(attempt, [(self._decode_image, p, _label(j)) for p, j in images.items()])
            self.images.update(zip(images, decoded))
            self.maps.update(zip(maps, pool.map(attempt, [(self._decode_map, m) for m in maps])))

    def image(self, path: str, label: str) -> tuple[int, int]:
        if path not in self.images:
            self.images[path] = self._decode_image(path, label)
        return _raise_or(self.images[path])

    def map(self, path: str) -> tuple[tuple[int, int], bool]:
        if path not in self.maps:
            self.maps[path] = self._decode_map(path)
        return _raise_or(self.maps[path])

    @staticmethod
    def _decode_image(path: str, label: str) -> tuple[int, int]:
        from diffdiff_cli.load import decode_check

        return decode_check(path, "image", label)

    def _decode_map(self, path: str) -> tuple[tuple[int, int], bool]:
        from diffdiff_cli.load import load_map
        from diffdiff_cli.prepare_map import MapShaping, changes_nothing

        values = load_map(path, self.settings.map_channel)  # every value: NaN and range checks, the channel
        return (values.shape[1], values.shape[0]), changes_nothing(values, MapShaping.from_settings(self.settings))


def _label(job: Job) -> str:
    return STDIN_LABEL if job.input == STDIN else job.input


def _raise_or(result):
    if isinstance(result, InputError):
        raise result
    return result


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_outputs(jobs: list[Job], allow_outside: bool) -> None:
    """Every output: a writable file of a known format, none of the run's inputs or maps, no two alike,
    inside the folder it belongs to. A failing job is marked failed with its message."""
    from diffdiff_cli.write import check_output_path

    reads: dict[Path, str] = {}
    for job in jobs:
        if job.input != STDIN:
            reads.setdefault(Path(job.path).resolve(), f"the input image {job.input}")
        if job.map:
            reads.setdefault(Path(job.map).resolve(), f"the map {job.map}")
    written: dict[Path, str] = {}
    for job in jobs:
        if job.status == "failed" or job.output == STDIN:
            continue
        subject = f"-o {job.output}:" if job.output_base is None else f"image {job.input}: output {job.output}"
        try:
            check_output_path(job.output, [])
            target = Path(job.output).resolve()
            if target in reads:
                raise InputError(f"{subject} is {reads[target]} of this run; writing it would destroy it; choose another output name")
            if target in written:
                raise InputError(f"{subject} is written by image {written[target]} too; use {{stem}} or {{index}} in --name")
            if job.output_base is not None and not allow_outside:
                base = Path(job.output_base).resolve()
                if not _inside(target, base):
                    raise InputError(
                        f"{subject} is outside {job.output_base}; outputs stay inside --out-dir (or the image's folder) "
                        f"unless you pass --allow-outside-out-dir"
                    )
            written[target] = job.input
        except InputError as e:
            job.status, job.error = "failed", str(e)


def check_files(jobs: list[Job], settings, request: JobRequest, model: ModelCheck | None) -> None:
    """Every job's settings, image and map; a failing job is marked failed with its one-line message."""
    files = _Files(settings)
    files.prefetch(jobs)
    for job in jobs:
        if job.status == "failed":
            continue
        try:
            own = job_settings(settings, job, _where(request, job))
            if model is not None:
                try:
                    model.check(own)
                except InputError as e:
                    if job.overrides.keys() & {"steps", "strength"}:  # the manifest line's own values
                        raise InputError(f"{_where(request, job)}: {e}") from None
                    raise
            size = files.image(job.path, _label(job))
            map_size, job.unchanged = files.map(job.map)
            if settings.strict_size and map_size != size:
                raise InputError(
                    f"--map {job.map}: {map_size[0]}x{map_size[1]}, but image {job.input} is {size[0]}x{size[1]}; "
                    f"give a map of the image's size or drop --strict-size"
                )
        except InputError as e:
            if not request.manifest and _is_flag_error(e):
                raise
            job.status, job.error = "failed", str(e)


def _is_flag_error(error: InputError) -> bool:
    """A flag's own error (the same for every image) stops the run at once, whatever --skip-invalid says."""
    return str(error).startswith("--") and not str(error).startswith(("--map ", "--manifest "))


def check_numbers(**flags) -> None:
    """Floats given on the command line must be finite (nan and inf parse as floats)."""
    for flag, value in flags.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--{flag.replace('_', '-')} {value}: must be a finite number")


def plan_and_check(request: JobRequest, settings, model: ModelCheck | None, stdin_path: str | None,
                   allow_outside: bool) -> list[Job]:
    """The run's jobs, every one checked; invalid ones carry status "failed" and their message."""
    jobs = plan_jobs(request, stdin_path)
    check_files(jobs, settings, request, model)
    check_outputs(jobs, allow_outside)
    return jobs



@dataclass
class CheckedRun:
    """A run that passed every check: what `batch.run_edit` needs, and nothing loaded yet."""

    settings: object
    runtime: object
    source_model: object
    refiner_model: object
    extras: object
    offline: bool
    model_config: str | None
    jobs: list
    invalid: list
    total: int
    rank: int = 0
    world: int = 1
    shard_source: str = ""
    stdin_path: str | None = None

    def cleanup(self) -> None:
        if self.stdin_path is not None:
            Path(self.stdin_path).unlink(missing_ok=True)
            self.stdin_path = None


def check_edit(o: dict, reporter) -> CheckedRun:
    """Every check of `diffdiff edit`, in the order a user can fix them; raises InputError (exit 2)."""
    from diffdiff_cli import batch
    from diffdiff_cli.cli_options import model_defaults
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.load import set_max_pixels
    from diffdiff_cli.models import hub
    from diffdiff_cli.models.extras import Extras
    from diffdiff_cli.models.load import Runtime, read_configs
    from diffdiff_cli.models.registry import resolve_model

    if not o["images"] and not o["manifest"]:
        raise InputError("give at least one IMAGE to edit (or --manifest FILE); see 'diffdiff edit --help'")
    if o["prompt"] is None:
        raise InputError("--prompt is required (or --like an earlier output)")
    if o["output"] == "-" and o["json_out"]:
        raise InputError("-o - writes the image to stdout, so --json cannot share it; use --report FILE")
    check_numbers(**{k: o[k] for k in ("guidance", "strength", "hardness", "map_gamma", "map_min", "map_max", "map_grow",
                                        "map_blur", "paste_feather", "refiner_start")})
    seed = batch.check_seed(o["seed"])
    set_max_pixels(o["max_pixels"])
    steps, guidance = model_defaults(o["model"], o["steps"], o["guidance"])
    from diffdiff_cli.cli_options import fit_settings, map_settings

    extras = Extras.from_options(o["loras"], o["embeddings"], o["vae"], o["clip_skip"], o["fuse_lora"], allow_pickle=o["allow_pickle"])
    settings = EditSettings(
        prompt=o["prompt"], negative_prompt=o["negative_prompt"], model=o["model"], scheduler=o["scheduler"], steps=steps,
        guidance=guidance, strength=o["strength"], hardness=o["hardness"], schedule=o["schedule"],
        **map_settings(o["invert_map"], o["map_channel"], o["map_levels"], o["map_gamma"], o["map_min"], o["map_max"],
                       o["map_grow"], o["map_blur"], o["dither"]),
        strict_size=o["strict_size"], paste_back=o["paste_back"], paste_feather=o["paste_feather"],
        refiner=o["refiner"], refiner_start=o["refiner_start"], **extras.settings(),
        **fit_settings(o["fit"], o["context"], o["forced_work_size"]),
    )
    settings.validate()
    runtime = Runtime(device=o["device"], dtype=o["dtype"], offload=o["offload"], vae_tiling=o["vae_tiling"], no_t5=o["no_t5"],
                      compile=o.get("compile_", False))
    runtime.validate()
    source_model = resolve_model(o["model"], allow_pickle=o["allow_pickle"])
    refiner_model = None if o["refiner"] is None else resolve_model(o["refiner"], allow_pickle=o["allow_pickle"])
    if o["model_config"] is not None and not Path(o["model_config"]).is_dir():
        raise InputError(f"--model-config {o['model_config']}: no such folder")
    rank, world, shard_source = batch.shard_position()

    offline = hub.prepare(source_model, o["offline"], reporter=reporter)
    if refiner_model is not None:
        offline = hub.prepare(refiner_model, offline, "--refiner", reporter=reporter) or offline
    if extras.vae is not None:
        offline = hub.prepare(extras.vae, offline, "--vae", ("config.json", "vae/config.json"), reporter=reporter) or offline
    model = ModelCheck(read_configs(source_model, offline=offline, model_config=o["model_config"]))

    request = batch.JobRequest(
        inputs=list(o["images"] or []), map_template=o["map_path"], output=o["output"], out_dir=o["out_dir"],
        name_template=o["name"], seed=seed, manifest=o["manifest"],
    )
    stdin_path = batch.read_stdin_to_temp() if STDIN in (o["images"] or []) else None
    try:
        jobs = plan_and_check(request, settings, model, stdin_path, o["allow_outside_out_dir"])
        valid, invalid = batch.split_invalid(jobs, o["skip_invalid"])
    except BaseException:
        if stdin_path is not None:
            Path(stdin_path).unlink(missing_ok=True)
        raise
    valid, _, _ = batch.shard(valid, rank, world)
    invalid, _, _ = batch.shard(invalid, rank, world)
    return CheckedRun(settings, runtime, source_model, refiner_model, extras, offline, o["model_config"], valid, invalid,
                      len(jobs), rank, world, shard_source, stdin_path)
