"""LoRAs, embeddings and a VAE on tiny models, made here by hand; the same promises as the bare models."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.families import FAMILIES
from diffdiff_cli.models.load import load_model
from diffdiff_cli.models.registry import resolve_model
from diffdiff_cli.sample.families import adapter_for
from diffdiff_cli.schedulers import make_scheduler
from lora_helpers import fresh_copy, pipeline_lora, save_lora, to_kohya, with_extras

PROMPT = "a red circle on a blue background"
FAMILY_MODELS = ["tiny-sd15", "tiny-sdxl", "tiny-flux"]
_models: dict = {}
_loras: dict = {}


@pytest.fixture
def base(tiny_model):
    """name -> the bare model, loaded once per module (tiny-sd15 is the session's)."""
    _models.setdefault("tiny-sd15", tiny_model)

    def get(name):
        if name not in _models:
            _models[name] = load_model(resolve_model(name), offline=True)
        return _models[name]

    return get


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """name -> (LoRA a, LoRA b) files for that model, made once."""
    folder = tmp_path_factory.mktemp("loras")

    def get(model):
        if model.label not in _loras:
            stem = model.label.replace("tiny-", "")
            _loras[model.label] = tuple(
                save_lora(pipeline_lora(model.pipe, seed), folder / f"{stem}-{tag}.safetensors") for seed, tag in ((1, "a"), (2, "b"))
            )
        return _loras[model.label]

    return get


def settings(**overrides) -> EditSettings:
    values = dict(prompt=PROMPT, steps=3, seed=5, fit="full")
    values.update(overrides)
    return EditSettings(**values)


def edit(model, images, map_name="white", **overrides):
    return compute_edit(model, settings(**overrides), images["photo"], images[map_name])


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_scale_zero_is_no_lora_and_the_change_grows_with_the_scale(images, base, lora_files, name):
    model = base(name)
    lora, _ = lora_files(model)
    # compare copies with copies: a tensor's memory alignment can change CPU matmul rounding (~1e-7), and
    # loaded weights sit wherever the file put them while copies are freshly allocated
    plain = edit(fresh_copy(model), images)
    results = {scale: edit(with_extras(model, loras=[f"{lora}:{scale}"]), images) for scale in (0.0, 0.5, 1.0)}
    assert torch.equal(results[0.0].latents, plain.latents)
    assert np.array_equal(np.asarray(results[0.0].image), np.asarray(plain.image))
    change = {scale: (results[scale].latents - plain.latents).abs().mean().item() for scale in (0.5, 1.0)}
    assert 0 < change[0.5] < change[1.0], change


def img2img(pipe, family, photo, steps, seed):
    """The family's own diffusers img2img pipeline, as test_families runs it."""
    pipe.scheduler = make_scheduler(dict(pipe.scheduler.config), None, seed)
    extra = {} if family.name == "sdxl" else {"height": 64, "width": 64}
    out = pipe(PROMPT, image=Image.open(photo), strength=1.0, num_inference_steps=steps,
               guidance_scale=FAMILIES[family.name].default_guidance, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np", **extra).images[0]
    return (out * 255).round().astype(np.uint8)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # diffusers' own second load_lora_weights
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_two_loras_equal_diffusers_set_adapters_and_map_one_is_still_img2img(images, base, lora_files, name):
    model = base(name)
    a, b = lora_files(model)
    reference = fresh_copy(model)
    reference.pipe.load_lora_weights(a, adapter_name="a")
    reference.pipe.load_lora_weights(b, adapter_name="b")
    reference.pipe.set_adapters(["a", "b"], [0.7, -0.4])
    expected = edit(reference, images)
    unfused = with_extras(model, loras=[f"{a}:0.7", f"{b}:-0.4"], fuse=False)
    assert torch.equal(edit(unfused, images).latents, expected.latents)
    fused = edit(with_extras(model, loras=[f"{a}:0.7", f"{b}:-0.4"]), images)
    torch.testing.assert_close(fused.latents, expected.latents, rtol=1e-4, atol=1e-4)
    assert not torch.equal(expected.latents, edit(model, images).latents)
    # map all white with the LoRAs in both: diffusers' own img2img pipeline, seed for seed
    ours = np.asarray(edit(unfused, images).image).astype(int)
    theirs = img2img(reference.pipe, model.family, images["photo"], 3, 5).astype(int)
    assert np.abs(ours - theirs).max() <= 1


def test_a_kohya_lora_equals_the_same_weights_in_diffusers_layout(images, base, lora_files, tmp_path):
    model = base("tiny-sd15")
    diffusers_file, _ = lora_files(model)
    state = pipeline_lora(model.pipe, 1)  # the weights of `diffusers_file`
    kohya_file = save_lora(to_kohya(state), tmp_path / "kohya.safetensors")
    assert torch.equal(edit(with_extras(model, loras=[kohya_file]), images).latents,
                       edit(with_extras(model, loras=[diffusers_file]), images).latents)


def _encoded(model, prompt):
    with torch.inference_mode():
        return adapter_for(model.family.name, model.pipe, 0.0).encode_prompt(prompt, "", (64, 64))


def test_an_embedding_changes_the_prompt_as_load_textual_inversion_does(base, tmp_path):
    model = base("tiny-sd15")
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    a1111_pt = tmp_path / "shape-pt.pt"
    torch.save({"string_to_param": {"*": vectors}, "string_to_token": {"*": 265}, "name": "shape-pt", "step": 100}, a1111_pt)
    a1111_st = tmp_path / "shape-st.safetensors"
    save_file({"emb_params": vectors}, str(a1111_st))
    diffusers_file = tmp_path / "learned_embeds.safetensors"
    save_file({"<shape>": vectors}, str(diffusers_file))
    ours = with_extras(model, embeddings=[str(a1111_pt), str(a1111_st), f"{diffusers_file}:shapetok"], allow_pickle=True)
    reference = fresh_copy(model, tokenizers=True)
    reference.pipe.load_textual_inversion(str(diffusers_file), token="refshape")
    with torch.inference_mode():
        expected = reference.pipe.encode_prompt(f"a refshape {PROMPT}", "cpu", 1, False)[0]
    for token in ("shape-pt", "shape-st", "shapetok"):
        assert torch.equal(_encoded(ours, f"a {token} {PROMPT}"), expected), token
    assert not torch.equal(_encoded(model, f"a shapetok {PROMPT}"), expected)  # the bare model reads other tokens
    assert set(ours.extras_record["ti_hashes"]) == {"shape-pt", "shape-st", "shapetok"}


def test_an_sdxl_embedding_fills_both_encoders(base, tmp_path):
    model = base("tiny-sdxl")
    generator = torch.Generator().manual_seed(4)
    clip_l, clip_g = torch.randn(1, 32, generator=generator), torch.randn(1, 64, generator=generator)
    path = tmp_path / "xlshape.safetensors"
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    ours = with_extras(model, embeddings=[str(path)])
    reference = fresh_copy(model, tokenizers=True).pipe
    reference.load_textual_inversion(clip_l, token="xlshape", text_encoder=reference.text_encoder, tokenizer=reference.tokenizer)
    reference.load_textual_inversion(clip_g, token="xlshape", text_encoder=reference.text_encoder_2, tokenizer=reference.tokenizer_2)
    with torch.inference_mode():
        embeds, _, pooled, _ = reference.encode_prompt(f"an xlshape {PROMPT}", device="cpu", do_classifier_free_guidance=False)
    got = _encoded(ours, f"an xlshape {PROMPT}")[0]
    assert torch.equal(got.embeddings, embeds) and torch.equal(got.text_embeds, pooled)


@pytest.fixture
def other_vae(base, tmp_path):
    """A second VAE for tiny-sd15 (same shape, other weights): as a diffusers folder and as an LDM single file."""
    from diffusers import AutoencoderKL

    from ldm_convert import vae_to_ldm

    torch.manual_seed(7)
    vae = AutoencoderKL.from_config(base("tiny-sd15").pipe.vae.config)
    vae.save_pretrained(tmp_path / "vae-folder")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae).items()}, str(tmp_path / "vae.safetensors"))
    return str(tmp_path / "vae-folder"), str(tmp_path / "vae.safetensors")


def test_vae_swaps_the_decoder_and_map_zero_stays_bit_identical(images, base, other_vae):
    model = base("tiny-sd15")
    folder, single_file = other_vae
    plain = edit(model, images, "gradient")
    swapped = {source: edit(with_extras(model, vae=source), images, "gradient") for source in (folder, single_file)}
    assert np.array_equal(np.asarray(swapped[folder].image), np.asarray(swapped[single_file].image))
    out, before = np.asarray(swapped[folder].image), np.asarray(plain.image)
    assert not np.array_equal(out, before)
    original = np.asarray(Image.open(images["photo"]))
    untouched = np.asarray(Image.open(images["gradient"])) == 0
    assert untouched.any() and np.array_equal(out[untouched], original[untouched])
    record = with_extras(model, vae=single_file).extras_record
    with open(single_file, "rb") as handle:
        assert record == {"vae_name": "vae.safetensors", "vae_hash": hashlib.sha256(handle.read()).hexdigest()[:10]}
