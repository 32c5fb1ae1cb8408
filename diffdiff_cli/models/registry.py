"""What `--model` can name, resolved without importing torch or diffusers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from diffdiff_cli.errors import InputError


@dataclass(frozen=True)
class Builtin:
    name: str
    family: str
    description: str


BUILTINS: dict[str, Builtin] = {
    "tiny-sd15": Builtin(
        "tiny-sd15",
        "sd",
        "random weights, built offline (mechanics only)",
    ),
    "tiny-sdxl": Builtin("tiny-sdxl", "sdxl", "random weights, built offline (mechanics only)"),
    "tiny-sdxl-refiner": Builtin("tiny-sdxl-refiner", "sdxl", "random weights, refiner for tiny-sdxl"),
    "tiny-sd3": Builtin("tiny-sd3", "sd3", "random weights, built offline (mechanics only)"),
    "tiny-flux": Builtin("tiny-flux", "flux", "random weights, Flux-dev layout, built offline"),
    "tiny-qwen-image": Builtin("tiny-qwen-image", "qwen-image", "random weights, Qwen-Image layout, built offline"),
    "tiny-z-image": Builtin("tiny-z-image", "z-image", "random weights, Z-Image layout, built offline"),
    "tiny-chroma": Builtin("tiny-chroma", "chroma", "random weights, Chroma layout, built offline"),
    "tiny-flux2-klein": Builtin("tiny-flux2-klein", "flux2-klein", "random weights, FLUX.2 [klein] base layout, built offline"),
    "tiny-kontext": Builtin("tiny-kontext", "kontext", "random weights, Flux.1 Kontext layout, built offline"),
    "demo": Builtin(
        "demo",
        "sd",
        "SD 1.x architecture, 64 px, trained here on coloured shapes: draws what the prompt says (shipped)",
    ),
}

@dataclass(frozen=True)
class Alias:
    hub_id: str
    family: str
    size: str  # the denoiser's parameter count, to judge memory and speed
    steps: int | None = None  # a different default for few-step (distilled) models
    guidance: float | None = None


# Short names for real checkpoints on the Hugging Face hub (downloaded through the normal HF cache).
ALIAS_INFO: dict[str, Alias] = {
    "sd14": Alias("CompVis/stable-diffusion-v1-4", "sd", "UNet 0.86B"),
    "sd15": Alias("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd", "UNet 0.86B"),
    "sd2": Alias("stabilityai/stable-diffusion-2", "sd", "UNet 0.87B"),
    "sd2-base": Alias("stabilityai/stable-diffusion-2-base", "sd", "UNet 0.87B"),
    "sd21": Alias("stabilityai/stable-diffusion-2-1", "sd", "UNet 0.87B"),
    "sd21-base": Alias("stabilityai/stable-diffusion-2-1-base", "sd", "UNet 0.87B"),
    "sdxl": Alias("stabilityai/stable-diffusion-xl-base-1.0", "sdxl", "UNet 2.6B"),
    "sdxl-refiner": Alias("stabilityai/stable-diffusion-xl-refiner-1.0", "sdxl", "UNet 2.3B"),
    "sdxl-turbo": Alias("stabilityai/sdxl-turbo", "sdxl", "UNet 2.6B", steps=4, guidance=0.0),
    "sd3-medium": Alias("stabilityai/stable-diffusion-3-medium-diffusers", "sd3", "MMDiT 2B + T5 4.7B"),
    "sd35-medium": Alias("stabilityai/stable-diffusion-3.5-medium", "sd3", "MMDiT 2.5B + T5 4.7B"),
    "sd35-large": Alias("stabilityai/stable-diffusion-3.5-large", "sd3", "MMDiT 8B + T5 4.7B"),
    "sd35-large-turbo": Alias("stabilityai/stable-diffusion-3.5-large-turbo", "sd3", "MMDiT 8B + T5 4.7B", steps=4, guidance=0.0),
    "flux-schnell": Alias("black-forest-labs/FLUX.1-schnell", "flux", "transformer 12B + T5 4.7B", steps=4, guidance=0.0),
    "flux-dev": Alias("black-forest-labs/FLUX.1-dev", "flux", "transformer 12B + T5 4.7B"),
    "flux-kontext": Alias("black-forest-labs/FLUX.1-Kontext-dev", "kontext", "transformer 12B + T5 4.7B"),
    "qwen-image": Alias("Qwen/Qwen-Image", "qwen-image", "MMDiT 20B + Qwen2.5-VL 7B"),
    "z-image-turbo": Alias("Tongyi-MAI/Z-Image-Turbo", "z-image", "DiT 6B + Qwen3 4B", steps=8, guidance=0.0),
    "chroma": Alias("lodestones/Chroma1-HD", "chroma", "transformer 8.9B + T5 4.7B"),
    "flux2-klein": Alias("black-forest-labs/FLUX.2-klein-4B", "flux2-klein", "transformer 4B + Qwen3 4B", steps=4, guidance=1.0),
    "flux2-klein-9b": Alias("black-forest-labs/FLUX.2-klein-9B", "flux2-klein", "transformer 9B + Qwen3 8B", steps=4, guidance=1.0),
    "flux2-klein-base": Alias("black-forest-labs/FLUX.2-klein-base-4B", "flux2-klein", "transformer 4B + Qwen3 4B"),
    "flux2-klein-base-9b": Alias("black-forest-labs/FLUX.2-klein-base-9B", "flux2-klein", "transformer 9B + Qwen3 8B"),
}
ALIASES: dict[str, str] = {name: alias.hub_id for name, alias in ALIAS_INFO.items()}


def model_defaults(spec: str) -> dict:
    """Steps and guidance a named model wants by default (few-step models), or {}."""
    alias = ALIAS_INFO.get(spec)
    if alias is None:
        return {}
    return {k: v for k, v in (("steps", alias.steps), ("guidance", alias.guidance)) if v is not None}


SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # builtin | folder | single_file | hub
    value: str  # builtin name, path, or hub id
    label: str  # what the user typed, for messages and metadata


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelSource:
    """Decide what a `--model` value names. Checks existence of local paths; touches no network.

    Pickle checkpoints (.ckpt/.pt/.pth/.bin) are refused unless `allow_pickle` (--allow-pickle); allowed,
    they are single files that the loader reads with torch.load(weights_only=True), tensors only.
    """
    if spec in BUILTINS:
        return ModelSource("builtin", spec, spec)
    if spec in ALIASES:
        return ModelSource("hub", ALIASES[spec], spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InputError(
                f"--model {spec}: folder has no model_index.json; give a diffusers model folder "
                f"(see 'diffdiff models save') or a single .safetensors file"
            )
        return ModelSource("folder", str(path), spec)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in SINGLE_FILE_SUFFIXES:
            return ModelSource("single_file", str(path), spec)
        if suffix in PICKLE_SUFFIXES:
            if allow_pickle:
                return ModelSource("single_file", str(path), spec)
            raise InputError(
                f"--model {spec}: {suffix} checkpoints are pickle files that can run code when loaded; "
                f"pass --allow-pickle to load its tensors only (weights_only), or convert it to .safetensors"
            )
        raise InputError(f"--model {spec}: not a model file diffdiff reads; give a .safetensors file or a diffusers folder")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.lower().endswith(SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES)
    if not looks_like_path and _HUB_ID.match(spec):
        return ModelSource("hub", spec, spec)
    if looks_like_path or "/" in spec or "\\" in spec:
        raise InputError(f"--model {spec}: no such file or folder")
    raise InputError(
        f"--model {spec}: unknown model; use a built-in ({', '.join(BUILTINS)}), an alias "
        f"({', '.join(ALIASES)}), a hub id like owner/name, a diffusers folder or a .safetensors file "
        f"(list them with 'diffdiff models list')"
    )
