"""Precision per component, as diffusers' own pipelines run them (checked on the CPU on tiny models)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import save_map, save_rgb
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.families import FAMILIES
from diffdiff_cli.models.load import Runtime, component_dtypes, half_precision_for, load_model
from diffdiff_cli.models.registry import resolve_model


def test_fp16_keeps_the_sd15_vae_in_fp16():
    pipe = load_model(resolve_model("tiny-sd15"), offline=True, runtime=Runtime(device="cpu", dtype="fp16")).pipe
    assert pipe.vae.config.force_upcast  # diffusers' SD pipelines do not read it: the VAE runs in fp16
    assert (pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype) == (torch.float16,) * 3


def test_fp16_sdxl_vae_is_fp16_at_rest_and_fp32_around_encode_and_decode(tmp_path):
    loaded = load_model(resolve_model("tiny-sdxl"), offline=True, runtime=Runtime(device="cpu", dtype="fp16"))
    vae = loaded.pipe.vae
    assert vae.dtype == torch.float16 and loaded.pipe.unet.dtype == torch.float16
    seen = []
    encode, decode = vae.encode, vae.decode
    vae.encode = lambda x, *a, **k: (seen.append(("encode", vae.dtype, x.dtype)), encode(x, *a, **k))[1]
    vae.decode = lambda z, *a, **k: (seen.append(("decode", vae.dtype, z.dtype)), decode(z, *a, **k))[1]
    photo = save_rgb(tmp_path / "p.png", 32, 32)
    change = save_map(tmp_path / "m.png", np.tile(np.linspace(0, 1, 32), (32, 1)))
    result = compute_edit(loaded, EditSettings(prompt="x", steps=2, seed=1, fit="full"), photo, change)
    assert seen == [("encode", torch.float32, torch.float32), ("decode", torch.float32, torch.float32)]
    assert vae.dtype == torch.float16 and result.image.size == (32, 32)


def test_auto_picks_bf16_where_fp16_overflows():
    auto, fp16 = Runtime(), Runtime(dtype="fp16")
    for name in ("flux", "kontext", "qwen-image", "z-image", "chroma", "flux2-klein"):
        assert half_precision_for(FAMILIES[name], auto, torch.float16) == torch.bfloat16
        assert half_precision_for(FAMILIES[name], fp16, torch.float16) == torch.float16  # asked for: given
    for name in ("sd", "sdxl", "sd3"):
        assert half_precision_for(FAMILIES[name], auto, torch.float16) == torch.float16
    assert component_dtypes(FAMILIES["sd3"], auto, torch.float16) == {"text_encoder_3": torch.bfloat16}
    assert component_dtypes(FAMILIES["sd3"], fp16, torch.float16) == {}
    assert component_dtypes(FAMILIES["sd"], auto, torch.float16) == {}
    assert component_dtypes(FAMILIES["sd3"], auto, torch.float32) == {}  # the CPU: fp32 throughout
