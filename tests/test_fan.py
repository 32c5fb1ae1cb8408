"""`diffdiff fan`: the same edit at uniform strengths in one labelled grid, from one model load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.errors import InputError
from diffdiff_cli.fan import fan_cells, grid, parse_strengths
from test_cli import run


def test_each_cell_is_the_edit_under_a_uniform_map(tiny_model, images):
    settings = EditSettings(prompt="x", steps=3, seed=4, fit="full")
    seed, cells = fan_cells(tiny_model, settings, images["photo"], [0.5, 1.0], images["gradient"])
    assert seed == 4 and [label for label, _ in cells] == ["0.5", "1.0", "map"]
    white = compute_edit(tiny_model, settings, images["photo"], images["white"]).image
    mapped = compute_edit(tiny_model, settings, images["photo"], images["gradient"]).image
    assert np.array_equal(np.asarray(cells[1][1]), np.asarray(white.convert("RGB")))
    assert np.array_equal(np.asarray(cells[2][1]), np.asarray(mapped.convert("RGB")))
    photo = np.asarray(Image.open(images["photo"]).convert("RGB")).astype(int)
    assert not np.array_equal(np.asarray(cells[0][1]), np.asarray(cells[1][1]))
    assert np.abs(np.asarray(cells[0][1]) - photo).mean() > 0


def test_grid_places_cells_in_rows_under_labels():
    cells = [(str(i), Image.new("RGB", (10, 6), (i * 40, 0, 0))) for i in range(5)]
    picture = grid(cells, columns=2)
    assert picture.size == (2 * 14 + 4, 3 * (6 + 18 + 4) + 4)
    pixels = np.asarray(picture)
    assert tuple(pixels[4 + 18 + 2 + 28, 4 + 14 + 2]) == (120, 0, 0)  # cell 3: second row, second column


def test_parse_strengths():
    assert parse_strengths("0.25, 0.5,1") == [0.25, 0.5, 1.0]
    for text in ("", "0,0.5", "0.5,1.5", "a"):
        with pytest.raises(InputError, match="--strengths"):
            parse_strengths(text)


def test_fan_command_writes_one_grid_with_one_model_load(images, tmp_path):
    out = tmp_path / "fan.png"
    done = run("fan", images["photo"], "-p", "x", "--steps", 2, "--seed", 9, "--strengths", "0.25,0.5,0.75,1",
               "--map", images["gradient"], "--columns", 3, "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["cells"] == ["0.25", "0.5", "0.75", "1.0", "map"] and record["seed"] == 9
    assert done.stderr.count("loading model") == 1 and done.stderr.count("fan: cell") == 5
    picture = Image.open(out)
    assert picture.size == (3 * (64 + 4) + 4, 2 * (64 + 18 + 4) + 4)
    assert json.loads(picture.info["diffdiff"])["strengths"] == [0.25, 0.5, 0.75, 1.0]


def test_fan_bad_strengths_fail_before_loading(images, tmp_path):
    done = run("fan", images["photo"], "-p", "x", "--strengths", "0.5,2", "-o", tmp_path / "f.png")
    assert done.returncode == 2 and "--strengths" in done.stderr and "loading model" not in done.stderr
    assert not (tmp_path / "f.png").exists()
