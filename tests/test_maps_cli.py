"""`diffdiff map ...` as a user runs it: 16-bit PNG files of the asked size, range and shape; previews."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_map
from test_cli import run

ROOT = Path(__file__).resolve().parent.parent


def read16(path) -> np.ndarray:
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "I;16", image.mode
    return np.asarray(image, dtype=np.float64) / 65535.0


def test_map_gradient_has_the_size_range_and_direction(tmp_path):
    out = tmp_path / "g.png"
    done = run("map", "gradient", "--size", "96x40", "--angle", 90, "--from", 0.25, "--to", 0.75, "-o", out)
    assert done.returncode == 0, done.stderr
    g = read16(out)
    assert g.shape == (40, 96)
    assert g[-1].max() == pytest.approx(0.25, abs=1e-5) and g[0].min() == pytest.approx(0.75, abs=1e-5)
    assert np.all(np.diff(g[:, 10]) < 0)  # bottom to top
    assert json.loads(Image.open(out).info["diffdiff"])["angle"] == 90
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".diffdiff-tmp-")]


def test_map_radial_and_feather_fall_off_monotonically(tmp_path):
    radial = tmp_path / "r.png"
    assert run("map", "radial", "--size", "80x60", "--center", "40,30", "--radius", "25", "--falloff", "linear", "-o", radial).returncode == 0
    r = read16(radial)
    assert r.shape == (60, 80) and r[30, 40] == 1.0 and r.min() == 0.0
    assert np.all(np.diff(r[30, 40:]) <= 0) and np.all(np.diff(r[30, :41]) >= 0)

    mask = save_map(tmp_path / "mask.png", (np.arange(80)[None, :] < 30).repeat(60, axis=0).astype(float))
    soft = tmp_path / "soft.png"
    done = run("map", "feather", mask, "--radius", 12, "-o", soft)
    assert done.returncode == 0, done.stderr
    f = read16(soft)
    assert f.shape == (60, 80) and np.all(f[:, :30] == 1) and np.all(f[:, 29 + 12 :] == 0)
    assert np.all(np.diff(f[5, 29:]) <= 0) and 0 < f[5, 35] < 1


def test_map_levels_invert_blur_and_grow_standalone(tmp_path):
    source = save_map(tmp_path / "in.png", np.tile(np.linspace(0, 1, 64), (8, 1)))
    raw = np.asarray(Image.open(source), dtype=np.float64) / 255
    assert run("map", "levels", source, "--levels", "0.25:0.75", "-o", tmp_path / "l.png").returncode == 0
    assert np.allclose(read16(tmp_path / "l.png"), np.clip((raw - 0.25) / 0.5, 0, 1), atol=1e-4)
    assert run("map", "invert", source, "-o", tmp_path / "i.png").returncode == 0
    assert np.allclose(read16(tmp_path / "i.png"), 1 - raw, atol=1e-4)
    spot = save_map(tmp_path / "spot.png", np.pad(np.ones((1, 1)), 10))
    assert run("map", "blur", spot, "--radius", 2, "-o", tmp_path / "b.png").returncode == 0
    blurred = read16(tmp_path / "b.png")
    assert 0 < blurred.max() < 0.1 and blurred.sum() == pytest.approx(1.0, abs=0.01)
    assert run("map", "grow", spot, "--radius", 3, "-o", tmp_path / "gr.png").returncode == 0
    assert int((read16(tmp_path / "gr.png") == 1).sum()) == 29  # pixels within 3 px of the spot


@pytest.mark.parametrize(
    "args, named",
    [
        (["gradient", "--size", "64", "-o", "x.png"], "--size"),
        (["gradient", "--size", "64x64", "-o", "x.jpg"], "-o"),
        (["gradient", "--size", "64x64", "--from", "2", "-o", "x.png"], "--from"),
        (["radial", "--size", "64x64", "--radius", "0", "-o", "x.png"], "--radius"),
        (["radial", "--size", "64x64", "--falloff", "cubic", "-o", "x.png"], "--falloff"),
        (["feather", "nope.png", "--radius", "4", "-o", "x.png"], "nope.png"),
        (["feather", "black.png", "--radius", "4", "-o", "x.png"], "no white area"),
        (["levels", "black.png", "--levels", "0.7:0.2", "-o", "x.png"], "--levels"),
        (["levels", "black.png", "--gamma", "-1", "-o", "x.png"], "--gamma"),
        (["invert", "black.png", "-o", "black.png"], "is the input"),
        (["blur", "black.png", "--radius", "-3", "-o", "x.png"], "--radius"),
    ],
)
def test_bad_map_commands_are_one_line_and_write_nothing(tmp_path, args, named):
    save_map(tmp_path / "black.png", np.zeros((8, 8)))
    done = run("map", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffdiff: error:") and named in lines[0], done.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_map_preview_tints_by_strength_and_lists_the_levels(images, tmp_path):
    out = tmp_path / "preview.png"
    done = run("map", "preview", images["photo"], images["gradient"], "--steps", 4, "--scheduler", "euler", "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    levels = [row["strength"] for row in record["levels"]]
    assert levels == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-3)  # euler, 4 steps: thresholds 1, 2/3, 1/3, 0
    assert sum(row["share"] for row in record["levels"]) == pytest.approx(1.0)
    preview = np.asarray(Image.open(out).convert("RGB")).astype(int)
    photo = np.asarray(Image.open(images["photo"]).convert("RGB")).astype(int)
    assert preview.shape[0] > 64 + 40 and preview.shape[1] >= 64  # the picture, then the legend under it
    tint = preview[:64, :64] - photo
    # a pixel gets the level of the evaluation that frees it: the last latent column (map ~0.94) gets 2/3, the
    # first (~0.06) is kept untinted, and the tint follows the strength colours of the levels
    from diffdiff_cli.preview import overlay

    assert np.array_equal(preview[:64, :8], photo[:, :8])
    expected = overlay(photo[:, 56:].astype(np.uint8), np.full((64, 8), 2 / 3)).astype(int)
    assert np.abs(preview[:64, 56:64] - expected).max() <= 1
    band = [np.abs(tint[:, x * 8 : x * 8 + 8]).mean() for x in range(8)]
    assert band[0] < band[-1]

    dithered = tmp_path / "dithered.png"
    assert run("map", "preview", images["photo"], images["gradient"], "--steps", 4, "--scheduler", "euler", "--dither",
               "-o", dithered).returncode == 0
    assert not np.array_equal(np.asarray(Image.open(dithered)), np.asarray(Image.open(out)))


def test_sample_masks_are_16_bit_and_documented():
    folder = ROOT / "sample_masks"
    readme = (folder / "README.md").read_text()
    files = sorted(p.name for p in folder.glob("*.png"))
    assert len(files) >= 9
    for name in files:
        assert name in readme
        image = Image.open(folder / name)
        assert image.mode == "I;16" and image.size == (384, 256)
