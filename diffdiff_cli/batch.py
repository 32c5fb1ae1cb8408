"""Batch work: many inputs, one model load, nothing redone, nothing half-written, a report at the end.

The batch policy lives here: how jobs are named and seeded, what happens to invalid ones, how a run is
sharded over processes (accelerate / torchrun: RANK, WORLD_SIZE; Slurm: SLURM_PROCID, SLURM_NTASKS and job
arrays), and how a failing image (a write error included) is reported while the others go on. Every file
a run reads or writes is checked first, before any model loads (validate.py).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import re
import signal
import socket
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffdiff_cli.errors import DiffdiffError, InputError
from diffdiff_cli.write import TEMP_PREFIX

DEFAULT_NAME = "{stem}-edited.png"
STDIN = "-"
STDIN_PREFIX = "diffdiff-stdin-"
MAP_FIELDS = ("stem", "name", "parent")
NAME_FIELDS = ("stem", "name", "parent", "ext", "seed", "index")
# Per-image fields a manifest line may set (besides input, map, output), with their type.
MANIFEST_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "strength": float, "hardness": float, "steps": int, "guidance": float}
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 .. 2^64 - 1
RANDOM_SEED = -1  # A1111's "random"


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop after abandoning the image in flight."""


@dataclass
class Job:
    index: int
    input: str  # as the user named it ("-" for stdin)
    path: str  # where to read it
    map: str
    output: str
    seed: int
    overrides: dict = field(default_factory=dict)  # per-image settings from a manifest
    status: str = "pending"  # pending | done | skipped | failed | not run
    error: str | None = None
    seconds: float = 0.0
    output_base: str | None = None  # the folder the output must stay inside (None: -o, anywhere)
    unchanged: bool | None = None  # the map is 0 everywhere (known after validation)


def fill_template(template: str, flag: str, allowed: tuple[str, ...], **values) -> str:
    """Fill {stem}-style fields; an unknown field is a usage error naming the flag."""
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in allowed:
            raise InputError(f"{flag} {template}: unknown field {{{name}}}; use {', '.join('{' + a + '}' for a in allowed)}")
    try:
        return template.format(**{k: values[k] for k in allowed if k in values})
    except (IndexError, ValueError) as e:
        raise InputError(f"{flag} {template}: {e}") from None


def path_fields(path: str) -> dict:
    if path == STDIN:
        return {"stem": "stdin", "name": "stdin", "parent": ".", "ext": ".png"}
    p = Path(path)
    return {"stem": p.stem, "name": p.name, "parent": str(p.parent), "ext": p.suffix}


# --- seeds: --seed N is seed N, as in diffusers, A1111 and ComfyUI ------------------------------------------

def check_seed(value, flag: str = "--seed") -> int | None:
    """A seed as given: 0 .. 2^64 - 1 used exactly; -1 (A1111's habit) or None = draw one; anything else refused."""
    if value is None or value == RANDOM_SEED:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{flag} {value!r}: must be a whole number in 0 .. 2^64-1, or -1 for a random seed")
    if not 0 <= value < SEED_LIMIT:
        raise InputError(f"{flag} {value}: must be in 0 .. 2^64-1 (18446744073709551615), or -1 for a random seed")
    return value


def job_seed(explicit, flag_seed: int | None) -> int:
    """An image's seed: the manifest's, else --seed (the same for every image), else a new one of its own."""
    from diffdiff_cli.edit import new_seed

    if explicit is not None:
        return explicit
    return flag_seed if flag_seed is not None else new_seed()


# --- manifests ----------------------------------------------------------------------------------------------

def read_manifest(path: str) -> list[dict]:
    """JSON Lines (one object a line) or CSV with a header row; each row needs `input`. UTF-8 (a byte-order
    mark, as spreadsheets write it, is fine); every field typed and checked."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"--manifest {path}: no such file")
    rows: list[dict] = []
    data = source.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"--manifest {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8") from None
    if source.suffix.lower() == ".csv":
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if header is None:
            raise InputError(f"--manifest {path}: no jobs in it")
        header = [name.strip() for name in header]
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                raise InputError(
                    f"--manifest {path} line {number}: {len(cells)} cells but the header names {len(header)} columns; "
                    f"quote cells that hold commas"
                )
            row = {k: v for k, v in zip(header, cells) if k and v != ""}
            rows.append(_manifest_row(row, path, number, from_text=True))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"--manifest {path} line {number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"--manifest {path} line {number}: expected a JSON object")
            rows.append(_manifest_row(row, path, number))
    if not rows:
        raise InputError(f"--manifest {path}: no jobs in it")
    return rows


_INTEGER = re.compile(r"^[+-]?\d+$")


def _typed(key: str, value, kind, from_text: bool):
    """A manifest value of the field's type, or None when it is not one (1.5 is no seed, true no step count)."""
    if kind is str:
        return value if isinstance(value, str) else None
    if from_text:  # a CSV cell: text that must spell the number
        text = value.strip()
        if kind is int:
            return int(text) if _INTEGER.match(text) else None
        try:
            return float(text)
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) else None


def _manifest_row(row: dict, path: str, number: int, from_text: bool = False) -> dict:
    where = f"--manifest {path} line {number}"
    unknown = set(row) - {"input", "map", "output", *MANIFEST_FIELDS}
    if unknown:
        raise InputError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: input, map, output, {', '.join(MANIFEST_FIELDS)}"
        )
    if "input" not in row:
        raise InputError(f"{where}: needs an \"input\"")
    clean = {}
    for key in ("input", "map", "output"):
        if key in row:
            if not isinstance(row[key], str) or not row[key]:
                raise InputError(f"{where}: {key} {row[key]!r} must be a file name (text)")
            clean[key] = row[key]
    for key, kind in MANIFEST_FIELDS.items():
        if key in row:
            value = _typed(key, row[key], kind, from_text)
            if value is None:
                what = {str: "text", int: "whole number", float: "number"}[kind]
                raise InputError(f"{where}: {key} {row[key]!r} is not a {what}")
            clean[key] = value
    if "seed" in clean:
        clean["seed"] = check_seed(clean["seed"], f"{where}: seed")
        if clean["seed"] is None:
            del clean["seed"]  # -1: a random seed, drawn like any other
    clean["_line"] = number  # for messages about this line
    return clean


@dataclass
class JobRequest:
    """What the command line asked for, before any file is looked at."""

    inputs: list[str]
    map_template: str | None
    output: str | None = None
    out_dir: str | None = None
    name_template: str = DEFAULT_NAME
    seed: int | None = None  # --seed: the same for every image; None: each draws its own
    manifest: str | None = None
    skip_existing: bool = False
    allow_outside_out_dir: bool = False


def plan_jobs(request: JobRequest, stdin_path: str | None = None) -> list[Job]:
    """The jobs of a run: inputs, maps, seeds and output names. Looks at no file (validate.py does).

    A job whose name cannot be made carries its error (status "failed") for validation to report.
    """
    rows = read_manifest(request.manifest) if request.manifest else [{"input": i} for i in request.inputs]
    if request.output is not None and len(rows) > 1:
        raise InputError(f"-o {request.output}: {len(rows)} inputs need --out-dir DIR (with --name) instead of -o")
    if sum(row["input"] == STDIN for row in rows) > 1:
        raise InputError("-: standard input can be read only once")
    if request.out_dir is not None and not Path(request.out_dir).is_dir():
        raise InputError(f"--out-dir {request.out_dir}: no such folder; create it first")
    jobs = []
    for index, row in enumerate(rows):
        name = row["input"]
        fields = path_fields(name)
        job = Job(index=index, input=name, path=(stdin_path or name) if name == STDIN else name, map="", output="",
                  seed=job_seed(row.get("seed"), request.seed), overrides=dict(row))
        try:
            map_template = row.get("map") or request.map_template
            if map_template is None:
                raise InputError(f"image {name}: no map; give --map FILE or a template like 'masks/{{stem}}.png'")
            job.map = fill_template(map_template, "--map", MAP_FIELDS, **fields)
            job.output, job.output_base = _output_for(request, fields, job, row.get("output"))
        except InputError as e:
            job.status, job.error = "failed", str(e)
        jobs.append(job)
    return jobs


def _output_for(request: JobRequest, fields: dict, job: Job, listed: str | None) -> tuple[str, str | None]:
    """The output name and the folder it must stay inside: --out-dir, else the image's own folder (--name
    beside the image) or the current folder (a manifest's `output`); None for -o, which names one file."""
    if request.output is not None:
        return request.output, None
    if listed is not None:
        return listed, request.out_dir or "."
    name = fill_template(request.name_template, "--name", NAME_FIELDS, **fields, seed=job.seed, index=job.index)
    folder = request.out_dir if request.out_dir is not None else fields["parent"]
    return str(Path(folder) / name), folder


def split_invalid(jobs: list[Job], skip_invalid: bool) -> tuple[list[Job], list[Job]]:
    """(valid, invalid). Without --skip-invalid one invalid job stops the run before the model loads."""
    valid = [job for job in jobs if job.status != "failed"]
    invalid = [job for job in jobs if job.status == "failed"]
    if invalid and not skip_invalid:
        more = f" ({len(invalid)} of {len(jobs)} inputs are bad; nothing was run; --skip-invalid runs the rest)" if len(jobs) > 1 else ""
        raise InputError(invalid[0].error + more)
    return valid, invalid


# --- sharding over processes: accelerate / torchrun, Slurm tasks and Slurm job arrays -------------------------

def _env_int(env, name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r}: expected a whole number") from None


def shard_position(env=None) -> tuple[int, int, str]:
    """(rank, world, where from) of this process.

    RANK / WORLD_SIZE (accelerate launch, torchrun) first; else Slurm: SLURM_PROCID of SLURM_NTASKS (the tasks
    of one srun) and SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT (a job array, counted from
    SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP); both together split each array task's share
    between its tasks.
    """
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE")
    if world is not None and world > 1:
        return _checked(_env_int(env, "RANK") or 0, world, "RANK/WORLD_SIZE")
    tasks = max(_env_int(env, "SLURM_NTASKS") or 1, 1)
    task = (_env_int(env, "SLURM_PROCID") or 0) if tasks > 1 else 0
    _checked(task, tasks, "SLURM_PROCID/SLURM_NTASKS")
    count = max(_env_int(env, "SLURM_ARRAY_TASK_COUNT") or 1, 1)
    array = 0
    if count > 1:
        ident = _env_int(env, "SLURM_ARRAY_TASK_ID")
        if ident is None:
            raise InputError("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID is not")
        step = max(_env_int(env, "SLURM_ARRAY_TASK_STEP") or 1, 1)
        array = (ident - (_env_int(env, "SLURM_ARRAY_TASK_MIN") or 0)) // step
        _checked(array, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    used = [name for name, on in (("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT", count > 1), ("SLURM_PROCID/SLURM_NTASKS", tasks > 1)) if on]
    return array * tasks + task, count * tasks, " and ".join(used)


def _checked(rank: int, world: int, source: str) -> tuple[int, int, str]:
    if world > 1 and not 0 <= rank < world:
        raise InputError(f"{source}: process {rank} of {world} is out of range")
    return rank, world, source


def shard(jobs: list[Job], rank: int | None = None, world: int | None = None) -> tuple[list[Job], int, int]:
    """This process's share: every job exactly once across processes (every world-th job by position in the
    checked list, so the outputs equal a single-process run's)."""
    if rank is None or world is None:
        rank, world, _ = shard_position()
    if world <= 1:
        return jobs, 0, 1
    return [job for job in jobs if job.index % world == rank], rank, world


def _temp_owner_alive(name: str, prefix: str = TEMP_PREFIX) -> bool:
    """Temporary files carry host and pid; a file from a live process (or another host) is left alone."""
    parts = name[len(prefix):].split("-")
    if len(parts) < 3 or parts[0] != socket.gethostname().replace("-", "_"):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folders: set[str], prefix: str = TEMP_PREFIX) -> int:
    """Remove temporary files a killed run left in the output folders (or, with STDIN_PREFIX, the copies
    of standard input it left in the system's temporary folder)."""
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file() and not _temp_owner_alive(entry.name, prefix):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass
    return removed


class interrupt_guard:
    """Turn SIGINT and SIGTERM into `Interrupted` while a batch runs."""

    def __enter__(self):
        self._previous = {}

        def handler(signum, frame):
            raise Interrupted(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    model_loads: int = 0
    not_run: int = 0  # left out after the disk filled up
    stopped: str | None = None  # why the run stopped early

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed or self.not_run else 0)

    def line(self, rank: int, world: int) -> str:
        shard_note = f" (process {rank + 1} of {world})" if world > 1 else ""
        state = "interrupted: " if self.interrupted else (f"stopped ({self.stopped}): " if self.stopped else "")
        not_run = f", {self.not_run} not run" if self.not_run else ""
        return (
            f"diffdiff: {state}{self.done} done, {self.skipped} skipped, {self.failed} failed{not_run} "
            f"in {self.seconds:.1f} s{shard_note}"
        )


class Report:
    """One JSON object per image, appended as each finishes (one write a line, so shards can share a file)."""

    def __init__(self, path: str | None, to_stdout: bool):
        self.to_stdout = to_stdout
        self._fd = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            except OSError as e:
                raise InputError(f"--report {path}: cannot write: {e.strerror}") from None

    def add(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._fd is not None:
            os.write(self._fd, line.encode())
        if self.to_stdout:
            sys.stdout.write(line)
            sys.stdout.flush()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def job_record(job: Job, model_loads: int, extra: dict | None = None) -> dict:
    record = {
        "index": job.index,
        "input": job.input,
        "map": job.map or None,
        "output": job.output or None,
        "seed": job.seed,
        "status": job.status,
        "error": job.error,
        "seconds": round(job.seconds, 3),
        "model_loads": model_loads,
    }
    if extra:
        record.update({k: v for k, v in extra.items() if k not in record})
    return record


def settings_for(base, job: Job):
    """The job's EditSettings: the command line's, with the manifest line's fields on top."""
    changes = {k: v for k, v in job.overrides.items() if k in MANIFEST_FIELDS}
    changes["seed"] = job.seed
    settings = dataclasses.replace(base, **changes)
    settings.validate()
    return settings


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _failure(job: Job, error: Exception) -> str:
    """One line for an image's failure; never the name of an internal temporary file."""
    if isinstance(error, DiffdiffError):
        return str(error)
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
        name = str(error.filename) if error.filename else None
        if name is None or Path(name).name.startswith(TEMP_PREFIX) or name == job.output:
            return f"could not write {'standard output' if job.output == STDIN else job.output}: {reason}"
        return f"{job.input if name == job.path else name}: {reason}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''} (rerun with --debug for the traceback)"


def parse_batch_size(text) -> int | str:
    """`--batch-size`: a whole number of at least 1, or "auto" (see `auto_batch_size`)."""
    if isinstance(text, int):
        value = text
    elif str(text).strip().lower() == "auto":
        return "auto"
    else:
        try:
            value = int(str(text))
        except ValueError:
            raise InputError(f"--batch-size {text}: give a whole number of at least 1, or auto") from None
    if value < 1:
        raise InputError(f"--batch-size {value}: must be at least 1 (or auto)")
    return value


# --batch-size auto on CUDA: activation memory per image, per million working pixels, by family (GiB, fp16,
# guidance doubling included), measured loosely on real-size models; half the free memory is spent on it.
AUTO_GIB_PER_MEGAPIXEL = {"sd": 1.5, "sdxl": 1.5}
AUTO_GIB_PER_MEGAPIXEL_DEFAULT = 3.0  # transformer families: longer sequences, text tokens in every block
AUTO_MAX_BATCH = 16


def auto_batch_size(model, work_size: tuple[int, int]) -> int:
    """`--batch-size auto`: 1 on the CPU (batching saves little there, and memory is shared); on CUDA as
    many images of this working size as half the free GPU memory holds by the table above, 1 to 16."""
    import torch

    device = getattr(model.pipe, "_execution_device", None)
    if device is None or torch.device(device).type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_image = AUTO_GIB_PER_MEGAPIXEL.get(model.family.name, AUTO_GIB_PER_MEGAPIXEL_DEFAULT) * work_size[0] * work_size[1] / 1e6
    return max(1, min(AUTO_MAX_BATCH, int(0.5 * free / 2**30 / max(per_image, 1e-3))))


def run_jobs(
    jobs, invalid, base_settings, load, reporter, report: Report, fail_fast: bool = False, skip_existing: bool = False,
    debug: bool = False, batch_size: int | str = 1, caches=None,
) -> Summary:
    """Edit every job with one model, loaded on first need. Returns the summary.

    Each image's failure is that image's: it is reported and the rest go on (unless `fail_fast`). A full
    disk stops the run (the images left are reported as not run); a model that cannot be loaded stops it
    with its own error. An interrupted image, or one whose write fails, leaves no file. Jobs are prepared (image and map loaded, run planned) in order; jobs with the same batch key
    (edit.PreparedEdit.batch_key) wait until `batch_size` of them are ready and then share their denoiser
    calls (edit.denoise_edits). `caches` (caches.RunCaches) keeps maps and prompt embeddings across the run.
    """
    from diffdiff_cli.caches import RunCaches
    from diffdiff_cli.edit import denoise_edits, map_changes_nothing, prepare_edit, write_edit, write_unchanged

    caches = caches if caches is not None else RunCaches()
    batch_size = parse_batch_size(batch_size)
    summary = Summary(failed=len(invalid))
    started = time.monotonic()
    for job in invalid:
        report.add(job_record(job, summary.model_loads))
        reporter.warn(job.error)
    clean_stale_temporaries({str(Path(job.output).parent) for job in jobs if job.output != STDIN})
    model = None
    todo = []
    for job in jobs:
        if job.output != STDIN and skip_existing and Path(job.output).exists():
            job.status = "skipped"
            summary.skipped += 1
            report.add(job_record(job, summary.model_loads))
        else:
            todo.append(job)

    pending: dict = {}  # batch key -> [(job, prepared edit)], in the order they came
    limits: dict = {}

    def finish(job, job_started, extra=None, error=None):
        job.seconds = time.monotonic() - job_started
        if error is None:
            job.status = "done"
            summary.done += 1
            where = "stdout" if job.output == STDIN else job.output
            reporter.result(f"wrote {where} (seed {job.seed}, {job.seconds:.1f} s)")
        else:
            if debug and not isinstance(error, DiffdiffError):
                import traceback

                traceback.print_exception(error)
            job.status, job.error = "failed", _failure(job, error)
            summary.failed += 1
            reporter.warn(f"{job.input}: {job.error}")
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                summary.stopped = "the disk is full"
        report.add(job_record(job, summary.model_loads, {**(extra or {}), **caches.counters()}))
        overall.advance(job)

    def flush(key):
        group = pending[key]
        results = denoise_edits(model, [item for _, item in group], reporter, caches)
        for (job, item), result in zip(group, results):
            if isinstance(result, Exception):
                finish(job, item.started, error=result)
                continue
            try:
                extra = write_edit(model, item, result, job.output, display_input=job.input)
                finish(job, item.started, {**extra, "batch": len(group)})
            except Interrupted:
                raise
            except Exception as e:  # this image's failure only (a full disk stops the run after it)
                finish(job, item.started, error=e)
        del pending[key]

    with interrupt_guard(), reporter.batch(len(todo)) as overall:
        job = None
        try:
            for job in todo:
                if (fail_fast and summary.failed) or summary.stopped:
                    break
                nothing = job.unchanged if job.unchanged is not None else map_changes_nothing(base_settings, job.map, caches)
                if model is None and not nothing:
                    model = load()
                    summary.model_loads += 1
                job_started = time.monotonic()
                try:
                    settings = settings_for(base_settings, job)
                    if nothing:
                        extra = write_unchanged(settings, job.path, job.map, job.output, display_input=job.input)
                        reporter.notice(f"{job.input}: the map {job.map} is 0 everywhere, so nothing changes: the input is written as it is")
                        finish(job, job_started, extra)
                        continue
                    item = prepare_edit(model, settings, job.path, job.map, reporter, job.input, caches)
                except Interrupted:
                    raise
                except Exception as e:
                    finish(job, job_started, error=e)
                    continue
                key = item.batch_key(model.family)
                if key not in limits:
                    limits[key] = auto_batch_size(model, item.work.size) if batch_size == "auto" else batch_size
                pending.setdefault(key, []).append((job, item))
                if len(pending[key]) >= limits[key]:
                    flush(key)
                elif sum(len(group) for group in pending.values()) >= 2 * max(limits.values()):
                    flush(max(pending, key=lambda k: len(pending[k])))  # too many waiting: run the fullest group
                job = None
            job = None
            # Jobs waiting in a group came before the one that stopped the run: they run (as at batch 1, where they
            # would be done already), unless the disk is full.
            while pending and not summary.stopped:
                flush(next(iter(pending)))
        except Interrupted:
            summary.interrupted = True
            waiting = [j for group in pending.values() for j, _ in group]
            if job is not None and job.status == "pending" and job not in waiting:
                waiting.append(job)
            for stopped in waiting:
                if stopped.status == "pending":
                    stopped.status, stopped.error = "interrupted", "interrupted before it finished; nothing was written"
                    report.add(job_record(stopped, summary.model_loads))
    if summary.stopped:
        for left in todo:
            if left.status == "pending":
                left.status, left.error = "not run", f"not run: {summary.stopped}"
                summary.not_run += 1
                report.add(job_record(left, summary.model_loads))
    summary.seconds = time.monotonic() - started
    return summary


def stdin_prefix() -> str:
    """Copies of standard input name host and process, as output temporaries do, so stale ones can be told apart."""
    return f"{STDIN_PREFIX}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def read_stdin_to_temp() -> str:
    """Standard input saved to a private temporary file, so it can be checked and read like any image.

    Copies that killed runs left behind (their process gone) are removed first.
    """
    clean_stale_temporaries({tempfile.gettempdir()}, STDIN_PREFIX)
    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("-: standard input is empty; pipe an image in, e.g. 'cat photo.png | diffdiff edit - ...'")
    handle = tempfile.NamedTemporaryFile(prefix=stdin_prefix(), suffix=".img", delete=False)
    with handle:
        handle.write(data)
    return handle.name


def run_edit(checked, reporter, report_path: str | None = None, json_out: bool = False, fail_fast: bool = False,
             skip_existing: bool = False, debug: bool = False, batch_size: int | str = 1) -> Summary:
    """Run a checked `edit` (validate.check_edit): one model load, on first need, for all its jobs."""
    from diffdiff_cli.models.load import load_model

    model_label = checked.settings.model
    if checked.world > 1:
        reporter.notice(f"process {checked.rank + 1} of {checked.world} ({checked.shard_source}): "
                        f"{len(checked.jobs) + len(checked.invalid)} of {checked.total} images")

    def load():
        reporter.notice(f"loading model {model_label}")
        if model_label.startswith("tiny-"):
            reporter.notice(f"{model_label} has random weights: it shows the mechanics, not pictures; try --model demo or a real checkpoint (sd15, sdxl, ...)")
        model = load_model(checked.source_model, offline=checked.offline, model_config=checked.model_config, runtime=checked.runtime,
                           refiner=checked.refiner_model, extras=checked.extras)
        if checked.runtime.compile:
            reporter.notice("--compile: the first denoiser call at each new batch and size compiles (tens of seconds to "
                            "minutes); the calls after it run faster")
        return model

    report = Report(report_path, to_stdout=json_out)
    try:
        return run_jobs(checked.jobs, checked.invalid, checked.settings, load, reporter, report, fail_fast=fail_fast,
                        skip_existing=skip_existing, debug=debug, batch_size=batch_size)
    finally:
        report.close()
