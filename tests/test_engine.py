"""The engine on the tiny SD 1.x model: map 0 is untouched, map 1 is plain img2img, grey is in between."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.plan import prepare_scheduler
from diffdiff_cli.sample.noising import DiscreteTimeNoising, current_sigma
from diffdiff_cli.schedulers import SCHEDULERS, make_scheduler

ALL_SCHEDULERS = [None, *SCHEDULERS]


def settings(**overrides) -> EditSettings:
    values = dict(prompt="a red circle on a blue background", steps=6, seed=7, fit="full")  # the image at its own size
    values.update(overrides)
    return EditSettings(**values)


def reference_img2img(model, photo, scheduler, steps, strength, seed, guidance=7.5):
    """diffusers' own StableDiffusionImg2ImgPipeline with the same components, seed and scheduler."""
    pipe = model.pipe
    pipe.scheduler = make_scheduler(model.scheduler_config, scheduler, seed)
    out = pipe(
        "a red circle on a blue background",
        image=Image.open(photo),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
    return (out * 255).round().astype(np.uint8)


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_map_all_white_is_diffusers_img2img(tiny_model, images, scheduler):
    result = compute_edit(tiny_model, settings(scheduler=scheduler), images["photo"], images["white"])
    expected = reference_img2img(tiny_model, images["photo"], scheduler, 6, 1.0, 7)
    diff = np.abs(np.asarray(result.image).astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()}/255"


@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpmpp_2m"])
def test_map_all_white_matches_img2img_at_lower_strength(tiny_model, images, scheduler):
    result = compute_edit(tiny_model, settings(scheduler=scheduler, steps=10, strength=0.6), images["photo"], images["white"])
    expected = reference_img2img(tiny_model, images["photo"], scheduler, 10, 0.6, 7)
    assert np.abs(np.asarray(result.image).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_map_all_black_is_untouched(tiny_model, images, scheduler):
    result = compute_edit(tiny_model, settings(scheduler=scheduler), images["photo"], images["black"])
    assert torch.equal(result.latents, result.x0)  # the final latent is the clean latent, exactly
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.open(images["photo"])))


@pytest.mark.parametrize("hardness", [0.0, 0.5])
def test_soft_masks_keep_black_untouched_and_white_as_img2img(tiny_model, images, hardness):
    black = compute_edit(tiny_model, settings(hardness=hardness), images["photo"], images["black"])
    assert torch.equal(black.latents, black.x0)
    white = compute_edit(tiny_model, settings(hardness=hardness), images["photo"], images["white"])
    expected = reference_img2img(tiny_model, images["photo"], None, 6, 1.0, 7)
    assert np.abs(np.asarray(white.image).astype(int) - expected.astype(int)).max() <= 1


def test_hardness_zero_is_not_the_binary_mask(tiny_model, images):
    binary = compute_edit(tiny_model, settings(hardness=1.0), images["photo"], images["gradient"])
    soft = compute_edit(tiny_model, settings(hardness=0.0), images["photo"], images["gradient"])
    assert not torch.allclose(binary.latents, soft.latents)


@pytest.mark.parametrize("scheduler", [None, "euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", ["timestep", "steps"])
def test_change_rises_with_the_map(tiny_model, images, scheduler, schedule):
    result = compute_edit(tiny_model, settings(scheduler=scheduler, steps=20, schedule=schedule), images["photo"], images["gradient"])
    change_per_column = (result.latents - result.x0).abs().mean(dim=(0, 1, 2)).numpy()
    map_per_column = result.change_latent.mean(axis=0)
    assert spearman(change_per_column, map_per_column) >= 0.9


@pytest.mark.parametrize("scheduler", ["euler", "heun", "lms", "ddim", "unipc", "dpmpp_2m", "dpmpp_sde", "kdpm2"])
def test_pinned_latent_is_the_schedulers_own_forward_process(tiny_model, scheduler):
    """q(x0, T) equals scheduler.add_noise at every first-order evaluation (where add_noise is exact)."""
    sched = make_scheduler(tiny_model.scheduler_config, scheduler)
    timesteps = prepare_scheduler(sched, 6, 1.0)
    noising = DiscreteTimeNoising(sched)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for index, t in enumerate(timesteps):
        if sched.order == 1 or index % 2 == 0:
            expected = sched.add_noise(x0, noise, t[None])
            sigma = current_sigma(sched, t)
            assert torch.allclose(noising.noised(x0, noise, sigma), expected, rtol=1e-4, atol=1e-4), index
        sched.scale_model_input(x0, t)
        sched.step(torch.zeros_like(x0), t, x0)


@pytest.mark.parametrize("scheduler", ["heun", "kdpm2", "dpmpp_sde"])
def test_order_two_evaluations_are_grouped_as_the_scheduler_steps(tiny_model, images, scheduler, monkeypatch):
    """Every UNet call is one planned evaluation, and plan steps start where the scheduler starts a step."""
    seen = []
    unet = tiny_model.pipe.unet
    original = unet.forward

    def spy(sample, timestep, *args, **kwargs):
        sched = tiny_model.pipe.scheduler
        seen.append((float(timestep), getattr(sched, "state_in_first_order", True)))
        return original(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    result = compute_edit(tiny_model, settings(scheduler=scheduler), images["photo"], images["gradient"])
    assert [t for t, _ in seen] == pytest.approx([e.timestep for e in result.plan.evaluations])
    starts = [e.index == 0 or e.step != result.plan.evaluations[e.index - 1].step for e in result.plan.evaluations]
    assert [first for _, first in seen] == starts


def test_seed_reproduces_and_differs(tiny_model, images):
    a = compute_edit(tiny_model, settings(seed=1), images["photo"], images["gradient"])
    b = compute_edit(tiny_model, settings(seed=1), images["photo"], images["gradient"])
    c = compute_edit(tiny_model, settings(seed=2), images["photo"], images["gradient"])
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_unaligned_size_and_modes_come_back_as_given(tiny_model, tmp_path):
    half = np.zeros((50, 70))
    half[:, 35:] = 1.0
    for mode in ("RGB", "L", "RGBA", "P"):
        photo = save_rgb(tmp_path / f"odd-{mode}.png", 70, 50, mode=mode)
        if mode == "RGBA":
            rgba = Image.open(photo)
            alpha = np.tile(np.linspace(0, 255, 70).astype(np.uint8), (50, 1))
            rgba.putalpha(Image.fromarray(alpha))
            rgba.save(photo)
        change = save_map(tmp_path / "half.png", half)
        result = compute_edit(tiny_model, settings(), photo, change)
        original = Image.open(photo)
        assert result.image.size == (70, 50) and result.image.mode == original.mode
        out, src = np.asarray(result.image), np.asarray(original)
        assert np.array_equal(out[:, :35], src[:, :35])  # map 0: bit-identical
        assert not np.array_equal(out[:, 40:], src[:, 40:])  # map 1: changed
        if mode == "RGBA":
            assert np.array_equal(out[..., 3], src[..., 3])  # alpha carried over


def test_without_paste_back_the_vae_round_trip_shows(tiny_model, images):
    result = compute_edit(tiny_model, settings(paste_back=False), images["photo"], images["black"])
    assert torch.equal(result.latents, result.x0)
    assert not np.array_equal(np.asarray(result.image), np.asarray(Image.open(images["photo"])))


def test_map_of_another_size_is_fitted_with_a_notice(tiny_model, images, tmp_path, capsys):
    from diffdiff_cli.progress import Reporter

    small = save_map(tmp_path / "small.png", np.tile(np.linspace(0, 1, 16), (16, 1)))
    result = compute_edit(tiny_model, settings(), images["photo"], small, Reporter(quiet=False))
    assert result.image.size == (64, 64)
    assert "resized" in capsys.readouterr().err


def test_invert_map_swaps_keep_and_change(tiny_model, images):
    result = compute_edit(tiny_model, settings(invert_map=True), images["photo"], images["white"])
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.open(images["photo"])))
