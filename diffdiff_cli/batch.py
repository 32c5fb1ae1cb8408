"""Batch work: many inputs, one model load, nothing redone, nothing half-written, a report at the end.

Jobs are planned and checked before any model loads (so a typo in image 900 fails at once), seeds follow
from the base seed and each image's content (so sharded or reordered runs give the same pictures), and
a run can be sharded over processes started by `accelerate launch` / `torchrun` (RANK, WORLD_SIZE).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import socket
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from diffdiff_cli.errors import DiffdiffError, InputError
from diffdiff_cli.write import TEMP_PREFIX, check_output_path

DEFAULT_NAME = "{stem}-edited.png"
STDIN = "-"
MAP_FIELDS = ("stem", "name", "parent")
NAME_FIELDS = ("stem", "name", "parent", "ext", "seed", "index")
# Per-image fields a manifest line may set (besides input, map, output).
MANIFEST_FIELDS = {"prompt": str, "negative_prompt": str, "seed": int, "strength": float, "hardness": float, "steps": int, "guidance": float}


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
    status: str = "pending"  # pending | done | skipped | failed
    error: str | None = None
    seconds: float = 0.0


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


def content_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def derive_seed(base_seed: int, digest: str) -> int:
    """An image's seed: a function of the base seed and the image's content only."""
    return int.from_bytes(hashlib.sha256(f"diffdiff-seed:{base_seed}:{digest}".encode()).digest()[:4], "big")


def read_manifest(path: str) -> list[dict]:
    """JSON Lines (one object a line) or CSV with a header row; each row needs `input`."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"--manifest {path}: no such file")
    rows: list[dict] = []
    text = source.read_text(encoding="utf-8")
    if source.suffix.lower() == ".csv":
        for number, row in enumerate(csv.DictReader(text.splitlines()), start=2):
            rows.append(_manifest_row({k: v for k, v in row.items() if k and v not in (None, "")}, path, number))
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


def _manifest_row(row: dict, path: str, number: int) -> dict:
    unknown = set(row) - {"input", "map", "output", *MANIFEST_FIELDS}
    if unknown:
        raise InputError(
            f"--manifest {path} line {number}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"known: input, map, output, {', '.join(MANIFEST_FIELDS)}"
        )
    if "input" not in row:
        raise InputError(f"--manifest {path} line {number}: needs an \"input\"")
    clean = {"input": str(row["input"])}
    for key in ("map", "output"):
        if key in row:
            clean[key] = str(row[key])
    for key, kind in MANIFEST_FIELDS.items():
        if key in row:
            try:
                clean[key] = kind(row[key])
            except (TypeError, ValueError):
                raise InputError(f"--manifest {path} line {number}: {key} {row[key]!r} is not a {kind.__name__}") from None
    return clean


@dataclass
class JobRequest:
    """What the command line asked for, before any file is looked at."""

    inputs: list[str]
    map_template: str | None
    output: str | None = None
    out_dir: str | None = None
    name_template: str = DEFAULT_NAME
    base_seed: int | None = None
    manifest: str | None = None
    skip_existing: bool = False


def plan_jobs(request: JobRequest, stdin_path: str | None = None) -> tuple[list[Job], list[Job]]:
    """Jobs to run and jobs that are invalid (with their error). Reads headers, never pixels or weights."""
    from diffdiff_cli.load import check_image_header

    rows = read_manifest(request.manifest) if request.manifest else [{"input": i} for i in request.inputs]
    if request.output is not None and len(rows) > 1:
        raise InputError(f"-o {request.output}: {len(rows)} inputs need --out-dir DIR (with --name) instead of -o")
    if sum(row["input"] == STDIN for row in rows) > 1:
        raise InputError("-: standard input can be read only once")
    base_seed = request.base_seed
    jobs, invalid, outputs = [], [], {}
    for index, row in enumerate(rows):
        name = row["input"]
        path = stdin_path if name == STDIN else name
        fields = path_fields(name)
        job = Job(index=index, input=name, path=path or name, map="", output="", seed=0, overrides=dict(row))
        try:
            if name != STDIN:
                check_image_header(path, "image")
            map_template = row.get("map") or request.map_template
            if map_template is None:
                raise InputError(f"image {name}: no map; give --map FILE or a template like 'masks/{{stem}}.png'")
            job.map = fill_template(map_template, "--map", MAP_FIELDS, **fields)
            check_image_header(job.map, "--map")
            explicit_seed = row.get("seed")
            job.seed = explicit_seed if explicit_seed is not None else derive_seed(base_seed, content_digest(job.path))
            job.output = row.get("output") or _output_for(request, fields, job)
            if job.output != STDIN:
                check_output_path(job.output, [job.path] if name != STDIN else [])
                earlier = outputs.get(os.path.abspath(job.output))
                if earlier is not None:
                    raise InputError(f"image {name}: writes {job.output}, as image {earlier} does; use {{stem}} or {{index}} in --name")
                outputs[os.path.abspath(job.output)] = name
        except InputError as e:
            job.status, job.error = "failed", str(e)
            invalid.append(job)
            continue
        jobs.append(job)
    return jobs, invalid


def _output_for(request: JobRequest, fields: dict, job: Job) -> str:
    if request.output is not None:
        return request.output
    name = fill_template(request.name_template, "--name", NAME_FIELDS, **fields, seed=job.seed, index=job.index)
    if request.out_dir is None:
        folder = fields["parent"]
    else:
        folder = request.out_dir
        if not Path(folder).is_dir():
            raise InputError(f"--out-dir {folder}: no such folder; create it first")
    return str(Path(folder) / name)


def shard(jobs: list[Job]) -> tuple[list[Job], int, int]:
    """This process's share when launched by accelerate/torchrun: every job exactly once across processes."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world <= 1:
        return jobs, 0, 1
    return [job for job in jobs if job.index % world == rank], rank, world


def _temp_owner_alive(name: str) -> bool:
    """Temporary files carry host and pid; a file from a live process (or another host) is left alone."""
    parts = name[len(TEMP_PREFIX):].split("-")
    if len(parts) < 3 or parts[0] != socket.gethostname().replace("-", "_"):
        return True
    try:
        os.kill(int(parts[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folders: set[str]) -> int:
    """Remove temporary files a killed run left in the output folders."""
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file() and not _temp_owner_alive(entry.name):
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

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)

    def line(self, rank: int, world: int) -> str:
        shard_note = f" (process {rank + 1} of {world})" if world > 1 else ""
        state = "interrupted: " if self.interrupted else ""
        return (
            f"diffdiff: {state}{self.done} done, {self.skipped} skipped, {self.failed} failed "
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


def run_jobs(
    jobs, invalid, base_settings, load, reporter, report: Report, fail_fast: bool = False, skip_existing: bool = False
) -> Summary:
    """Edit every job in turn with one model, loaded on first need. Returns the summary.

    A failing image is reported and the rest go on (unless `fail_fast`); a model that cannot be loaded
    stops the run with its own error.
    """
    from diffdiff_cli.edit import edit_file, map_changes_nothing, write_unchanged

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
    with interrupt_guard(), reporter.batch(len(todo)) as overall:
        job = None
        try:
            for job in todo:
                if fail_fast and summary.failed:
                    break
                extra = None
                unchanged = map_changes_nothing(base_settings, job.map)  # an all-black map needs no model
                if model is None and not unchanged:
                    model = load()
                    summary.model_loads += 1
                job_started = time.monotonic()
                try:
                    settings = settings_for(base_settings, job)
                    if unchanged:
                        extra = write_unchanged(settings, job.path, job.map, job.output, display_input=job.input)
                        reporter.notice(f"{job.input}: the map {job.map} is 0 everywhere, so nothing changes: the input is written as it is")
                    else:
                        extra = edit_file(model, settings, job.path, job.map, job.output, reporter, display_input=job.input)
                    job.status = "done"
                    summary.done += 1
                    where = "stdout" if job.output == STDIN else job.output
                    reporter.result(f"wrote {where} (seed {job.seed}, {time.monotonic() - job_started:.1f} s)")
                except DiffdiffError as e:
                    job.status, job.error = "failed", str(e)
                    summary.failed += 1
                    reporter.warn(f"{job.input}: {e}")
                job.seconds = time.monotonic() - job_started
                report.add(job_record(job, summary.model_loads, extra))
                overall.advance(job)
        except Interrupted:
            summary.interrupted = True
            if job is not None and job.status == "pending":
                job.status, job.error = "interrupted", "interrupted before it finished; nothing was written"
                report.add(job_record(job, summary.model_loads))
    summary.seconds = time.monotonic() - started
    return summary


def read_stdin_to_temp() -> str:
    """Standard input saved to a private temporary file, so it can be checked and read like any image."""
    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("-: standard input is empty; pipe an image in, e.g. 'cat photo.png | diffdiff edit - ...'")
    handle = tempfile.NamedTemporaryFile(prefix="diffdiff-stdin-", suffix=".img", delete=False)
    with handle:
        handle.write(data)
    return handle.name
