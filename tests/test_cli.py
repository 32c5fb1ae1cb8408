"""The installed `diffdiff` entry point, run as a user runs it: exit codes, files, metadata, messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DIFFDIFF = shutil.which("diffdiff", path=str(Path(sys.executable).parent)) or "diffdiff"


def run(*args, cwd=None):
    """The command as a user types it; commands that run or plan a model work on the whole image at its own
    size (--fit full), so that these tests about other things stay fast (tests/test_fit.py tests --fit)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [*map(str, args)]
    if args and (args[0] in ("edit", "plan", "fan") or args[:2] == ["map", "preview"]):
        args += ["--fit", "full"]
    return subprocess.run([DIFFDIFF, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_help_imports_neither_torch_nor_diffusers():
    code = (
        "import sys\n"
        "from diffdiff_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL') if m in sys.modules]\n"
        "print('HEAVY', heavy, code, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY [] 0" in done.stderr
    assert "edit" in done.stdout


def test_python_dash_m_works():
    done = subprocess.run([sys.executable, "-m", "diffdiff_cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "plan" in done.stdout


def test_edit_writes_the_output_with_metadata(images):
    out = images["dir"] / "out.png"
    done = run("edit", images["photo"], "--map", images["gradient"], "--prompt", "a stormy sky", "-n", "blurry",
               "-o", out, "--steps", 4, "--seed", 42, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    seed = 42  # --seed N is seed N
    assert record["output"] == str(out) and record["seed"] == seed and record["status"] == "done"
    assert f"seed {seed}" in done.stderr
    with Image.open(out) as image:
        assert image.size == (64, 64)
        parameters = image.info["parameters"]
        settings = json.loads(image.info["diffdiff"])
    lines = parameters.split("\n")
    assert lines[0] == "a stormy sky" and lines[1] == "Negative prompt: blurry"
    for field in ("Steps: 4", "Sampler: PLMS", "CFG scale: 7.5", f"Seed: {seed}", "Size: 64x64", "Model: tiny-sd15", "Denoising strength: 1.0"):
        assert field in lines[2]
    assert settings["map"] == images["gradient"] and settings["schedule"] == "timestep"
    assert not [p for p in images["dir"].iterdir() if p.name.startswith(".diffdiff-tmp-")]


def test_same_seed_same_pixels_and_jpeg_output(images):
    a, b = images["dir"] / "a.png", images["dir"] / "b.jpg"
    for out in (a, b):
        done = run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", out, "--steps", 3, "--seed", 5, "-q",
                   "--scheduler", "euler_a")
        assert done.returncode == 0, done.stderr
    assert Image.open(b).format == "JPEG" and Image.open(b).size == (64, 64)
    c = images["dir"] / "c.png"
    assert run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", c, "--steps", 3, "--seed", 5, "-q",
               "--scheduler", "euler_a").returncode == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))


def test_plain_progress_lines_when_not_a_terminal(images):
    done = run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", images["dir"] / "p.png", "--steps", 5,
               "--scheduler", "heun", "--seed", 1)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if ": step " in line]
    assert steps and steps[-1].split(": step ")[1].startswith("5/5")
    assert "τ=" in steps[-1] and "free" in steps[-1]
    quiet = run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", images["dir"] / "q.png", "--steps", 2, "-q")
    assert ": step " not in quiet.stderr


BAD_INPUTS = {
    "missing image": (["nope.png"], {}, "nope.png"),
    "unreadable image": (["garbage.png"], {}, "garbage.png"),
    "missing map": ([], {"--map": "nomap.png"}, "nomap.png"),
    "unreadable map": ([], {"--map": "garbage.png"}, "garbage.png"),
    "unknown model": ([], {"--model": "no-such-model"}, "--model"),
    "missing model file": ([], {"--model": "./weights.safetensors"}, "--model"),
    "pickle model": ([], {"--model": "model.ckpt"}, "pickle"),
    "unknown scheduler": ([], {"--scheduler": "warp"}, "--scheduler"),
    "zero steps": ([], {"--steps": "0"}, "--steps"),
    "strength zero": ([], {"--strength": "0"}, "--strength"),
    "strength above one": ([], {"--strength": "1.5"}, "--strength"),
    "negative hardness": ([], {"--hardness": "-0.1"}, "--hardness"),
    "hardness above one": ([], {"--hardness": "2"}, "--hardness"),
    "bad extension": ([], {"-o": "out.gif"}, "-o"),
    "missing option": ([], {"--map": None}, "--map"),
    "not a number": ([], {"--steps": "many"}, "--steps"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(images, case):
    folder = images["dir"]
    (folder / "garbage.png").write_bytes(b"this is not a png")
    (folder / "model.ckpt").write_bytes(b"pickle")
    positional, options, named = BAD_INPUTS[case]
    options = {"--map": "gradient.png", "--prompt": "x", "-o": "result.png", "--steps": "2", **options}
    args = ["edit", *(positional or ["photo.png"])]
    for flag, value in options.items():
        if value is not None:
            args += [flag, value]
    done = run(*args, cwd=folder)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffdiff: error:"), done.stderr
    assert named in lines[0]
    assert "Traceback" not in done.stderr
    assert not (folder / "result.png").exists() and not (folder / "out.gif").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".diffdiff-tmp-")]


def test_output_may_not_overwrite_the_input(images):
    done = run("edit", images["photo"], "--map", images["white"], "-p", "x", "-o", images["photo"])
    assert done.returncode == 2 and "is the input image" in done.stderr
    assert Image.open(images["photo"]).size == (64, 64)


def test_plan_json_has_a_row_per_evaluation(images):
    done = run("plan", "--map", images["gradient"], "--model", "tiny-sd15", "--steps", 20, "--scheduler", "euler", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = report["evaluations"]
    assert len(rows) == 20 and report["distinct_levels"] == 20  # the last threshold is 0: it merges with "kept"
    assert set(rows[0]) >= {"index", "timestep", "sigma", "threshold", "free_share"}
    assert rows[0]["threshold"] == 1.0 and rows[0]["free_share"] == 0.0 and rows[-1]["free_share"] == 1.0
    t0 = rows[0]["timestep"]
    assert all(abs(r["threshold"] - r["timestep"] / t0) < 1e-9 for r in rows)


def test_plan_warns_of_banding_with_few_steps(images):
    done = run("plan", "--map", images["gradient"], "--steps", 3, "--scheduler", "euler")
    assert done.returncode == 0 and "band" in done.stderr
    assert "threshold" in done.stdout


def test_models_list_and_save(tmp_path):
    listed = run("models", "list", "--json")
    assert listed.returncode == 0
    names = {row["name"]: row for row in json.loads(listed.stdout)}
    assert names["tiny-sd15"]["kind"] == "built-in" and names["sd15"]["source"].endswith("stable-diffusion-v1-5")

    target = tmp_path / "tiny"
    saved = run("models", "save", "tiny-sd15", target)
    assert saved.returncode == 0, saved.stderr
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(target, local_files_only=True)
    assert pipe.unet.config.cross_attention_dim == 32 and pipe.vae_scale_factor == 8
    again = run("models", "save", "tiny-sd15", target)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_saved_folder_is_a_model(images, tmp_path):
    target = tmp_path / "tiny"
    assert run("models", "save", "tiny-sd15", target).returncode == 0
    out = tmp_path / "f.png"
    done = run("edit", images["photo"], "--map", images["black"], "-p", "x", "-o", out, "--model", target, "--steps", 2, "--seed", 3)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(images["photo"])))


def test_hub_model_not_cached_offline_is_one_line(images):
    done = run("edit", images["photo"], "--map", images["white"], "-p", "x", "-o", images["dir"] / "h.png",
               "--model", "someone/not-a-cached-model", "--offline")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("diffdiff: error: --model someone/not-a-cached-model") and "offline" in lines[-1]
    assert len([line for line in lines if "error" in line]) == 1
