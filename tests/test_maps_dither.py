"""Strength levels and --dither: what the engine's masks give each pixel, and the banding dither removes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffdiff_cli.dither import dither, effective_strength, level_representatives, strength_levels
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.models.builtin import SD15_SCHEDULER
from diffdiff_cli.plan import free_share, plan_for_scheduler, prepare_scheduler
from diffdiff_cli.prepare_map import prepare_map
from diffdiff_cli.sample.engine import keep_weights
from diffdiff_cli.schedulers import make_scheduler
from test_cli import run


def sd15_plan(scheduler, steps, schedule="timestep", strength=1.0):
    sched = make_scheduler(SD15_SCHEDULER, scheduler)
    return plan_for_scheduler(sched, prepare_scheduler(sched, steps, strength), schedule)


def strength_from_engine_masks(change: np.ndarray, plan) -> np.ndarray:
    """Replay the engine's own binary masks. Timestep schedule (prediction blended): a pixel enters the run
    at the level of the first evaluation that frees it. Steps schedule (input reset only): it changes from
    the level of its last reset."""
    c = torch.from_numpy(np.asarray(change, dtype=np.float32))
    if plan.blends_prediction:
        entry = torch.zeros_like(c)
        for evaluation in reversed(plan.evaluations):
            free = keep_weights(c, evaluation.threshold, 1.0) == 1
            entry = torch.where(free, torch.tensor(evaluation.threshold, dtype=torch.float32), entry)
        return entry.double().numpy()
    last_reset = torch.ones_like(c)  # never pinned: it follows the sampler from the start, like white
    for evaluation in plan.evaluations:
        pinned = keep_weights(c, evaluation.threshold, 1.0) == 0
        last_reset = torch.where(pinned, torch.tensor(evaluation.threshold, dtype=torch.float32), last_reset)
    last_reset = torch.where(keep_weights(c, plan.evaluations[-1].threshold, 1.0) == 0, 0.0, last_reset)  # -> x0 exactly
    return last_reset.double().numpy()


@pytest.mark.parametrize("scheduler", [None, "euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", ["timestep", "steps"])
def test_effective_strength_is_what_the_engine_masks_give(scheduler, schedule):
    plan = sd15_plan(scheduler, 5, schedule)
    rs = np.random.RandomState(0)
    change = np.concatenate([rs.rand(200), plan.thresholds, [0.0, 1.0]]).astype(np.float32).reshape(1, -1)
    expected = strength_from_engine_masks(change, plan)
    assert np.allclose(effective_strength(change, plan.thresholds, plan.level_rule), expected, atol=1e-6)
    assert set(np.round(expected.ravel(), 6)) <= set(np.round(strength_levels(plan.thresholds, plan.level_rule), 6))


@pytest.mark.parametrize("schedule", ["timestep", "steps"])
def test_pinning_at_the_first_evaluation_matters_only_under_the_nodes_rule(tiny_model, images, schedule):
    """On the real engine: a map value between the first two thresholds. The paper's rule resets it at the first
    call only, to where the run starts anyway, so it changes exactly like white; the node's rule points its first
    prediction at x0, so it enters one level lower."""
    plan = sd15_plan(None, 4, schedule)
    second = plan.thresholds[1]
    runs = {}
    for value in (1.0, (1 + second) / 2):
        settings = EditSettings(prompt="x", steps=4, seed=3, paste_back=False, schedule=schedule, fit="full")
        runs[value] = compute_edit(tiny_model, settings, images["photo"], np.full((64, 64), value, np.float32))
    white, above = runs.values()
    if schedule == "steps":
        assert torch.allclose(above.latents, white.latents, atol=1e-3)
    else:
        assert (above.latents - white.latents).abs().max() > 0.1


def test_dither_keeps_black_and_white_and_uses_only_level_values():
    plan = sd15_plan("euler", 4)
    change = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (24, 1))
    out = dither(change, plan.thresholds, plan.level_rule)
    assert out.shape == change.shape and out.dtype == np.float32
    assert np.all(out[change == 0] == 0) and np.all(out[change == 1] == 1)
    levels, values = level_representatives(plan.thresholds, plan.level_rule)
    assert set(np.unique(out).tolist()) <= set(values.tolist())
    assert np.allclose(effective_strength(values, plan.thresholds, plan.level_rule), levels)  # each value gives its level
    assert np.array_equal(dither(change, plan.thresholds, plan.level_rule), out)  # a fixed pattern: the same every run


def column_errors(size: int, scheduler, steps: int = 4, schedule: str = "timestep") -> tuple[float, float]:
    """Max over columns of |column mean of the effective strength - map|, without and with dither."""
    gradient = np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))
    latent = prepare_map(gradient, (size, size), 8).latent
    plan = sd15_plan(scheduler, steps, schedule)
    target = latent.mean(axis=0)
    plain = np.abs(strength_from_engine_masks(latent, plan).mean(axis=0) - target).max()
    dithered = np.abs(strength_from_engine_masks(dither(latent, plan.thresholds, plan.level_rule), plan).mean(axis=0) - target).max()
    return float(plain), float(dithered)


@pytest.mark.parametrize("scheduler", [None, "euler", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", ["timestep", "steps"])
def test_dither_brings_column_means_within_1_16_on_a_4_step_gradient(scheduler, schedule):
    plain, dithered = column_errors(512, scheduler, schedule=schedule)
    assert plain >= 1 / 8  # banding: about a whole level spacing (measured 0.24 .. 0.33)
    assert dithered <= 1 / 16  # measured 0.018 .. 0.024


def test_dither_also_follows_rows_and_small_windows():
    plan = sd15_plan(None, 4)
    gradient = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[:, None], (1, 64))  # top to bottom
    strength = effective_strength(dither(gradient, plan.thresholds), plan.thresholds)  # timestep schedule: "entry"
    assert np.abs(strength.mean(axis=1) - gradient[:, 0]).max() <= 1 / 16
    flat = np.full((64, 64), 0.5, np.float32)
    windows = effective_strength(dither(flat, plan.thresholds), plan.thresholds).reshape(8, 8, 8, 8).mean(axis=(1, 3))
    assert np.abs(windows - 0.5).max() <= 0.06  # every 8 x 8 neighbourhood, not only whole columns


def test_plan_and_edit_use_the_same_dithered_map(tiny_model, images):
    done = run("plan", "--map", images["gradient"], "--steps", 4, "--dither", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dither"] is True and "band" not in done.stderr
    result = compute_edit(tiny_model, EditSettings(prompt="x", steps=4, seed=1, dither=True, fit="full"), images["photo"], images["gradient"])
    plain = prepare_map(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1)), (64, 64), 8).latent
    assert np.array_equal(result.change_latent, dither(plain, result.plan.thresholds, result.plan.level_rule))
    shares = [row["free_share"] for row in report["evaluations"]]
    assert shares == pytest.approx([free_share(result.change_latent, t) for t in result.plan.thresholds])
    assert [free_share(plain, t) for t in result.plan.thresholds] != pytest.approx(shares)
    assert report["strength_levels"] == pytest.approx(strength_levels(result.plan.thresholds, result.plan.level_rule).tolist())


def test_shaping_flags_reach_the_edit_and_its_metadata(images, tmp_path):
    from PIL import Image

    out = tmp_path / "shaped.png"
    done = run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "--steps", 2, "--seed", 1, "-o", out,
               "--map-levels", "0.5:1", "--map-gamma", "2", "--map-min", "0.3", "--map-max", "0.9", "--map-grow", "2",
               "--map-blur", "1.5", "--dither", "--map-channel", "luma", "--json")
    assert done.returncode == 0, done.stderr
    settings = json.loads(Image.open(out).info["diffdiff"])
    assert settings["map_levels"] == "0.5:1" and settings["map_gamma"] == 2 and settings["map_min"] == 0.3
    assert settings["map_max"] == 0.9 and settings["map_grow"] == 2 and settings["map_blur"] == 1.5
    assert settings["dither"] is True and settings["map_channel"] == "luma" and settings["strict_size"] is False
    original = np.asarray(Image.open(images["photo"]))
    # levels 0.5:1 then grow 2 and blur 1.5 (cut at 5 px): the left 32 - 2 - 5 columns stay black, kept exactly
    assert np.array_equal(np.asarray(Image.open(out))[:, :24], original[:, :24])


@pytest.mark.parametrize(
    "field, value, flag",
    [("map_levels", "0.9:0.1", "--map-levels"), ("map_levels", "half", "--map-levels"), ("map_gamma", 0, "--map-gamma"),
     ("map_min", 2, "--map-min"), ("map_grow", -1, "--map-grow"), ("map_blur", -1, "--map-blur"), ("map_channel", "purple", "--map-channel")],
)
def test_edit_settings_check_the_map_flags(field, value, flag):
    from diffdiff_cli.errors import InputError

    with pytest.raises(InputError, match=flag):
        EditSettings(prompt="x", **{field: value}).validate()


@pytest.mark.parametrize("flag, value", [("--map-levels", "0.9:0.1"), ("--map-channel", "purple")])
def test_bad_map_flags_fail_before_any_work(images, tmp_path, flag, value):
    done = run("edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", tmp_path / "o.png", flag, value)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "loading model" not in done.stderr
    assert not (tmp_path / "o.png").exists()
