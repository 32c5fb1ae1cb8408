"""Bad input is caught before the model loads (issue 15): exit 2, one line naming the file or flag, no
traceback, nothing written or changed, no model loaded. Through the installed entry point, as users run it.

Most tests here never load a model: the table's runs all end in validation, and the positive checks use an
all-black map, which writes its input unchanged without a model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_map, save_rgb

DIFFDIFF = str(Path(sys.executable).parent / "diffdiff")
REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd, input=None, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([DIFFDIFF, *map(str, args)], capture_output=True, cwd=cwd, env=env, timeout=300,
                          input=input if isinstance(input, bytes) or input is None else input.encode())


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _truncated(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) * 2 // 3])  # the header reads, the pixels do not


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    save_rgb(d / "photo.png", 64, 64)
    save_rgb(d / "other.png", 64, 64, seed=1)
    save_rgb(d / "big.png", 256, 256, seed=2)
    save_map(d / "gradient.png", np.tile(np.linspace(0, 1, 64), (64, 1)))
    save_map(d / "small.png", np.ones((32, 32)))
    save_map(d / "black.png", np.zeros((64, 64)))
    _truncated(d / "big.png", d / "truncated.png")
    save_map(d / "bigmap.png", np.tile(np.linspace(0, 1, 256), (256, 1)) ** 3)
    _truncated(d / "bigmap.png", d / "truncated-map.png")
    nan = np.full((64, 64), 0.5, dtype=np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(d / "nan.tif")
    Image.fromarray(np.full((64, 64), 3.0, dtype=np.float32), mode="F").save(d / "above.tif")
    (d / "bomb.png").write_bytes(_png_declaring(60000, 60000))
    (d / "notes.txt").write_text("this is text, not an image\n")
    (d / "sub").mkdir()
    (d / "edited").mkdir()
    rows = {
        "strength5": {"strength": 5}, "seed-3": {"seed": -3}, "seed1.5": {"seed": 1.5}, "stepstrue": {"steps": True},
        "outside": {"output": "../escape.png"},
    }
    for name, extra in rows.items():
        _jsonl(d / f"{name}.jsonl", [{"input": "photo.png", "map": "gradient.png", **extra}])
    _jsonl(d / "clobber.jsonl", [{"input": "photo.png", "map": "gradient.png", "output": "other.png"},
                                 {"input": "other.png", "map": "gradient.png", "output": "edited/o.png"}])
    (d / "extra.csv").write_text("input,map\nphoto.png,gradient.png,surprise\n")
    (d / "nan.csv").write_text("input,map,guidance\nphoto.png,gradient.png,nan\n")
    (d / "latin1.jsonl").write_bytes('{"input": "photo.png", "prompt": "caf\xe9"}\n'.encode("latin-1"))
    return d


# case: (arguments after `edit`, replacing the defaults; what the one line must name)
DEFAULTS = {"images": ["photo.png"], "--map": "gradient.png", "--prompt": "x", "-o": "result.png", "--steps": "2"}
CASES = {
    "truncated image": ({"images": ["truncated.png"], "--map": "bigmap.png"}, "truncated.png"),
    "truncated map": ({"images": ["big.png"], "--map": "truncated-map.png"}, "truncated-map.png"),
    "strict size, map of another size": ({"--map": "small.png", "--strict-size": True}, "small.png"),
    "float map with NaN": ({"--map": "nan.tif"}, "nan.tif"),
    "float map above 1": ({"--map": "above.tif"}, "above.tif"),
    "guidance inf": ({"--guidance": "inf"}, "--guidance"),
    "guidance nan": ({"--guidance": "nan"}, "--guidance"),
    "hardness nan": ({"--hardness": "nan"}, "--hardness"),
    "strength too small for any step": ({"--strength": "0.01"}, "--strength"),
    "steps beyond the training timesteps": ({"--steps": "100000"}, "--steps"),
    "seed -5": ({"--seed": "-5"}, "--seed"),
    "seed 2^64": ({"--seed": str(2**64)}, "--seed"),
    "text piped to -": ({"images": ["-"], "stdin": "notes.txt"}, "-:"),
    "manifest strength 5": ({"images": [], "--manifest": "strength5.jsonl", "-o": None, "--out-dir": "edited"}, "strength 5"),
    "manifest seed -3": ({"images": [], "--manifest": "seed-3.jsonl", "-o": None, "--out-dir": "edited"}, "seed -3"),
    "manifest seed 1.5": ({"images": [], "--manifest": "seed1.5.jsonl", "-o": None, "--out-dir": "edited"}, "seed 1.5"),
    "manifest steps true": ({"images": [], "--manifest": "stepstrue.jsonl", "-o": None, "--out-dir": "edited"}, "steps True"),
    "manifest guidance nan (csv)": ({"images": [], "--manifest": "nan.csv", "-o": None, "--out-dir": "edited"}, "guidance"),
    "csv row with extra cells": ({"images": [], "--manifest": "extra.csv", "-o": None, "--out-dir": "edited"}, "extra.csv line 2"),
    "manifest not UTF-8": ({"images": [], "--manifest": "latin1.jsonl", "-o": None, "--out-dir": "edited"}, "UTF-8"),
    "decompression bomb": ({"images": ["bomb.png"]}, "--max-pixels"),
    "decompression bomb as map": ({"--map": "bomb.png"}, "60000x60000"),
    "-o is the map": ({"-o": "gradient.png"}, "gradient.png"),
    "-o is the input": ({"-o": "photo.png"}, "photo.png"),
    "output is another input of the run": ({"images": [], "--manifest": "clobber.jsonl", "-o": None, "--out-dir": "."}, "other.png"),
    "--name outside --out-dir": ({"images": ["photo.png", "other.png"], "-o": None, "--out-dir": "edited", "--name": "../x-{stem}.png"}, "--allow-outside-out-dir"),
    "absolute --name": ({"images": ["photo.png", "other.png"], "-o": None, "--out-dir": "edited", "--name": "/tmp/x-{stem}.png"}, "--allow-outside-out-dir"),
    "--name outside the image's folder": ({"images": ["photo.png"], "-o": None, "--name": "../x-{stem}.png"}, "outside"),
    "manifest output outside --out-dir": ({"images": [], "--manifest": "outside.jsonl", "-o": None, "--out-dir": "edited"}, "escape.png"),
    "negative --max-pixels": ({"--max-pixels": "-1"}, "--max-pixels"),
}


def _args(case: dict) -> tuple[list[str], bytes | None]:
    options = {**DEFAULTS, **case}
    args = ["edit", *options.pop("images")]
    stdin = options.pop("stdin", None)
    for flag, value in options.items():
        if value is True:
            args.append(flag)
        elif value is not None:
            args += [flag, value]
    return args, stdin


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.parent.rglob("*")) if p.is_file() and folder.parent in p.parents}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_before_the_model_loads(folder, case):
    options, named = CASES[case]
    args, stdin = _args(options)
    before = _snapshot(folder)
    done = run(*args, cwd=folder, input=(folder / stdin).read_bytes() if stdin else None)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffdiff: error:"), stderr
    assert named in lines[0], lines[0]
    assert "Traceback" not in stderr and "loading model" not in stderr  # the model was never loaded
    assert "diffdiff-stdin-" not in stderr and "/tmp/" not in lines[0].replace("/tmp/x-", "")  # no internal temp path
    assert _snapshot(folder) == before  # nothing written, nothing changed
    assert not (folder.parent / "escape.png").exists() and not Path("/tmp/x-photo.png").exists()


def test_the_table_covers_every_case_of_the_issue():
    assert len(CASES) >= 29


def test_debug_keeps_the_exit_code_and_adds_the_traceback(folder):
    done = run("--debug", "edit", "photo.png", "--map", "gradient.png", "-p", "x", "--guidance", "nan", cwd=folder)
    stderr = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" in stderr and stderr.strip().splitlines()[-1].startswith("diffdiff: error: --guidance")


def test_max_pixels_lets_a_trusted_large_image_through(folder):
    done = run("edit", "big.png", "--map", "black.png", "-p", "x", "-o", "sub/big-out.png", "--max-pixels", "4096", cwd=folder)
    assert done.returncode == 2 and "65536" in done.stderr.decode()
    allowed = run("edit", "big.png", "--map", "black.png", "-p", "x", "-o", "sub/big-out.png", "--max-pixels", "65536", cwd=folder)
    assert allowed.returncode == 0, allowed.stderr.decode()


def test_allow_outside_out_dir_is_the_explicit_way_out(folder):
    done = run("edit", "photo.png", "--map", "black.png", "-p", "x", "--out-dir", "edited", "--name", "../sub/{stem}-out.png",
               "--allow-outside-out-dir", cwd=folder)
    assert done.returncode == 0, done.stderr.decode()
    assert (folder / "sub" / "photo-out.png").is_file()


def test_csv_with_a_byte_order_mark_is_accepted(folder, tmp_path):
    save_rgb(tmp_path / "a.png")
    save_map(tmp_path / "m.png", np.zeros((64, 64)))
    (tmp_path / "jobs.csv").write_bytes("\ufeffinput,map,seed\na.png,m.png,5\n".encode("utf-8"))
    done = run("edit", "--manifest", "jobs.csv", "-p", "x", "--out-dir", ".", "--report", "r.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["status"] == "done" and record["seed"] == 5 and (tmp_path / "a-edited.png").is_file()


def test_a_cmyk_jpeg_is_converted_up_front(tmp_path):
    rgb = Image.open(save_rgb(tmp_path / "rgb.png"))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    save_map(tmp_path / "m.png", np.zeros((64, 64)))
    done = run("edit", "cmyk.jpg", "--map", "m.png", "-p", "x", "-o", "out.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGB" and out.size == (64, 64)


def test_stale_stdin_copies_of_killed_runs_are_removed(tmp_path):
    import socket
    import tempfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace("-", "_")
    stale = Path(tempfile.gettempdir()) / f"diffdiff-stdin-{host}-{dead.pid}-abc.img"
    stale.write_bytes(b"left by kill -9")
    save_rgb(tmp_path / "a.png")
    save_map(tmp_path / "m.png", np.zeros((64, 64)))
    done = run("edit", "-", "--map", "m.png", "-p", "x", "-o", "out.png", cwd=tmp_path, input=(tmp_path / "a.png").read_bytes())
    assert done.returncode == 0, done.stderr.decode()
    assert not stale.exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"diffdiff-stdin-{host}-*-*.img")) or all(
        p.stat().st_mtime < time.time() - 1 for p in Path(tempfile.gettempdir()).glob(f"diffdiff-stdin-{host}-*.img"))


def test_a_hub_id_without_network_fails_once_and_fast(folder):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(folder / "sub" / "hf"), OMP_NUM_THREADS="1")
    started = time.monotonic()
    done = subprocess.run([DIFFDIFF, "edit", "photo.png", "--map", "gradient.png", "-p", "x", "-o", "sub/h.png",
                           "--model", "someone/not-cached"], capture_output=True, text=True, cwd=folder, env=env, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "someone/not-cached" in lines[0] and "cannot be reached" in lines[0], done.stderr
    assert seconds < 10  # one probe, no retries (~1 s; the machine may be busy)


def test_the_default_model_is_demo():
    from diffdiff_cli.cli_options import DEFAULT_MAX_PIXELS, DEFAULT_MODEL
    from diffdiff_cli.load import DEFAULT_MAX_PIXELS as PILLOWS

    assert DEFAULT_MODEL == "demo" and DEFAULT_MAX_PIXELS == PILLOWS
    env = {k: v for k, v in os.environ.items() if k != "DIFFDIFF_MODEL"}
    done = subprocess.run([DIFFDIFF, "edit", "--help"], capture_output=True, text=True, env={**env, "COLUMNS": "200"})
    assert "[default: demo]" in done.stdout
    for panel in ("Map", "Model", "Sampling", "Output", "Batch", "Performance"):
        assert f"─ {panel} " in done.stdout
    epilog = done.stdout.rsplit("╰", 1)[-1]  # after the last panel: the examples
    assert "Examples" in epilog and epilog.count("diffdiff edit") == 3


def _main(capsys, *args) -> tuple[int, str]:
    from diffdiff_cli.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*map(str, args)])
    return exit_.value.code, capsys.readouterr().err


def _failing_fsync(error_number: int, times: int):
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] <= times:
            raise OSError(error_number, os.strerror(error_number))
        return real(fd)

    return fsync


def _batch_of_three(tmp_path: Path) -> list[str]:
    for i in range(3):
        save_rgb(tmp_path / f"p{i}.png", seed=i)
    save_map(tmp_path / "black.png", np.zeros((64, 64)))  # writes the input unchanged: no model, the write is the test
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p0-edited.png").write_bytes(b"an earlier output")
    return [f"p{i}.png" for i in range(3)]


def test_disk_full_fails_that_image_stops_with_the_summary_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    photos = _batch_of_three(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("diffdiff_cli.write.os.fsync", _failing_fsync(errno.ENOSPC, times=99))
    code, err = _main(capsys, "edit", *photos, "--map", "black.png", "-p", "x", "--out-dir", "out", "--report", "r.jsonl")
    assert code == 1, err
    assert "No space left on device" in err and "stopped (the disk is full): 0 done, 0 skipped, 1 failed, 2 not run" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["p0-edited.png"]  # no temporary, no partial file
    assert (tmp_path / "out" / "p0-edited.png").read_bytes() == b"an earlier output"  # the original untouched
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed", "not run", "not run"]
    assert "could not write out/p0-edited.png: No space left on device" == records[0]["error"]


def test_another_write_error_fails_that_image_and_the_batch_goes_on(tmp_path, capsys, monkeypatch):
    photos = _batch_of_three(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("diffdiff_cli.write.os.fsync", _failing_fsync(errno.EIO, times=1))
    code, err = _main(capsys, "edit", *photos, "--map", "black.png", "-p", "x", "--out-dir", "out")
    assert code == 1 and "2 done, 0 skipped, 1 failed" in err, err
    assert (tmp_path / "out" / "p0-edited.png").read_bytes() == b"an earlier output"
    assert sorted(os.listdir(tmp_path / "out")) == ["p0-edited.png", "p1-edited.png", "p2-edited.png"]


def test_seed_42_is_diffusers_img2img_with_generator_42(tmp_path, tiny_model):
    """`diffdiff edit one.png --map white.png --seed 42` (one input, no manifest) is diffusers' img2img with
    torch.Generator("cpu").manual_seed(42), and says Seed: 42."""
    import torch

    photo = save_rgb(tmp_path / "one.png")
    save_map(tmp_path / "white.png", np.ones((64, 64)))
    done = run("edit", "one.png", "--map", "white.png", "-p", "a red circle", "--seed", "42", "--steps", "4",
               "--scheduler", "euler", "--fit", "full", "-o", "out.png", "--model", "tiny-sd15", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    pipe = tiny_model.pipe
    from diffdiff_cli.schedulers import make_scheduler

    pipe.scheduler = make_scheduler(tiny_model.scheduler_config, "euler", 42)
    expected = pipe("a red circle", image=Image.open(photo), strength=1.0, num_inference_steps=4, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(42), output_type="np").images[0]
    expected = (expected * 255).round().astype(int)
    with Image.open(tmp_path / "out.png") as out:
        got = np.asarray(out).astype(int)
        assert "Seed: 42," in out.info["parameters"] and json.loads(out.info["diffdiff"])["seed"] == 42
    assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, (2, 4)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, (5, 6)),
    ({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, (0, 2)),  # torchrun under srun: torchrun's
])
def test_shard_position_from_accelerate_torchrun_and_slurm(env, expected):
    from diffdiff_cli.batch import shard_position

    rank, world, _ = shard_position(env)
    assert (rank, world) == expected


def test_slurm_array_tasks_do_each_image_once(tmp_path):
    for i in range(5):
        save_rgb(tmp_path / f"p{i}.png", seed=i)
    save_map(tmp_path / "black.png", np.zeros((64, 64)))
    (tmp_path / "out").mkdir()
    photos = [f"p{i}.png" for i in range(5)]
    for task in range(1, 3):  # sbatch --array=1-2
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
        done = run("edit", *photos, "--map", "black.png", "-p", "x", "--out-dir", "out", "--report", "r.jsonl", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr.decode()
        assert f"process {task} of 2" in done.stderr.decode()
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in records) == photos
    assert sorted(os.listdir(tmp_path / "out")) == [f"p{i}-edited.png" for i in range(5)]


def test_like_finds_the_map_from_another_folder_and_records_the_refiner(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_rgb(tmp_path / "a" / "p.png")
    save_map(tmp_path / "a" / "m.png", np.zeros((64, 64)))
    first = run("edit", "p.png", "--map", "m.png", "-p", "x", "-o", "first.png", "--seed", "9", cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr.decode()
    again = run("edit", "--like", "../a/first.png", "../a/p.png", "-o", "again.png", cwd=tmp_path / "b")
    assert again.returncode == 0, again.stderr.decode()
    with Image.open(tmp_path / "b" / "again.png") as image:
        record = json.loads(image.info["diffdiff"])
    assert record["map_path"] == str((tmp_path / "a" / "m.png").resolve()) and record["seed"] == 9
    assert "refiner" in record


def test_examples_makefile_needs_no_activated_venv(tmp_path):
    """From a clone: `make -C examples` uses the repository's .venv (setting it up when missing)."""
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(REPO / "examples", clone / "examples", ignore=shutil.ignore_patterns("edited"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(PATH="/usr/bin:/bin", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    planned = subprocess.run(["make", "-n", "-C", str(clone / "examples")], capture_output=True, text=True, env=env)
    assert f"make -C {clone} install" in planned.stdout  # no venv yet: it is set up first
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "diffdiff").symlink_to(DIFFDIFF)
    done = subprocess.run(["make", "-C", str(clone / "examples"), "STEPS=2", "FIT=full"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "install" not in done.stdout and "--model demo" in done.stdout
    assert sorted(p.name for p in (clone / "examples" / "edited").iterdir()) == ["ridge.png", "valley.png"]


def test_progress_counts_the_steps_asked_for_and_shows_the_plms_warm_up():
    import io

    from diffdiff_cli.models.builtin import builtin_configs
    from diffdiff_cli.families import FAMILIES
    from diffdiff_cli.plan import plan_schedule
    from diffdiff_cli.progress import Reporter, StepProgress

    family, config, _ = builtin_configs("tiny-sd15")
    lines = {}
    for scheduler in (None, "heun"):  # the model's own PNDM: 11 evaluations for 10 steps; Heun: 19
        plan = plan_schedule(FAMILIES[family], config, scheduler, 10, 1.0, "timestep", (8, 8))
        stream = io.StringIO()
        stream.isatty = lambda: False
        with StepProgress(Reporter(stream=stream), "x", plan, np.full((8, 8), 0.5, dtype=np.float32)) as progress:
            for evaluation in plan.evaluations:
                progress(evaluation)
        lines[scheduler] = stream.getvalue().splitlines()
    assert lines[None][0].startswith("x: warm-up") and lines[None][-1].startswith("x: step 10/10 evaluation 11/11")
    assert not any("warm-up" in line for line in lines["heun"]) and lines["heun"][-1].startswith("x: step 10/10 evaluation 19/19")


def test_a_cached_hub_model_runs_from_the_cache_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    from diffdiff_cli.models import hub
    from diffdiff_cli.models.registry import ModelSource

    snapshot = tmp_path / "hub" / "models--someone--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.prepare(ModelSource("hub", "someone/cached", "someone/cached"), offline=False) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set before huggingface_hub is imported: no retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(Exception, match="not in the Hugging Face cache and 127.0.0.1 cannot be reached"):
        hub.prepare(ModelSource("hub", "someone/else", "someone/else"), offline=False)
    assert hub.prepare(ModelSource("builtin", "demo", "demo"), offline=False) is False  # no probe for local models
