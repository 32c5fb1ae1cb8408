"""Test helpers: LoRAs and embeddings made by hand for the tiny models, and cheap copies of a loaded model.

A LoRA here is what diffusers' `save_lora_weights` writes: `<component>.<module>.lora_A.weight` (rank x in)
and `.lora_B.weight` (out x rank) for chosen Linear layers, random but seeded. `to_kohya` rewrites one as
kohya's sd-scripts do (`lora_unet_<module_with_underscores>.lora_down/lora_up.weight` + `.alpha`).
"""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save_file

# two projections per attention layer are enough to show the effect (peft injects each one in Python, which
# is slow); the output projection is one of them because diffusers tells kohya text-encoder layouts by it
DENOISER_TARGETS = ("to_k", "to_out.0")
TEXT_TARGETS = ("q_proj", "out_proj")


def lora_for(module: torch.nn.Module, prefix: str, targets, seed: int, rank: int = 4, strength: float = 0.1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
            state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * strength
    return state


def pipeline_lora(pipe, seed: int, text: bool = True) -> dict:
    """A LoRA over the denoiser's attention and (optionally) every CLIP text encoder of `pipe`."""
    denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    state = lora_for(getattr(pipe, denoiser), denoiser, DENOISER_TARGETS, seed)
    if text:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is not None and type(encoder).__name__.startswith("CLIP"):
                state.update(lora_for(encoder, name, TEXT_TARGETS, seed + 100))
    return state


def save_lora(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def to_kohya(state: dict, alpha_ratio: float = 0.5) -> dict:
    """The same LoRA in kohya's layout (SD 1.x): alpha = ratio x rank, so lora_up carries 1/ratio."""
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    out = {}
    for key, value in state.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        if component == "text_encoder":
            module = "text_model." + module  # real checkpoints name CLIP's modules under text_model.
        name = prefixes[component] + module.replace(".", "_")
        if kind.startswith("A"):
            out[f"{name}.lora_down.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0] * alpha_ratio))
        else:
            out[f"{name}.lora_up.weight"] = value / alpha_ratio
    return out


def fresh_copy(model, tokenizers: bool = False):
    """A LoadedModel with its own copies of every network, and of the tokenizers when asked (embeddings
    change them; LoRAs do not, and copying a CLIP tokenizer takes a second)."""
    from diffdiff_cli.models.load import LoadedModel

    modules = {
        k: copy.deepcopy(v)
        for k, v in model.pipe.components.items()
        if isinstance(v, torch.nn.Module) or (tokenizers and k.startswith("tokenizer") and v is not None)
    }
    pipe = type(model.pipe).from_pipe(model.pipe, **modules)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(model.label, model.family, pipe, dict(model.scheduler_config))


def with_extras(model, **options):
    """`model` copied and given the extras as load_model gives them (check, then apply before placing)."""
    from diffdiff_cli.models.extras import Extras, check_extras

    copied = fresh_copy(model, tokenizers=bool(options.get("embeddings")))
    checked = check_extras(Extras.from_options(**options), model.family)
    copied.extras_record = checked.apply(copied.pipe, offline=True, dtype=torch.float32)
    return copied
