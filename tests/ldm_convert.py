"""Test helper: write a diffusers SD 1.x / 2.x / XL pipeline as ONE file in the original LDM layout.

The layout is what civitai/A1111 single-file checkpoints use and what diffusers' `from_single_file`
converts back (diffusers/loaders/single_file_utils.py); this is the inverse of that conversion:

- UNet  -> `model.diffusion_model.*`: `input_blocks.N.{0 resnet | 1 attention | 0.op downsampler}`,
  `middle_block.{0,1,2}`, `output_blocks.N.{0 resnet | 1 attention | 1|2.conv upsampler}`, `time_embed.{0,2}`,
  `out.{0,2}`; resnets rename norm1/conv1/norm2/conv2/time_emb_proj/conv_shortcut to
  in_layers.0/in_layers.2/out_layers.0/out_layers.3/emb_layers.1/skip_connection.
- VAE   -> `first_stage_model.*`: `encoder.down.I.block.J`, `decoder.up.(n-1-I).block.J` (the decoder's
  up blocks are numbered from the bottom), `mid.block_{1,2}`, `mid.attn_1.{norm,q,k,v,proj_out}` with
  1x1-conv-shaped weights, `norm_out`, `nin_shortcut`.
- text  -> SD 1.x: `cond_stage_model.transformer.text_model.*` (HF CLIP names; transformers 5 saves them
  without `text_model.`); SD 2.x: `cond_stage_model.model.*` in OpenCLIP names (`transformer.resblocks.N`,
  fused `attn.in_proj_weight`, `ln_final`, `positional_embedding`), plus the unused last resblock and the
  text projection real SD 2.x files carry.
- SDXL  -> the UNet as above plus `label_emb.0.{0,2}` (diffusers' add_embedding.linear_{1,2}); CLIP ViT-L
  under `conditioner.embedders.0.transformer.text_model.*`, the OpenCLIP ViT-bigG encoder under
  `conditioner.embedders.1.model.*` (refiner: `conditioner.embedders.0.model.*`) in the SD 2.x names, with
  `text_projection` stored as OpenCLIP does, (hidden, projection) = the transpose of the Linear weight.
  diffusers tells the two encoders apart by width (CLIP-L position embeddings must not be as wide as the
  OpenCLIP ones), so the second encoder must be wider than the first, as in real SDXL (768 vs 1280).
"""

from __future__ import annotations

from pathlib import Path

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer.text_model."
SD2_TEXT = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP = "conditioner.embedders.1.model."
SDXL_REFINER_OPENCLIP = "conditioner.embedders.0.model."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/crop (and aesthetic score) embedding
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split_module(key: str) -> tuple[str, str]:
    """('a.b.c', 'weight') for 'a.b.c.weight'."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def unet_key(key: str, layers_per_block: int, up_has_attention: dict[int, bool]) -> str:
    module, leaf = _split_module(key)
    if module in _UNET_FIXED:
        return f"{UNET}{_UNET_FIXED[module]}.{leaf}"
    parts = module.split(".")
    per = layers_per_block + 1

    def resnet(rest: list[str]) -> str:
        name = ".".join(rest)
        if name not in _UNET_RESNET:
            raise KeyError(f"unexpected UNet resnet tensor {key}")
        return _UNET_RESNET[name]

    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"{UNET}input_blocks.{1 + block * per + int(parts[3])}.0.{resnet(parts[4:])}.{leaf}"
        if kind == "attentions":
            rest = ".".join([*parts[4:], leaf])
            return f"{UNET}input_blocks.{1 + block * per + int(parts[3])}.1.{rest}"
        if kind == "downsamplers" and parts[3:] == ["0", "conv"]:
            return f"{UNET}input_blocks.{1 + block * per + layers_per_block}.0.op.{leaf}"
    elif parts[0] == "mid_block":
        kind, index = parts[1], int(parts[2])
        if kind == "resnets":
            return f"{UNET}middle_block.{2 * index}.{resnet(parts[3:])}.{leaf}"
        if kind == "attentions" and index == 0:
            return f"{UNET}middle_block.1.{'.'.join([*parts[3:], leaf])}"
    elif parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"{UNET}output_blocks.{block * per + int(parts[3])}.0.{resnet(parts[4:])}.{leaf}"
        if kind == "attentions":
            rest = ".".join([*parts[4:], leaf])
            return f"{UNET}output_blocks.{block * per + int(parts[3])}.1.{rest}"
        if kind == "upsamplers" and parts[3:] == ["0", "conv"]:
            slot = 2 if up_has_attention[block] else 1
            return f"{UNET}output_blocks.{block * per + layers_per_block}.{slot}.conv.{leaf}"
    raise KeyError(f"no LDM name for UNet tensor {key}")


def vae_key(key: str, num_blocks: int) -> str:
    module, leaf = _split_module(key)
    parts = module.split(".")
    side = parts[0]  # encoder | decoder | quant_conv | post_quant_conv
    if side in ("quant_conv", "post_quant_conv"):
        return f"{VAE}{key}"
    rest = parts[1:]
    if len(rest) == 1:
        return f"{VAE}{side}.{_VAE_FIXED.get(rest[0], rest[0])}.{leaf}"

    def resnet(inner: list[str]) -> str:
        name = ".".join(inner)
        return "nin_shortcut" if name == "conv_shortcut" else name

    if rest[0] in ("down_blocks", "up_blocks"):
        index, kind = int(rest[1]), rest[2]
        ldm_index = index if side == "encoder" else num_blocks - 1 - index
        stage = "down" if side == "encoder" else "up"
        if kind == "resnets":
            return f"{VAE}{side}.{stage}.{ldm_index}.block.{rest[3]}.{resnet(rest[4:])}.{leaf}"
        if kind in ("downsamplers", "upsamplers") and rest[3:] == ["0", "conv"]:
            sampler = "downsample" if side == "encoder" else "upsample"
            return f"{VAE}{side}.{stage}.{ldm_index}.{sampler}.conv.{leaf}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{VAE}{side}.mid.block_{int(rest[2]) + 1}.{resnet(rest[3:])}.{leaf}"
        if rest[1] == "attentions" and rest[2] == "0":
            name = ".".join(rest[3:])
            if name in _VAE_ATTENTION:
                return f"{VAE}{side}.mid.attn_1.{_VAE_ATTENTION[name]}.{leaf}"
    raise KeyError(f"no LDM name for VAE tensor {key}")


def _unique(pairs) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise KeyError(f"two tensors map to the LDM name {key}")
        out[key] = value
    return out


def unet_to_ldm(unet) -> dict:
    config = unet.config
    state = unet.state_dict()
    up_has_attention = {
        b: any(k.startswith(f"up_blocks.{b}.attentions.") for k in state) for b in range(len(config.up_block_types))
    }
    return _unique((unet_key(k, config.layers_per_block, up_has_attention), v) for k, v in state.items())


def vae_to_ldm(vae) -> dict:
    num_blocks = len(vae.config.block_out_channels)

    def pairs():
        for key, value in vae.state_dict().items():
            ldm = vae_key(key, num_blocks)
            if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention q/k/v/proj_out are 1x1 convolutions
            yield ldm, value

    return _unique(pairs())


def clip_to_ldm(text_encoder, text_model_prefix: bool = True, position_ids: bool = True,
                prefix: str = SD1_TEXT) -> dict:
    """SD 1.x layout: the HF CLIP names under cond_stage_model.transformer.[text_model.] (or `prefix`)."""
    prefix = prefix if text_model_prefix else prefix.removesuffix("text_model.")
    out = {prefix + k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    if position_ids:  # real checkpoints carry this buffer; transformers 5 treats it as non-persistent
        import torch

        n = text_encoder.config.max_position_embeddings
        out[prefix + "embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(text_encoder, extra_layer: bool = True, prefix: str = SD2_TEXT) -> dict:
    """SD 2.x layout: OpenCLIP names under cond_stage_model.model.* (or `prefix`), q/k/v fused into in_proj.

    A CLIPTextModelWithProjection's `text_projection.weight` (projection, hidden) is written as OpenCLIP's
    `text_projection` (hidden, projection), as SDXL files hold it.
    """
    import torch

    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    layers = text_encoder.config.num_hidden_layers
    hidden = text_encoder.config.hidden_size
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    projection = state.pop("text_projection.weight", None)
    if projection is not None:
        out[prefix + "text_projection"] = projection.T.contiguous()
    renames = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for n in range(layers):
        src, dst = f"encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{leaf}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{leaf}") for p in "qkv"], dim=0
            )
            for hf, oc in renames.items():
                out[f"{dst}{oc}.{leaf}"] = state.pop(f"{src}{hf}.{leaf}")
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder tensors {sorted(state)}")
    if extra_layer:  # SD 2.x uses the penultimate layer: real files hold one more resblock, and a projection
        last = f"{prefix}transformer.resblocks.{layers - 1}."
        for key in [k for k in out if k.startswith(last)]:
            out[key.replace(f".resblocks.{layers - 1}.", f".resblocks.{layers}.")] = out[key] + 1.0
        out[prefix + "text_projection"] = torch.eye(hidden)
    return out


LAYOUTS = ("clip", "open_clip", "sdxl", "sdxl_refiner")


def text_layout_of(pipeline) -> str:
    """The text-encoder layout a pipeline's single file uses: SDXL base/refiner by their encoders, else SD 1.x."""
    if getattr(pipeline, "text_encoder_2", None) is not None:
        return "sdxl" if getattr(pipeline, "text_encoder", None) is not None else "sdxl_refiner"
    return "clip"


def pipeline_to_ldm(pipeline, text_encoder_layout: str = "clip", text_model_prefix: bool = True,
                    extras: bool = True) -> dict:
    """The whole pipeline's LDM state dict.

    `text_encoder_layout`: "clip" (SD 1.x), "open_clip" (SD 2.x), "sdxl" (CLIP-L + OpenCLIP bigG),
    "sdxl_refiner" (OpenCLIP only) or "auto" (from the pipeline's encoders, see text_layout_of).
    """
    import torch

    if text_encoder_layout == "auto":
        text_encoder_layout = text_layout_of(pipeline)
    state = {**unet_to_ldm(pipeline.unet), **vae_to_ldm(pipeline.vae)}
    if text_encoder_layout == "clip":
        state.update(clip_to_ldm(pipeline.text_encoder, text_model_prefix=text_model_prefix))
    elif text_encoder_layout == "open_clip":
        state.update(open_clip_to_ldm(pipeline.text_encoder))
    elif text_encoder_layout == "sdxl":
        state.update(clip_to_ldm(pipeline.text_encoder, text_model_prefix=text_model_prefix, prefix=SDXL_CLIP))
        state.update(open_clip_to_ldm(pipeline.text_encoder_2, extra_layer=False, prefix=SDXL_OPENCLIP))
    elif text_encoder_layout == "sdxl_refiner":
        state.update(open_clip_to_ldm(pipeline.text_encoder_2, extra_layer=False, prefix=SDXL_REFINER_OPENCLIP))
    else:
        raise ValueError(f"unknown text encoder layout {text_encoder_layout!r}; choose one of {LAYOUTS} or auto")
    if extras:  # the DDPM schedule buffers LDM training code saves beside the weights
        scheduler = pipeline.scheduler
        state["betas"] = scheduler.betas.to(torch.float32)
        state["alphas_cumprod"] = scheduler.alphas_cumprod.to(torch.float32)
    return state


def save_as_single_file(pipeline, path, text_encoder_layout: str = "clip", text_model_prefix: bool = True,
                        extras: bool = True, copy: bool = True) -> Path:
    """Write `pipeline` (UNet, VAE, text encoders) as one LDM-layout .safetensors file at `path`.

    `copy=False` writes the tensors as they are (contiguous views, no second copy of a full-size model).
    """
    from safetensors.torch import save_file

    state = pipeline_to_ldm(pipeline, text_encoder_layout, text_model_prefix, extras)
    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    if copy:
        tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def save_as_pickle_checkpoint(pipeline, path, text_encoder_layout: str = "clip", extras: bool = True,
                              **top_level) -> Path:
    """Write `pipeline` as an LDM-layout PyTorch pickle (.ckpt) the way training code does:
    `torch.save({"state_dict": {...}, **top_level})` (e.g. global_step=...)."""
    import torch

    state = pipeline_to_ldm(pipeline, text_encoder_layout, extras=extras)
    path = Path(path)
    torch.save({"state_dict": {k: v.detach().contiguous().clone() for k, v in state.items()}, **top_level}, path)
    return path
