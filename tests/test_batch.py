"""Batch work as shells, Makefiles and CI jobs use it: one model load, nothing redone, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.batch import fill_template, read_manifest
from diffdiff_cli.errors import InputError

BIN = Path(sys.executable).parent
DIFFDIFF = str(BIN / "diffdiff")
REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd, **kwargs):
    """`diffdiff edit` works on the whole image at its own size here (--fit full): these tests are about batches."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [*map(str, args)] + (["--fit", "full"] if args and args[0] == "edit" else [])
    return subprocess.run([DIFFDIFF, *args], capture_output=True, cwd=cwd, env=env, timeout=600, **kwargs)


def make_set(folder: Path, count: int = 5, size: int = 64) -> list[str]:
    (folder / "photos").mkdir()
    (folder / "masks").mkdir()
    (folder / "out").mkdir()
    names = []
    for i in range(count):
        save_rgb(folder / "photos" / f"p{i}.png", size, size, seed=i)
        save_map(folder / "masks" / f"p{i}.png", np.tile(np.linspace(0, 1, size) ** (i + 1), (size, 1)))
        names.append(f"p{i}")
    return names


def report_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


BATCH = ["--map", "masks/{stem}.png", "-p", "autumn", "--out-dir", "out", "--steps", "3", "--seed", "7"]


def test_glob_of_five_loads_once_and_records_each_map(tmp_path):
    names = make_set(tmp_path)
    photos = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "photos").glob("*.png"))
    done = run("edit", *photos, *BATCH, "--report", "report.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    records = report_lines(tmp_path / "report.jsonl")
    assert [r["status"] for r in records] == ["done"] * 5
    assert {r["model_loads"] for r in records} == {1}  # one model load for the whole call
    for name in names:
        with Image.open(tmp_path / "out" / f"{name}-edited.png") as image:
            assert json.loads(image.info["diffdiff"])["map"] == f"masks/{name}.png"
    assert "5 done, 0 skipped, 0 failed" in done.stderr.decode()

    again = run("edit", *photos, *BATCH, "--skip-existing", "--report", "again.jsonl", cwd=tmp_path)
    assert again.returncode == 0
    records = report_lines(tmp_path / "again.jsonl")
    assert [r["status"] for r in records] == ["skipped"] * 5 and {r["model_loads"] for r in records} == {0}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


def test_a_truncated_image_fails_before_the_model_loads_or_alone_with_skip_invalid(tmp_path):
    make_set(tmp_path)
    _truncate(tmp_path / "photos" / "p2.png")
    photos = [f"photos/p{i}.png" for i in range(5)]
    done = run("edit", *photos, *BATCH, cwd=tmp_path)
    stderr = done.stderr.decode()
    assert done.returncode == 2 and "p2.png" in stderr and "loading model" not in stderr, stderr
    assert os.listdir(tmp_path / "out") == []
    kept_going = run("edit", *photos, *BATCH, "--skip-invalid", "--report", "r.jsonl", cwd=tmp_path)
    assert kept_going.returncode == 1
    records = {r["input"]: r for r in report_lines(tmp_path / "r.jsonl")}
    assert records["photos/p2.png"]["status"] == "failed" and "p2.png" in records["photos/p2.png"]["error"]
    assert all(records[p]["status"] == "done" for p in photos if p != "photos/p2.png")
    assert sorted(os.listdir(tmp_path / "out")) == [f"p{i}-edited.png" for i in (0, 1, 3, 4)]


def test_unreadable_inputs_fail_before_the_model_loads(tmp_path):
    make_set(tmp_path, count=3)
    done = run("edit", "photos/p0.png", "photos/nope.png", "photos/p1.png", *BATCH, cwd=tmp_path)
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert "nope.png" in stderr and "loading model" not in stderr and os.listdir(tmp_path / "out") == []
    keep_going = run("edit", "photos/p0.png", "photos/nope.png", "photos/p1.png", *BATCH, "--skip-invalid", cwd=tmp_path)
    assert keep_going.returncode == 1 and sorted(os.listdir(tmp_path / "out")) == ["p0-edited.png", "p1-edited.png"]
    missing_map = run("edit", "photos/p0.png", "--map", "masks/{stem}-x.png", "-p", "x", "-o", "out/a.png", cwd=tmp_path)
    assert missing_map.returncode == 2 and "p0-x.png" in missing_map.stderr.decode()


def test_seed_n_is_seed_n_for_every_image_in_any_order(tmp_path):
    make_set(tmp_path, count=3)
    forward = run("edit", "photos/p0.png", "photos/p1.png", "photos/p2.png", *BATCH, "--report", "f.jsonl", cwd=tmp_path)
    assert forward.returncode == 0, forward.stderr.decode()
    assert [r["seed"] for r in report_lines(tmp_path / "f.jsonl")] == [7, 7, 7]  # --seed 7: every image uses 7
    first = {n: pixels(tmp_path / "out" / f"{n}-edited.png") for n in ("p0", "p1", "p2")}
    for n in first:
        with Image.open(tmp_path / "out" / f"{n}-edited.png") as image:
            assert "Seed: 7," in image.info["parameters"] and json.loads(image.info["diffdiff"])["seed"] == 7
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "out").mkdir()
    backward = run("edit", "photos/p2.png", "photos/p1.png", "photos/p0.png", *BATCH, cwd=tmp_path)
    assert backward.returncode == 0
    for n in first:
        assert np.array_equal(first[n], pixels(tmp_path / "out" / f"{n}-edited.png"))
    single = run("edit", "photos/p1.png", *BATCH[:2], "-p", "autumn", "-o", "single.png", "--steps", "3", "--seed", "7", cwd=tmp_path)
    assert single.returncode == 0 and np.array_equal(first["p1"], pixels(tmp_path / "single.png"))


def test_without_seed_each_image_draws_and_records_its_own(tmp_path):
    make_set(tmp_path, count=3)
    photos = ["photos/p0.png", "photos/p1.png", "photos/p2.png"]
    args = ["--map", "masks/{stem}.png", "-p", "x", "--out-dir", "out", "--steps", "1", "--report", "r.jsonl"]
    done = run("edit", *photos, *args, "--seed", "-1", cwd=tmp_path)  # -1 = random, as in A1111
    assert done.returncode == 0, done.stderr.decode()
    seeds = [r["seed"] for r in report_lines(tmp_path / "r.jsonl")]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**32 for s in seeds)
    for photo, seed in zip(photos, seeds):
        with Image.open(tmp_path / "out" / f"{Path(photo).stem}-edited.png") as image:
            assert json.loads(image.info["diffdiff"])["seed"] == seed
        assert f"seed {seed}" in done.stderr.decode()


def test_sigint_mid_batch_leaves_only_complete_outputs(tmp_path):
    make_set(tmp_path, count=6, size=256)
    photos = [f"photos/p{i}.png" for i in range(6)]
    args = [DIFFDIFF, "edit", *photos, "--map", "masks/{stem}.png", "-p", "x", "--out-dir", "out", "--steps", "30", "--seed", "1",
            "--fit", "full"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "out").glob("*-edited.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode()
    written = sorted(os.listdir(tmp_path / "out"))
    assert 1 <= len(written) < 6 and all(name.endswith("-edited.png") for name in written)  # no temporaries
    for name in written:
        assert pixels(tmp_path / "out" / name).shape == (256, 256, 3)
    rerun = run("edit", *photos, "--map", "masks/{stem}.png", "-p", "x", "--out-dir", "out", "--steps", "2", "--seed", "1",
                "--skip-existing", "--report", "r.jsonl", cwd=tmp_path)
    assert rerun.returncode == 0
    statuses = [r["status"] for r in report_lines(tmp_path / "r.jsonl")]
    assert statuses.count("skipped") == len(written) and statuses.count("done") == 6 - len(written)


def test_stale_temporaries_from_a_killed_run_are_cleaned(tmp_path):
    import socket

    make_set(tmp_path, count=1)
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "out" / f".diffdiff-tmp-{host}-{dead.pid}-abc.png"
    live = tmp_path / "out" / f".diffdiff-tmp-{host}-{os.getpid()}-def.png"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    done = run("edit", "photos/p0.png", *BATCH, cwd=tmp_path)
    assert done.returncode == 0
    assert not stale.exists() and live.exists()


def test_manifest_sets_prompt_seed_and_strength_per_image(tmp_path):
    make_set(tmp_path, count=2)
    lines = [
        {"input": "photos/p0.png", "map": "masks/p0.png", "prompt": "snow", "seed": 123},
        {"input": "photos/p1.png", "map": "masks/p1.png", "strength": 0.5, "output": "out/custom.png"},
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = run("edit", "--manifest", "jobs.jsonl", "-p", "default prompt", "--out-dir", "out", "--steps", "4", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    records = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert records[0]["seed"] == 123 and records[0]["prompt"] == "snow"
    assert records[1]["strength"] == 0.5 and records[1]["prompt"] == "default prompt" and records[1]["output"] == "out/custom.png"
    (tmp_path / "jobs.csv").write_text("input,map,prompt\nphotos/p0.png,masks/p0.png,rain\n")
    assert read_manifest(str(tmp_path / "jobs.csv")) == [{"input": "photos/p0.png", "map": "masks/p0.png", "prompt": "rain", "_line": 2}]
    (tmp_path / "bad.jsonl").write_text('{"input": "photos/p0.png", "colour": "red"}\n')
    with pytest.raises(InputError, match="line 1: unknown field"):
        read_manifest(str(tmp_path / "bad.jsonl"))


def test_templates_name_their_fields():
    assert fill_template("masks/{stem}.png", "--map", ("stem", "name"), stem="a", name="a.png") == "masks/a.png"
    with pytest.raises(InputError, match="--name .*unknown field {colour}"):
        fill_template("{colour}.png", "--name", ("stem",), stem="a")


def test_pipes_read_stdin_and_write_stdout(tmp_path):
    make_set(tmp_path, count=1)
    data = (tmp_path / "photos" / "p0.png").read_bytes()
    done = run("edit", "-", "--map", "masks/p0.png", "-p", "x", "-o", "-", "--steps", "2", "--seed", "3", cwd=tmp_path, input=data)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "piped.png").write_bytes(done.stdout)
    assert pixels(tmp_path / "piped.png").shape == (64, 64, 3)


def test_info_and_like_rerun_the_recorded_settings(tmp_path):
    make_set(tmp_path, count=1)
    first = run("edit", "photos/p0.png", "--map", "masks/p0.png", "-p", "a red barn", "-n", "fog", "--steps", "5",
                "--scheduler", "euler_a", "--hardness", "0.5", "-o", "first.png", cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    info = run("info", "first.png", "--json", cwd=tmp_path)
    recorded = json.loads(info.stdout)["settings"]
    assert recorded["prompt"] == "a red barn" and recorded["scheduler"] == "euler_a" and recorded["hardness"] == 0.5
    assert "Negative prompt: fog" in json.loads(info.stdout)["parameters"]
    again = run("edit", "--like", "first.png", "photos/p0.png", "-o", "again.png", cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "again.png"))
    changed = run("edit", "--like", "first.png", "photos/p0.png", "-o", "changed.png", "--steps", "6", cwd=tmp_path)
    assert changed.returncode == 0
    with Image.open(tmp_path / "changed.png") as image:
        settings = json.loads(image.info["diffdiff"])
    assert settings["steps"] == 6 and settings["prompt"] == "a red barn" and settings["seed"] == recorded["seed"]
    assert run("info", "photos/p0.png", cwd=tmp_path).returncode == 2


def test_example_makefile_rebuilds_only_what_changed(tmp_path):
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples", examples, ignore=shutil.ignore_patterns("edited"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    make = ["make", "-C", str(examples), f"DIFFDIFF={DIFFDIFF}", "STEPS=3", "FIT=full"]
    first = subprocess.run(make, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    outputs = sorted(p.name for p in (examples / "edited").iterdir())
    assert outputs == sorted(p.name for p in (examples / "photos").iterdir())
    second = subprocess.run(make, capture_output=True, text=True, env=env, timeout=600)
    assert "diffdiff edit" not in second.stdout
    os.utime(examples / "masks" / outputs[0], (time.time() + 5, time.time() + 5))
    third = subprocess.run(make, capture_output=True, text=True, env=env, timeout=600)
    assert third.stdout.count("diffdiff edit") == 1


def test_accelerate_launch_shards_each_image_once(tmp_path):
    make_set(tmp_path, count=4)
    photos = [f"photos/p{i}.png" for i in range(4)]
    single = run("edit", *photos, *BATCH, cwd=tmp_path)
    assert single.returncode == 0
    reference = {p.name: pixels(p) for p in (tmp_path / "out").iterdir()}
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "out").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffdiff_cli", "edit", *photos, *BATCH,
              "--report", "shards.jsonl", "--fit", "full"]
    done = subprocess.run(launch, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = report_lines(tmp_path / "shards.jsonl")
    assert sorted(r["input"] for r in records) == sorted(photos)  # each image exactly once
    assert "process 1 of 2" in done.stderr and "process 2 of 2" in done.stderr
    for name, expected in reference.items():
        assert np.array_equal(pixels(tmp_path / "out" / name), expected)
