"""SDXL, SD3 and Flux through the one engine: the same promises as SD 1.x, on tiny offline models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.errors import InputError
from diffdiff_cli.families import FAMILIES
from diffdiff_cli.models.load import Runtime, load_model
from diffdiff_cli.models.registry import resolve_model
from diffdiff_cli.plan import schedule_run
from diffdiff_cli.schedulers import make_scheduler

MODELS = ["tiny-sdxl", "tiny-sd3", "tiny-flux"]
_loaded: dict = {}


def model(name, **kwargs):
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _loaded:
        refiner = kwargs.pop("refiner", None)
        _loaded[key] = load_model(
            resolve_model(name), offline=True, runtime=Runtime(**kwargs), refiner=resolve_model(refiner) if refiner else None
        )
    return _loaded[key]


def settings(**overrides) -> EditSettings:
    values = dict(prompt="a red circle on a blue background", steps=6, seed=11, fit="full")  # the image at its own size
    values.update(overrides)
    return EditSettings(**values)


def reference(loaded, photo, steps, strength, seed, size):
    """The family's own diffusers img2img pipeline, same components, seed and scheduler."""
    pipe = loaded.pipe
    pipe.scheduler = make_scheduler(loaded.scheduler_config, None, seed)
    extra = {} if loaded.family.name == "sdxl" else {"height": size[1], "width": size[0]}
    out = pipe(
        "a red circle on a blue background",
        image=Image.open(photo),
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=FAMILIES[loaded.family.name].default_guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **extra,
    ).images[0]
    return (out * 255).round().astype(np.uint8)


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_map_all_white_is_the_familys_img2img(images, name, strength):
    loaded = model(name)
    result = compute_edit(loaded, settings(strength=strength), images["photo"], images["white"])
    expected = reference(loaded, images["photo"], 6, strength, 11, (64, 64))
    diff = np.abs(np.asarray(result.image).astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"{name}: max difference {diff.max()}/255"


@pytest.mark.parametrize("name", MODELS)
def test_map_all_black_is_untouched(images, name):
    result = compute_edit(model(name), settings(), images["photo"], images["black"])
    assert torch.equal(result.latents, result.x0)
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.open(images["photo"])))


@pytest.mark.parametrize("name", MODELS)
def test_change_rises_with_the_map(images, name):
    result = compute_edit(model(name), settings(steps=20), images["photo"], images["gradient"])
    change_per_column = (result.latents - result.x0).abs().float().mean(dim=(0, 1, 2)).numpy()
    assert spearman(change_per_column, result.change_latent.mean(axis=0)) >= 0.9


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
@pytest.mark.parametrize("steps,strength", [(8, 1.0), (10, 0.55)])
def test_flow_thresholds_follow_sigma(name, steps, strength):
    loaded = model(name)
    scheduler, timesteps, plan = schedule_run(
        loaded.family, loaded.scheduler_config, None, steps, strength, "timestep", (16, 16)
    )
    sigma_min = float(make_scheduler(loaded.scheduler_config, None).sigma_min)
    sigmas = [float(t) / 1000 for t in timesteps]
    assert plan.time_to == pytest.approx(sigma_min)
    for e, sigma in zip(plan.evaluations, sigmas):
        assert e.sigma == pytest.approx(sigma)
        assert e.threshold == pytest.approx((sigma - sigma_min) / (sigmas[0] - sigma_min))
    # SD3 and Flux cut the schedule for strength as their pipelines do: start at int(N - N * s)
    assert len(plan.evaluations) == steps - int(steps - steps * strength)


def test_flux_sides_need_not_be_multiples_of_16(tmp_path):
    photo = save_rgb(tmp_path / "odd.png", 72, 40)
    change = save_map(tmp_path / "half.png", np.tile((np.arange(72) >= 36).astype(float), (40, 1)))
    result = compute_edit(model("tiny-flux"), settings(), photo, change)
    assert result.image.size == (72, 40)
    assert np.array_equal(np.asarray(result.image)[:, :36], np.asarray(Image.open(photo))[:, :36])


def test_sd3_runs_without_t5(images):
    loaded = model("tiny-sd3", no_t5=True)
    assert loaded.pipe.text_encoder_3 is None
    result = compute_edit(loaded, settings(), images["photo"], images["gradient"])
    black = compute_edit(loaded, settings(), images["photo"], images["black"])
    assert result.image.size == (64, 64)
    assert np.array_equal(np.asarray(black.image), np.asarray(Image.open(images["photo"])))


def test_refiner_continues_one_threshold_ramp(images, monkeypatch):
    loaded = model("tiny-sdxl", refiner="tiny-sdxl-refiner")
    calls = []
    for role, pipe in (("base", loaded.pipe), ("refiner", loaded.refiner)):
        original = pipe.unet.forward

        def spy(sample, timestep, *args, _role=role, _original=original, **kwargs):
            calls.append((_role, float(timestep)))
            return _original(sample, timestep, *args, **kwargs)

        monkeypatch.setattr(pipe.unet, "forward", spy)
    result = compute_edit(loaded, settings(steps=10, refiner_start=0.7), images["photo"], images["gradient"])
    plan = result.plan
    thresholds = [e.threshold for e in plan.evaluations]
    assert thresholds[0] == 1.0 and thresholds[-1] < 0.05
    assert all(a > b for a, b in zip(thresholds, thresholds[1:]))  # one ramp, no restart at the hand-over
    roles = [e.denoiser for e in plan.evaluations]
    assert roles[0] == "base" and roles[-1] == "refiner" and roles == sorted(roles)  # base first, then refiner
    assert [role for role, _ in calls] == roles  # the refiner's UNet really ran those evaluations
    black = compute_edit(loaded, settings(steps=10, refiner_start=0.7), images["photo"], images["black"])
    assert np.array_equal(np.asarray(black.image), np.asarray(Image.open(images["photo"])))


def test_refiner_needs_an_sdxl_base():
    with pytest.raises(InputError, match="--refiner"):
        load_model(resolve_model("tiny-sd15"), offline=True, refiner=resolve_model("tiny-sdxl-refiner"))


@pytest.mark.parametrize("name,scheduler", [("tiny-flux", "heun"), ("tiny-sd3", "dpmpp_2m"), ("tiny-flux", "ddim")])
def test_flow_models_refuse_other_samplers(images, name, scheduler):
    with pytest.raises(InputError, match="--scheduler"):
        compute_edit(model(name), settings(scheduler=scheduler), images["photo"], images["white"])


def test_sd3_heun_counts_every_evaluation(images):
    result = compute_edit(model("tiny-sd3"), settings(scheduler="heun", steps=5), images["photo"], images["black"])
    assert len(result.plan.evaluations) == 2 * 5 - 1 and result.plan.steps == 5
    assert torch.equal(result.latents, result.x0)


def test_nan_in_the_decoded_image_fails_loudly_instead_of_writing_black():
    from diffdiff_cli.errors import RunError
    from diffdiff_cli.finish import to_uint8

    decoded = torch.zeros(1, 3, 8, 8)
    assert to_uint8(decoded).shape == (8, 8, 3)
    decoded[0, 1, 2, 3] = float("nan")
    with pytest.raises(RunError, match="NaN"):
        to_uint8(decoded)


def test_flux_warns_that_it_ignores_negative_prompts(images, capsys):
    from diffdiff_cli.progress import Reporter

    compute_edit(model("tiny-flux"), settings(negative_prompt="blur", steps=2), images["photo"], images["black"], Reporter())
    assert "ignore --negative-prompt" in capsys.readouterr().err
