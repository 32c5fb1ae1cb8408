"""Batches through the one engine: results do not depend on the batch, groups split where they must, one bad
image fails alone, and a run prepares a shared map and prompt once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.caches import RunCaches
from diffdiff_cli.edit import EditSettings, denoise_edits, prepare_edit
from diffdiff_cli.models.load import load_model
from diffdiff_cli.models.registry import resolve_model

DIFFDIFF = str(Path(sys.executable).parent / "diffdiff")
_loaded: dict = {}


def model(name):
    if name not in _loaded:
        _loaded[name] = load_model(resolve_model(name), offline=True)
    return _loaded[name]


def four_jobs(folder: Path, size: int, multiple: int = 16):
    """Four different images, maps (a ramp, a ramp the other way, a blob, grey), prompts and seeds."""
    ramp = np.tile(np.linspace(0, 1, size), (size, 1))
    yy, xx = np.mgrid[:size, :size]
    blob = np.clip(1.2 - np.hypot(xx - size / 2, yy - size / 2) / (size / 3), 0, 1)
    maps = [ramp, ramp[:, ::-1] ** 2, blob, np.full((size, size), 0.5)]
    prompts = ["a red circle", "a stormy sky over the sea, oil painting", "green", "a cat"]
    jobs = []
    for i in range(4):
        photo = save_rgb(folder / f"p{i}.png", size, size, seed=i)
        change = save_map(folder / f"m{i}.png", maps[i])
        settings = EditSettings(prompt=prompts[i], negative_prompt="blurry" if i == 1 else "", steps=4, seed=100 + i, fit="full")
        jobs.append((settings, photo, change))
    return jobs


def run_batched(loaded, jobs, **overrides):
    caches = RunCaches()
    items = []
    for settings, photo, change in jobs:
        settings = EditSettings(**{**settings.__dict__, **overrides})
        items.append(prepare_edit(loaded, settings, photo, change, caches=caches))
    return denoise_edits(loaded, items, caches=caches), items


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


CASES = [
    ("tiny-sd15", 32, {}),
    ("tiny-sd15", 32, {"scheduler": "euler_a"}),  # stochastic steps: each image's noise from its own generator
    ("tiny-sdxl", 32, {}),
    ("tiny-sd3", 32, {}),
    ("tiny-flux", 32, {}),
    ("tiny-chroma", 32, {}),
    ("tiny-qwen-image", 32, {}),
    ("tiny-z-image", 32, {}),
    ("tiny-flux2-klein", 32, {}),
    ("tiny-kontext", 32, {}),
]


@pytest.mark.parametrize("name,size,overrides", CASES, ids=[f"{n}{'-' + '-'.join(o.values()) if o else ''}" for n, _, o in CASES])
def test_batch_of_four_is_four_runs_of_one(tmp_path, monkeypatch, name, size, overrides):
    import diffdiff_cli.sample.engine as engine

    batches = []
    sample = engine.sample

    def recorded(adapter, scheduler, timesteps, plan, request, *args):
        batches.append(request.x0.shape[0])
        return sample(adapter, scheduler, timesteps, plan, request, *args)

    loaded = model(name)
    jobs = four_jobs(tmp_path, size)
    monkeypatch.setattr(engine, "sample", recorded)
    together, items = run_batched(loaded, jobs, **overrides)
    assert len({item.batch_key(loaded.family) for item in items}) == 1  # one group
    if name == "tiny-qwen-image":  # prompts of other token counts do not stack (no padding: it would change them)
        assert sum(batches) == 4 and len(batches) < 4
    else:
        assert batches == [4]  # one set of denoiser calls at batch 4
    alone = [run_batched(loaded, [job], **overrides)[0][0] for job in jobs]
    for i, (a, b) in enumerate(zip(together, alone)):
        assert not isinstance(a, Exception), a
        diff = np.abs(pixels(a) - pixels(b))
        assert diff.max() <= 1, f"image {i}: max difference {diff.max()}/255"
        assert a.seed == 100 + i
    distinct = {pixels(r).tobytes() for r in together}
    assert len(distinct) == 4  # each image its own edit


def test_dpmpp_sde_is_never_batched(tmp_path):
    loaded = model("tiny-sd15")
    jobs = four_jobs(tmp_path, 32)
    caches = RunCaches()
    items = [prepare_edit(loaded, EditSettings(**{**s.__dict__, "scheduler": "dpmpp_sde"}), p, m, caches=caches) for s, p, m in jobs]
    assert len({item.batch_key(loaded.family) for item in items}) == 4


def test_nan_in_one_image_fails_that_image_only(tmp_path, monkeypatch):
    loaded = model("tiny-sd15")
    jobs = four_jobs(tmp_path, 32)
    from diffdiff_cli.sample.families.sd import StableDiffusionAdapter

    decode = StableDiffusionAdapter.decode

    def poisoned(self, latents, generator):
        out = decode(self, latents, generator)
        out[1] = float("nan")  # the second image of the batch overflows
        return out

    monkeypatch.setattr(StableDiffusionAdapter, "decode", poisoned)
    results, _ = run_batched(loaded, jobs)
    assert [isinstance(r, Exception) for r in results] == [False, True, False, False]
    assert "NaN" in str(results[1])


def test_a_group_that_fails_is_retried_image_by_image(tmp_path, monkeypatch):
    loaded = model("tiny-sd15")
    jobs = four_jobs(tmp_path, 32)
    from diffdiff_cli.sample.families.sd import StableDiffusionAdapter

    denoise = StableDiffusionAdapter.denoise

    def fragile(self, latents, t, embeddings):
        if latents.shape[0] > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return denoise(self, latents, t, embeddings)

    monkeypatch.setattr(StableDiffusionAdapter, "denoise", fragile)
    results, _ = run_batched(loaded, jobs)
    assert not any(isinstance(r, Exception) for r in results)


def run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([DIFFDIFF, *map(str, args)], capture_output=True, cwd=cwd, env=env, timeout=600)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_twenty_images_one_map_prepare_it_once_and_encode_the_prompt_once(tmp_path):
    (tmp_path / "out").mkdir()
    photos = [save_rgb(tmp_path / f"p{i:02}.png", 32, 32, seed=i) for i in range(20)]
    save_map(tmp_path / "map.png", np.tile(np.linspace(0, 1, 32), (32, 1)))
    done = run("edit", *photos, "--map", "map.png", "-p", "autumn", "--out-dir", "out", "--steps", "2", "--seed", "3",
               "--fit", "full", "--batch-size", "8", "--report", "r.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    report = records(tmp_path / "r.jsonl")
    assert [r["status"] for r in report] == ["done"] * 20
    last = report[-1]
    assert last["map_preparations"] == 1 and last["map_loads"] == 1 and last["prompt_encodings"] == 1
    assert sorted(r["batch"] for r in report) == [4] * 4 + [8] * 16  # 8 + 8 + 4


def mixed_sizes(folder: Path) -> list[str]:
    names = []
    for i, size in enumerate([32, 48, 32, 48, 32]):
        names.append(save_rgb(folder / f"p{i}.png", size, size, seed=i))
        save_map(folder / f"p{i}-map.png", np.tile(np.linspace(0, 1, size), (size, 1)))
    (folder / "out").mkdir()
    return names


def corrupt(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # the header reads, the pixels do not


def edit_corrupting_after_the_check(folder: Path, monkeypatch, victim: str, args: list) -> int:
    """`diffdiff edit ARGS` in this process, with `victim` truncated after the check passed; its exit code."""
    import diffdiff_cli.validate as validate
    from diffdiff_cli.cli import main

    check_edit = validate.check_edit

    def then_corrupted(options, reporter):
        checked = check_edit(options, reporter)
        corrupt(victim)
        return checked

    monkeypatch.setattr(validate, "check_edit", then_corrupted)
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit) as exit_:
        main(["edit", *args])
    return exit_.value.code


EDIT_MIXED = ("--map", "{stem}-map.png", "-p", "autumn", "--out-dir", "out", "--steps", "2", "--seed", "3", "--fit", "full",
              "--batch-size", "4", "--report", "r.jsonl")


def assert_grouped_by_size(report: dict, names: list[str], bad: str) -> None:
    assert report[bad]["status"] == "failed" and "p2.png" in report[bad]["error"]
    done_ones = [report[n] for n in names if n != bad]
    assert [r["status"] for r in done_ones] == ["done"] * 4
    assert [r["batch"] for r in done_ones] == [2, 2, 2, 2]  # 32 px with 32 px, 48 px with 48 px
    assert [r["work_size"] for r in done_ones] == [[32, 32], [48, 48], [48, 48], [32, 32]]


def test_mixed_sizes_split_into_groups_and_an_invalid_image_is_left_out(tmp_path):
    names = mixed_sizes(tmp_path)
    corrupt(names[2])
    done = run("edit", *names, *EDIT_MIXED, "--skip-invalid", cwd=tmp_path)
    assert done.returncode == 1, done.stderr.decode()
    assert_grouped_by_size({r["input"]: r for r in records(tmp_path / "r.jsonl")}, names, names[2])


def test_an_image_that_goes_bad_after_the_check_fails_alone_in_its_group(tmp_path, monkeypatch):
    """A file replaced between the check and its turn (a shared disk, a sync job) fails at run time: its
    group goes on without it."""
    names = mixed_sizes(tmp_path)
    assert edit_corrupting_after_the_check(tmp_path, monkeypatch, names[2], [*names, *EDIT_MIXED]) == 1
    report = {r["input"]: r for r in records(tmp_path / "r.jsonl")}
    assert_grouped_by_size(report, names, names[2])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}-edited.png" for i in (0, 1, 3, 4)]


@pytest.mark.slow
def test_compile_gives_the_same_pixels_and_says_it_warms_up(tmp_path):
    """`--compile` (torch.compile of the denoiser; ~1 min of compiling on a CPU) changes speed, not pixels."""
    photo = save_rgb(tmp_path / "p.png", 32, 32, seed=1)
    save_map(tmp_path / "m.png", np.tile(np.linspace(0, 1, 32), (32, 1)))
    common = ("edit", photo, "--map", "m.png", "-p", "autumn", "--steps", "2", "--seed", "3", "--fit", "full", "--batch-size", "2")
    compiled = run(*common, "-o", "c.png", "--compile", cwd=tmp_path)
    plain = run(*common, "-o", "n.png", cwd=tmp_path)
    assert compiled.returncode == 0 and plain.returncode == 0, compiled.stderr.decode()
    assert "--compile" in compiled.stderr.decode() and "--compile" not in plain.stderr.decode()
    a, b = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("c.png", "n.png"))
    assert np.abs(a - b).max() <= 1


def test_fail_fast_still_finishes_the_images_waiting_before_the_failure(tmp_path, monkeypatch):
    """As at batch 1, where they would already be written: images taken before the failing one are done."""
    names = [save_rgb(tmp_path / f"p{i}.png", 32, 32, seed=i) for i in range(4)]
    save_map(tmp_path / "m.png", np.tile(np.linspace(0, 1, 32), (32, 1)))
    (tmp_path / "out").mkdir()
    args = [*names, "--map", "m.png", "-p", "autumn", "--out-dir", "out", "--steps", "2", "--fit", "full", "--batch-size", "4",
            "--fail-fast", "--report", "r.jsonl"]
    assert edit_corrupting_after_the_check(tmp_path, monkeypatch, names[2], args) == 1
    report = {r["input"]: r["status"] for r in records(tmp_path / "r.jsonl")}
    assert report == {names[0]: "done", names[1]: "done", names[2]: "failed"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0-edited.png", "p1-edited.png"]


def test_a_denoiser_error_at_batch_1_fails_that_image_and_the_run_goes_on(tmp_path, monkeypatch):
    """Not only the library's own errors: any exception in an image's denoising is that image's failure."""
    from diffdiff_cli.cli import main
    from diffdiff_cli.sample.families.sd import StableDiffusionAdapter

    denoise = StableDiffusionAdapter.denoise
    poisoned = {"first": True}

    def fails_once(self, latents, t, embeddings):
        if poisoned.pop("first", False):
            raise RuntimeError("simulated device error")
        return denoise(self, latents, t, embeddings)

    monkeypatch.setattr(StableDiffusionAdapter, "denoise", fails_once)
    names = [save_rgb(tmp_path / f"p{i}.png", 32, 32, seed=i) for i in range(2)]
    save_map(tmp_path / "m.png", np.tile(np.linspace(0, 1, 32), (32, 1)))
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["edit", *names, "--map", "m.png", "-p", "autumn", "--out-dir", "out", "--steps", "2", "--fit", "full",
              "--batch-size", "1", "--report", "r.jsonl"])
    assert exit_.value.code == 1
    report = {r["input"]: r for r in records(tmp_path / "r.jsonl")}
    assert report[names[0]]["status"] == "failed" and "simulated device error" in report[names[0]]["error"]
    assert report[names[1]]["status"] == "done"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1-edited.png"]
