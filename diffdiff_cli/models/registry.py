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
        "SD 1.x architecture, tiny, random weights, built offline (tests and mechanics, draws noise)",
    ),
}

# Short names for real checkpoints on the Hugging Face hub (downloaded through the normal HF cache).
ALIASES: dict[str, str] = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2",
    "sd2-base": "stabilityai/stable-diffusion-2-base",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
}

SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # builtin | folder | single_file | hub
    value: str  # builtin name, path, or hub id
    label: str  # what the user typed, for messages and metadata


def resolve_model(spec: str) -> ModelSource:
    """Decide what a `--model` value names. Checks existence of local paths; touches no network."""
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
            raise InputError(
                f"--model {spec}: {suffix} checkpoints are pickle files that can run code when loaded; "
                f"convert it to .safetensors"
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
