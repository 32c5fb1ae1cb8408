"""Qwen-Image, Z-Image, Chroma, FLUX.2 [klein] and Flux.1 Kontext through the one engine, on tiny offline models.

The same promises as the older families: map 0 leaves the image bit-identical, map 1 is the family's own
diffusers pipeline with the same seed (klein: its inpaint pipeline with an all-white mask; Kontext:
FluxKontextPipeline at strength 1 and FluxKontextInpaintPipeline with a white mask below it), change
rises with the map, and the plan's thresholds follow the flow rule at every evaluation.
"""

from __future__ import annotations

import io
import json
import subprocess
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.cli import main
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.families import FAMILIES, family_of_pipeline
from diffdiff_cli.models.load import Runtime, load_model, read_configs
from diffdiff_cli.models.registry import ALIAS_INFO, BUILTINS, model_defaults, resolve_model
from diffdiff_cli.plan import free_share, schedule_run
from diffdiff_cli.schedulers import make_scheduler

MODELS = ["tiny-qwen-image", "tiny-z-image", "tiny-chroma", "tiny-flux2-klein", "tiny-kontext"]
PROMPT = "a red circle on a blue background"
_loaded: dict = {}


def model(name):
    if name not in _loaded:
        _loaded[name] = load_model(resolve_model(name), offline=True)
    return _loaded[name]


def settings(**overrides) -> EditSettings:
    values = dict(prompt=PROMPT, steps=6, seed=11, fit="full")
    values.update(overrides)
    return EditSettings(**values)


def run(*args) -> subprocess.CompletedProcess:
    """`diffdiff ARGS` through its entry point, in this process (the imports are paid once per session)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(["diffdiff", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture
def wide(tmp_path):
    """A 128x32 photo (8 FLUX.2 cells and 16 cells of the others across) and its maps."""
    width, height = 128, 32
    return {
        "photo": save_rgb(tmp_path / "photo.png", width, height),
        "white": save_map(tmp_path / "white.png", np.ones((height, width))),
        "black": save_map(tmp_path / "black.png", np.zeros((height, width))),
        "gradient": save_map(tmp_path / "gradient.png", np.tile(np.linspace(0, 1, width), (height, 1))),
        "size": (width, height),
    }


def reference(loaded, images, steps, strength, seed, guidance=None):
    """The family's own diffusers pipeline on the same components, seed and scheduler; and its timesteps."""
    from diffusers import FluxKontextInpaintPipeline, FluxKontextPipeline

    pipe = loaded.pipe
    pipe.scheduler = make_scheduler(loaded.scheduler_config, None, seed)
    family = loaded.family.name
    guidance = loaded.family.default_guidance if guidance is None else guidance
    width, height = images["size"]
    seen = []

    def record(_pipe, _i, t, kwargs):
        seen.append(float(t))
        return {}

    kwargs = dict(
        prompt=PROMPT, image=Image.open(images["photo"]), strength=strength, num_inference_steps=steps, height=height,
        width=width, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", callback_on_step_end=record,
    )
    if family == "qwen-image":
        kwargs.update(true_cfg_scale=guidance, negative_prompt=" ")
    elif family == "flux2-klein":
        kwargs.update(guidance_scale=guidance, mask_image=Image.open(images["white"]))
    elif family == "kontext":
        # Kontext's own pipeline has no strength: it always starts from pure noise (our strength 1); its
        # inpaint pipeline has the img2img strength path. Both at the map's own size (no 1 MP resize).
        kwargs.update(guidance_scale=guidance, max_area=width * height, _auto_resize=False)
        if strength == 1.0:
            kwargs.pop("strength")
            pipe = FluxKontextPipeline(**pipe.components)
        else:
            pipe = FluxKontextInpaintPipeline(**pipe.components)
            kwargs.update(mask_image=Image.open(images["white"]))
    else:
        kwargs.update(guidance_scale=guidance)
    out = pipe(**kwargs).images[0]
    return (out * 255).round().astype(np.uint8), seen


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_map_all_white_is_the_familys_pipeline(wide, name, strength):
    loaded = model(name)
    result = compute_edit(loaded, settings(strength=strength), wide["photo"], wide["white"])
    expected, timesteps = reference(loaded, wide, 6, strength, 11)
    diff = np.abs(np.asarray(result.image).astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"{name}: max difference {diff.max()}/255"
    # the plan (sigmas, shift, strength cut) is the one the pipeline ran
    assert [e.timestep for e in result.plan.evaluations] == pytest.approx(timesteps, abs=1e-4)


def test_z_image_turbo_runs_unguided_as_its_pipeline(wide):
    loaded = model("tiny-z-image")
    result = compute_edit(loaded, settings(guidance=0.0), wide["photo"], wide["white"])
    expected, _ = reference(loaded, wide, 6, 1.0, 11, guidance=0.0)
    assert np.abs(np.asarray(result.image).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("name", MODELS)
def test_map_all_black_is_untouched(wide, name):
    result = compute_edit(model(name), settings(), wide["photo"], wide["black"])
    assert torch.equal(result.latents, result.x0)
    assert np.array_equal(np.asarray(result.image), np.asarray(Image.open(wide["photo"])))


@pytest.mark.parametrize("name", MODELS)
def test_the_seed_and_the_map_matter(wide, name):
    """Guards the equalities above against a model whose output ignores its input."""
    first = np.asarray(compute_edit(model(name), settings(steps=2), wide["photo"], wide["white"]).image).astype(int)
    second = np.asarray(compute_edit(model(name), settings(steps=2, seed=12), wide["photo"], wide["white"]).image).astype(int)
    photo = np.asarray(Image.open(wide["photo"])).astype(int)
    assert np.abs(first - second).max() > 5 and np.abs(first - photo).max() > 20  # far above the 1/255 tolerance


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("name", MODELS)
def test_change_rises_with_the_map(wide, name):
    result = compute_edit(model(name), settings(steps=20), wide["photo"], wide["gradient"])
    change_per_column = (result.latents - result.x0).abs().float().mean(dim=(0, 1, 2)).numpy()
    assert len(change_per_column) == (8 if name == "tiny-flux2-klein" else 16)
    assert spearman(change_per_column, result.change_latent.mean(axis=0)) >= 0.9


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("steps,strength", [(8, 1.0), (10, 0.55)])
def test_flow_thresholds_follow_sigma(name, steps, strength):
    configs = read_configs(resolve_model(name), offline=True)
    _, timesteps, plan = schedule_run(configs.family, configs.scheduler_config, None, steps, strength, "timestep", (16, 16))
    sigma_min = float(make_scheduler(configs.scheduler_config, None).sigma_min)
    sigmas = [float(t) / 1000 for t in timesteps]
    assert plan.time_to == pytest.approx(sigma_min)
    for e, sigma in zip(plan.evaluations, sigmas):
        assert e.sigma == pytest.approx(sigma)
        assert e.threshold == pytest.approx((sigma - sigma_min) / (sigmas[0] - sigma_min))
    assert len(plan.evaluations) == steps - int(steps - steps * strength)


def test_klein_works_on_the_patchified_grid_and_plan_agrees(tmp_path):
    """FLUX.2's engine cell is 16 px (2x2-patchified latents): edit, `plan` and the map all use that grid."""
    configs = read_configs(resolve_model("tiny-flux2-klein"), offline=True)
    assert (configs.vae_scale_factor, configs.latent_factor) == (8, 16)
    photo = save_rgb(tmp_path / "odd.png", 72, 40)  # not multiples of 16: padded, then cropped back
    stripe = np.zeros((40, 72))
    stripe[:, 36:48] = 1.0  # three quarters of the third 16 px cell, all of the sixth 8 px cell
    change = save_map(tmp_path / "stripe.png", stripe)
    result = compute_edit(model("tiny-flux2-klein"), settings(), photo, change)
    assert result.image.size == (72, 40) and result.change_latent.shape == (3, 5)
    assert tuple(result.latents.shape[1:]) == (128, 3, 5)
    assert np.array_equal(np.asarray(result.image)[:, :32], np.asarray(Image.open(photo))[:, :32])
    done = run("plan", "--model", "tiny-flux2-klein", "--map", change, "--steps", 6, "--fit", "full", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = [free_share(result.change_latent, e.threshold) for e in result.plan.evaluations]
    assert [row["free_share"] for row in report["evaluations"]] == pytest.approx(expected)
    assert expected[0] == 0.0 and expected[-1] == 1 / 5  # the column at 0.75 frees only once tau <= 0.75


@pytest.mark.parametrize("name", ["tiny-kontext", "tiny-flux2-klein"])
def test_the_input_is_also_the_reference(wide, monkeypatch, name):
    """Kontext and klein attend to the input's latent as reference tokens; without them the result changes."""
    from diffdiff_cli.sample.families.base import LatentAdapter

    with_reference = compute_edit(model(name), settings(steps=2), wide["photo"], wide["gradient"])
    monkeypatch.setattr(
        "diffdiff_cli.sample.families.kontext.FluxKontextAdapter.with_reference", LatentAdapter.with_reference
    )
    monkeypatch.setattr(
        "diffdiff_cli.sample.families.flux2_klein.Flux2KleinAdapter.with_reference", LatentAdapter.with_reference
    )
    without = compute_edit(model(name), settings(steps=2), wide["photo"], wide["gradient"])
    assert not torch.equal(with_reference.latents, without.latents)


@pytest.mark.parametrize(
    "class_name,family",
    [
        ("QwenImagePipeline", "qwen-image"),
        ("ZImagePipeline", "z-image"),
        ("ChromaPipeline", "chroma"),
        ("Flux2KleinPipeline", "flux2-klein"),
        ("FluxKontextPipeline", "kontext"),
    ],
)
def test_real_folders_are_recognised(class_name, family):
    assert family_of_pipeline(class_name, "x").name == family


@pytest.mark.parametrize("name", MODELS)
def test_a_saved_folder_reads_as_its_built_in(name):
    """`plan` on a diffusers folder of each family finds the family and the latent grid from its configs."""
    from diffdiff_cli.models.builtin import builtin_folder

    folder = read_configs(resolve_model(str(builtin_folder(name))), offline=True)
    built_in = read_configs(resolve_model(name), offline=True)
    assert folder.family == built_in.family and folder.latent_factor == built_in.latent_factor
    assert folder.scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"


def test_builtins_aliases_and_few_step_defaults():
    for name in MODELS:
        assert BUILTINS[name].family in FAMILIES
    for alias in ("qwen-image", "z-image-turbo", "chroma", "flux2-klein", "flux2-klein-9b", "flux-kontext"):
        assert ALIAS_INFO[alias].family in FAMILIES and resolve_model(alias).kind == "hub"
    assert model_defaults("z-image-turbo") == {"steps": 8, "guidance": 0.0}
    assert model_defaults("flux2-klein")["steps"] == 4


def test_bf16_families_get_bf16_on_gpus_unless_asked():
    from diffdiff_cli.models.load import half_precision_for

    assert half_precision_for(FAMILIES["qwen-image"], Runtime(), torch.float16) == torch.bfloat16
    assert half_precision_for(FAMILIES["qwen-image"], Runtime(dtype="fp16"), torch.float16) == torch.float16
    assert half_precision_for(FAMILIES["sdxl"], Runtime(), torch.float16) == torch.float16
    assert half_precision_for(FAMILIES["z-image"], Runtime(), torch.float32) == torch.float32


def test_schedule_rules_match_the_pipelines_helpers():
    from diffusers.pipelines.flux2.pipeline_flux2_klein_inpaint import compute_empirical_mu
    from diffusers.pipelines.z_image.pipeline_z_image_img2img import get_default_z_image_sigmas

    from diffdiff_cli.plan import empirical_shift, pipeline_sigmas

    for tokens in (16, 1024, 4096, 5000):
        for steps in (4, 28, 50):
            assert empirical_shift(tokens, steps) == compute_empirical_mu(tokens, steps)
    assert pipeline_sigmas("linspace_f32", 9) == get_default_z_image_sigmas(9)
    assert np.array_equal(pipeline_sigmas("linspace", 9), np.linspace(1.0, 1 / 9, 9))


def test_the_offline_qwen_tokenizer_has_the_real_special_ids_and_template():
    from diffdiff_cli.models.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<think>": 151667, "</think>": 151668}
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a red circle"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids) == ["a", "Ġred", "Ġcircle"]
    assert tokenizer.decode(tokenizer("Ünïcode ✓").input_ids) == "Ünïcode ✓"  # byte-level: nothing is unknown
