"""Built-ins for the 2025-26 families: Qwen-Image, Z-Image, Chroma, FLUX.2 [klein], Flux.1 Kontext.

Each is the family's real architecture with one or two tiny layers and seeded random weights, built
offline. The Qwen text encoders keep the real 151,936-token embedding so the tokenizer's special tokens
sit at their real ids (see qwen_tokenizer.py); everything else is as small as the layer shapes allow.
The scheduler configs are the public checkpoints' own.
"""

from __future__ import annotations

QWEN_IMAGE_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}
Z_IMAGE_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
CHROMA_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
FLUX2_SCHEDULER = {**CHROMA_SCHEDULER, "time_shift_type": "exponential"}
KONTEXT_SCHEDULER = dict(CHROMA_SCHEDULER)

SCHEDULERS_2025 = {
    "tiny-qwen-image": QWEN_IMAGE_SCHEDULER,
    "tiny-z-image": Z_IMAGE_SCHEDULER,
    "tiny-chroma": CHROMA_SCHEDULER,
    "tiny-flux2-klein": FLUX2_SCHEDULER,
    "tiny-kontext": KONTEXT_SCHEDULER,
}

_TEXT_HIDDEN = 16  # width of the tiny Qwen text encoders (their embedding is VOCAB_SIZE x this)


def _qwen_tokenizer():
    from diffdiff_cli.models.qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer()


def _qwen3_config(layers: int, **extra):
    from transformers import Qwen3Config

    from diffdiff_cli.models.qwen_tokenizer import FIRST_SPECIAL_ID, VOCAB_SIZE

    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        bos_token_id=FIRST_SPECIAL_ID,
        eos_token_id=FIRST_SPECIAL_ID + 2,
        pad_token_id=FIRST_SPECIAL_ID,
        **extra,
    )


def _tiny_flux_like_vae(latent_channels: int = 16, **config):
    from diffdiff_cli.models.builtin import _tiny_vae

    return _tiny_vae(latent_channels, **config)


def build_tiny_qwen_image():
    """Qwen-Image: Qwen2.5-VL text encoder (tiny vision tower included), the 3-D causal VAE, an MMDiT."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from diffdiff_cli.models.qwen_tokenizer import FIRST_SPECIAL_ID, VOCAB_SIZE

    torch.manual_seed(0)
    text_config = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": _TEXT_HIDDEN,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1000000.0},
        "bos_token_id": FIRST_SPECIAL_ID,
        "eos_token_id": FIRST_SPECIAL_ID + 2,
        "pad_token_id": FIRST_SPECIAL_ID,
    }
    vision_config = {
        "depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": _TEXT_HIDDEN,
        "fullatt_block_indexes": [0], "window_size": 28, "patch_size": 14,
    }
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True)
    )
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),
    )
    return QwenImageImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(QWEN_IMAGE_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_qwen_tokenizer(),
        transformer=transformer,
    )


def build_tiny_z_image():
    """Z-Image: a Qwen3 text encoder (second-to-last hidden state), the Flux VAE, a single-stream DiT."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    torch.manual_seed(0)
    text_encoder = Qwen3Model(_qwen3_config(2))
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_TEXT_HIDDEN,
        axes_dims=[4, 6, 6],
        axes_lens=[1024, 64, 64],
    )
    return ZImageImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(Z_IMAGE_SCHEDULER),
        vae=_tiny_flux_like_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=text_encoder,
        tokenizer=_qwen_tokenizer(),
        transformer=transformer,
    )


def build_tiny_chroma():
    """Chroma: T5 only (with its attention mask), a Flux-like transformer whose modulation comes from an approximator."""
    import torch
    from diffusers import ChromaImg2ImgPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from diffdiff_cli.models.builtin import _t5_tokenizer, _tiny_t5

    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 4, 8),
        approximator_num_channels=8,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    tokenizer = _t5_tokenizer()
    return ChromaImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(CHROMA_SCHEDULER),
        vae=_tiny_flux_like_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_tiny_t5(32, len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _tiny_flux2_vae():
    """FLUX.2's VAE: 32 latent channels, and batch-norm statistics over the 2x2-patchified 128 channels.

    The running statistics are seeded random values (not the untrained 0 / 1) so normalisation matters.
    """
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=32,
        sample_size=64,
    )
    channels = vae.bn.num_features
    generator = torch.Generator().manual_seed(1)
    vae.bn.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
    vae.bn.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
    return vae


def build_tiny_flux2_klein():
    """FLUX.2 [klein] (base, guided): Qwen3 (hidden states 9, 18, 27 stacked), 128-channel patchified latents."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Model

    # The real checkpoints hold a Qwen3ForCausalLM; the pipeline reads hidden states only, and the
    # headless model skips a 151,936-wide logit projection of all 512 tokens (0.6 s here).
    torch.manual_seed(0)
    text_encoder = Qwen3Model(_qwen3_config(27))
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * _TEXT_HIDDEN,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    return Flux2KleinInpaintPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX2_SCHEDULER),
        vae=_tiny_flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=_qwen_tokenizer(),
        transformer=transformer,
        is_distilled=False,
    )


def build_tiny_kontext():
    """Flux.1 Kontext: Flux-dev's layout; the input image's latent tokens join the sequence as a reference."""
    from diffusers import FluxKontextPipeline

    from diffdiff_cli.models.builtin import build_tiny_flux

    flux = build_tiny_flux()
    return FluxKontextPipeline(**{name: getattr(flux, name) for name in ("scheduler", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer")})


BUILDERS_2025 = {
    "tiny-qwen-image": build_tiny_qwen_image,
    "tiny-z-image": build_tiny_z_image,
    "tiny-chroma": build_tiny_chroma,
    "tiny-flux2-klein": build_tiny_flux2_klein,
    "tiny-kontext": build_tiny_kontext,
}
