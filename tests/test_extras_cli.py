"""--lora, --embedding, --vae, --clip-skip and long weighted prompts through the command line: metadata,
--like, and bad input (exit 2, one line naming the file and what was found)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffdiff_cli.errors import InputError
from diffdiff_cli.models.extras import parse_embedding, parse_lora
from lora_helpers import pipeline_lora, save_lora


def run(capsys, *args):
    """The `diffdiff` entry point in this process (the same code path as the console script, without a
    fresh interpreter per call): (exit code, stdout, stderr)."""
    from diffdiff_cli.cli import main

    args = [*args, "--fit", "full"] if args and args[0] == "edit" else args
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def tensors(path, shapes: dict) -> str:
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Files the checks must tell apart by their keys (the weights do not matter for them)."""
    text_g = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
    cross = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    (tmp_path / "vae16").mkdir()
    (tmp_path / "vae16" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 16}))
    return {
        "sdxl_lora": tensors(tmp_path / "xl.safetensors", {f"{text_g}.lora_A.weight": (4, 64), f"{text_g}.lora_B.weight": (64, 4)}),
        "flux_lora": tensors(tmp_path / "flux.safetensors", {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 32),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (32, 4),
        }),
        "wide_lora": tensors(tmp_path / "wide.safetensors", {f"{cross}.lora_A.weight": (4, 96), f"{cross}.lora_B.weight": (64, 4)}),
        "embedding": tensors(tmp_path / "emb.safetensors", {"emb_params": (2, 32)}),
        "sdxl_embedding": tensors(tmp_path / "xlemb.safetensors", {"clip_l": (1, 32), "clip_g": (1, 64)}),
        "not_a_lora": tensors(tmp_path / "random.safetensors", {"weight": (3, 3)}),
        "vae16": str(tmp_path / "vae16"),
    }


BAD = [
    (["--lora", "missing.safetensors"], "--lora missing.safetensors: no such file"),
    (["--lora", "{embedding}"], "not a LoRA: it holds a textual-inversion embedding"),
    (["--lora", "{not_a_lora}"], "not a LoRA: it holds 1 tensors (first 'weight')"),
    (["--lora", "{sdxl_lora}:0.8"], "keys look like an SDXL LoRA (a second text encoder); the model is Stable Diffusion 1.x/2.x"),
    (["--lora", "{flux_lora}"], "keys look like a Flux LoRA (Flux block names); the model is Stable Diffusion 1.x/2.x"),
    (["--embedding", "{sdxl_embedding}"], "an SDXL embedding (clip_l/clip_g vectors); the model is Stable Diffusion 1.x/2.x"),
    (["--embedding", "{embedding}", "--model", "tiny-flux"], "embeddings work with SD 1.x/2.x and SDXL models; the model is Flux"),
    (["--embedding", "{embedding}", "--model", "tiny-sdxl"], "an SD 1.x/2.x embedding (32-wide vectors); SDXL models need one with clip_l and clip_g"),
    (["--vae", "{vae16}"], "a VAE with 16 latent channels; Stable Diffusion 1.x/2.x models use 4"),
    (["--vae", "{embedding}"], "not a VAE: it holds a textual-inversion embedding"),
    (["--clip-skip", "0"], "--clip-skip 0: must be 1 or more"),
    (["--clip-skip", "2", "--model", "tiny-flux"], "--clip-skip: Flux reads only the pooled output of its CLIP encoder"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_bad_extras_exit_2_before_the_model_loads(capsys, images, files, extra, message):
    code, out, err = run(capsys, "edit", images["photo"], "--map", images["white"], "-p", "x", "-o", images["dir"] / "o.png",
                         *[e.format(**files) for e in extra])
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("diffdiff: error: ")
    assert not (images["dir"] / "o.png").exists()


def test_a_pickle_needs_allow_pickle(capsys, images, tmp_path):
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, tmp_path / "emb.pt")
    code, _, err = run(capsys, "edit", images["photo"], "--map", images["white"], "-p", "x", "--embedding", tmp_path / "emb.pt")
    assert code == 2 and "pass --allow-pickle to read its tensors only" in err


@pytest.mark.parametrize("extra, message", [
    (["--lora", "{wide_lora}"], "its cross-attention layers take 96-wide text embeddings; this Stable Diffusion 1.x/2.x model's take 32"),
    (["--clip-skip", "9"], "--clip-skip 9: the model's text encoder has 5 layers; choose 1 to 5"),
])
def test_what_only_the_loaded_model_tells_is_exit_2_too(capsys, images, files, extra, message):
    code, _, err = run(capsys, "edit", images["photo"], "--map", images["white"], "-p", "x", "--steps", 1,
                       *[e.format(**files) for e in extra])
    assert code == 2 and message in err.strip().splitlines()[-1], err


def test_paths_with_colons(tmp_path):
    odd = tensors(tmp_path / "a:b.safetensors", {"emb_params": (1, 32)})
    assert parse_lora(odd).path == odd and parse_lora(odd).scale == 1.0
    assert parse_lora(f"{odd}:0.5") == parse_lora(f"{odd}:.5") and parse_lora(f"{odd}:0.5").scale == 0.5
    assert parse_lora(str(parse_lora(f"{odd}:-0.25"))).scale == -0.25  # the canonical form parses back
    assert parse_embedding(odd).token == "a:b" and parse_embedding(f"{odd}:tok").token == "tok"
    with pytest.raises(InputError, match="--lora missing: no such file"):
        parse_lora("missing:0.5")


def addnet_hash(path: str) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def test_extras_are_recorded_as_a1111_writes_them_and_like_reuses_them(capsys, images, tiny_model, tmp_path):
    from diffusers import AutoencoderKL

    from ldm_convert import vae_to_ldm

    lora = save_lora(pipeline_lora(tiny_model.pipe, 1), tmp_path / "shapes.safetensors")
    embedding = tensors(tmp_path / "emb.safetensors", {"emb_params": (2, 32)})
    vae_model = AutoencoderKL.from_config(tiny_model.pipe.vae.config)
    vae = str(tmp_path / "vae.safetensors")
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae_model).items()}, vae)
    words = "red green blue circle square".split()
    prompt = r"a (mytok:1.2) \(shape\) [dim], " + " ".join(words[i % 5] for i in range(150))
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", images["photo"], "--map", images["gradient"], "-p", prompt, "--steps", 2, "--seed", 1,
                       "--lora", f"{lora}:0.5", "--embedding", f"{embedding}:mytok", "--vae", vae, "--clip-skip", 2, "-o", out)
    assert code == 0, err
    assert "dropped" not in err and "truncat" not in err  # 150+ tokens: chunks, nothing cut
    with Image.open(out) as image:
        parameters, record = image.info["parameters"], json.loads(image.info["diffdiff"])
        pixels = np.asarray(image)
    assert parameters.split("\n")[0] == prompt  # as typed
    tokens = {
        "Clip skip: 2", f'Lora hashes: "shapes: {addnet_hash(lora)}"',
        f'TI hashes: "mytok: {hashlib.sha256(Path(embedding).read_bytes()).hexdigest()[:12]}"',
        "VAE: vae.safetensors", f"VAE hash: {hashlib.sha256(Path(vae).read_bytes()).hexdigest()[:10]}",
    }
    assert all(token in parameters for token in tokens), parameters
    assert record["loras"] == [f"{lora}:0.5"] and record["embeddings"] == [f"{embedding}:mytok"]
    assert record["vae"] == vae and record["clip_skip"] == 2 and record["lora_hashes"] == {"shapes": addnet_hash(lora)}

    again = tmp_path / "again.png"
    code, _, err = run(capsys, "edit", images["photo"], "--like", out, "-o", again)
    assert code == 0, err
    with Image.open(again) as image:
        assert json.loads(image.info["diffdiff"])["loras"] == record["loras"]
        assert np.array_equal(np.asarray(image), pixels)
