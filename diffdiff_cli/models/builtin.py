"""Built-in models: real architectures with tiny random weights, built offline and deterministically.

They exercise every code path a real checkpoint does (tokenizer, text encoder, UNet, an 8x VAE,
the model's own scheduler) in well under a second, and are cached as ordinary diffusers folders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from diffdiff_cli.errors import InputError
from diffdiff_cli.models.registry import BUILTINS
from diffdiff_cli.models.tokenizer import VOCAB_SIZE, write_clip_tokenizer_files

BUILD_VERSION = 1  # bump when a built-in's configs change, so caches rebuild

# Stable Diffusion 1.x's own scheduler settings (PNDM / PLMS).
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


def builtin_configs(name: str) -> tuple[str, dict, int]:
    """Family, scheduler config and VAE scale factor of a built-in, without building it."""
    return BUILTINS[name].family, dict(_SCHEDULERS[name]), 8


def cache_root() -> Path:
    base = os.environ.get("DIFFDIFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diffdiff"
    )
    return Path(base)


def builtin_folder(name: str) -> Path:
    """The diffusers folder of a built-in, built on first use (atomically, so parallel runs are safe)."""
    if name not in BUILTINS:
        raise InputError(f"unknown built-in model {name!r}; choose one of: {', '.join(BUILTINS)}")
    folder = cache_root() / "builtin" / f"{name}-v{BUILD_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        _BUILDERS[name]().save_pretrained(staging, safe_serialization=True)
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_tiny_sd15():
    """The SD 1.x pipeline with tiny random weights (seeded, so every machine builds the same model)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    return StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


_BUILDERS = {"tiny-sd15": build_tiny_sd15}
_SCHEDULERS = {"tiny-sd15": SD15_SCHEDULER}
