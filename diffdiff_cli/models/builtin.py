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

# SDXL's own: Euler, "leading" spacing.
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


# Built-ins trained offline and shipped as package data (a complete diffusers folder each, see training/).
SHIPPED = {"demo": "demo"}


def shipped_folder(name: str) -> Path:
    return Path(__file__).resolve().parent / SHIPPED[name]


def builtin_configs(name: str) -> tuple[str, dict, int]:
    """Family, scheduler config and VAE scale factor of a built-in, without building it."""
    if name in SHIPPED:
        import json

        scheduler = json.loads((shipped_folder(name) / "scheduler" / "scheduler_config.json").read_text())
        return BUILTINS[name].family, scheduler, 8
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
    if name in SHIPPED:
        return shipped_folder(name)
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


def _tiny_vae(latent_channels: int = 4, **config):
    """A 4-level VAE, so the scale factor is 8 as in real Stable Diffusion."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        **config,
    )


def _tiny_clip(hidden_size: int = 32, with_projection: bool = False, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


# A small synthetic T5 vocabulary (no real one is available offline): common words, then characters.
_T5_WORDS = (
    "a an the of on in at with and or to is photo picture painting sky cloud clouds stormy sunny sun night "
    "day red orange yellow green blue purple pink white black gray grey brown circle square triangle "
    "background foreground mountain mountains lake tree trees forest sea water field city dark light"
).split()


def _t5_tokenizer():
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in _T5_WORDS]
    pieces += [("▁", -2.0)] + [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    with tempfile.TemporaryDirectory() as tmp:
        T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(tmp)
        return T5Tokenizer.from_pretrained(tmp, local_files_only=True)


def _tiny_t5(d_model: int, vocab_size: int):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def build_tiny_sd15():
    """The SD 1.x pipeline with tiny random weights (seeded, so every machine builds the same model)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

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
    return StableDiffusionImg2ImgPipeline(
        vae=_tiny_vae(scaling_factor=0.18215),
        text_encoder=_tiny_clip(),
        tokenizer=_clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _tiny_xl_unet(cross_attention_dim: int, time_ids: int, seed: int):
    """SDXL's UNet layout, tiny: linear projections, text+time added embeddings (6 time ids, 5 for refiners)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_ids * 8 + 32,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )


def build_tiny_sdxl():
    """SDXL: two CLIP encoders (the second with projection, wider), size/crop time ids, an fp16-unsafe VAE."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(
        vae=_tiny_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=_tiny_clip(32),
        text_encoder_2=_tiny_clip(64, with_projection=True, seed=1),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=_tiny_xl_unet(cross_attention_dim=32 + 64, time_ids=6, seed=0),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )


def build_tiny_sdxl_refiner():
    """An SDXL refiner: the second text encoder only, aesthetic-score time ids; pairs with tiny-sdxl."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(
        vae=_tiny_vae(scaling_factor=0.13025, force_upcast=True),
        text_encoder=None,
        text_encoder_2=_tiny_clip(64, with_projection=True, seed=1),
        tokenizer=None,
        tokenizer_2=_clip_tokenizer(),
        unet=_tiny_xl_unet(cross_attention_dim=64, time_ids=5, seed=1),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_tiny_sd3():
    """SD3 / 3.5: an MMDiT on 16-channel latents, CLIP x2 + T5, flow matching."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Img2ImgPipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        out_channels=16,
        pos_embed_max_size=96,
    )
    t5_tokenizer = _t5_tokenizer()
    return StableDiffusion3Img2ImgPipeline(
        transformer=transformer,
        vae=_tiny_vae(16, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_tiny_clip(32, with_projection=True),
        text_encoder_2=_tiny_clip(32, with_projection=True, seed=1),
        text_encoder_3=_tiny_t5(64, len(t5_tokenizer)),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
    )


def build_tiny_flux():
    """Flux (dev-like, with the guidance embedding): packed 2x2 latents, CLIP + T5, shifted flow matching."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    t5_tokenizer = _t5_tokenizer()
    return FluxImg2ImgPipeline(
        transformer=transformer,
        vae=_tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_tiny_clip(32),
        text_encoder_2=_tiny_t5(32, len(t5_tokenizer)),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
    )


_BUILDERS = {
    "tiny-sd15": build_tiny_sd15,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sdxl-refiner": build_tiny_sdxl_refiner,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
}
_SCHEDULERS = {
    "tiny-sd15": SD15_SCHEDULER,
    "tiny-sdxl": SDXL_SCHEDULER,
    "tiny-sdxl-refiner": SDXL_SCHEDULER,
    "tiny-sd3": SD3_SCHEDULER,
    "tiny-flux": FLUX_SCHEDULER,
}

# The 2025-26 families live in their own module; their builders import from this one lazily.
from diffdiff_cli.models.builtin_2025 import BUILDERS_2025, SCHEDULERS_2025  # noqa: E402

_BUILDERS.update(BUILDERS_2025)
_SCHEDULERS.update(SCHEDULERS_2025)
