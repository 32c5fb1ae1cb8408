"""Single-file Stable Diffusion 1.x / 2.x / XL checkpoints (original "LDM" key layout), offline.

A civitai/A1111-style checkpoint holds the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`)
and the text encoder(s) (`cond_stage_model.*`; SDXL: `conditioner.embedders.N.*`) but no configs and no
tokenizer. diffusers converts the weights itself (`from_single_file`); what it needs from us is a local
diffusers folder with the configs and tokenizers, because without one it goes to the hub. We ship the
configs of the reference models:

- `configs/sd15`: stable-diffusion-v1-5 (runwayml layout; PNDM, epsilon, CLIP ViT-L/14 text encoder),
- `configs/sd21`: stabilityai/stable-diffusion-2-1 (768-v: DDIM, v_prediction, OpenCLIP ViT-H text
  encoder cut to 23 layers, linear projections, upcast attention),
- `configs/sdxl`: stabilityai/stable-diffusion-xl-base-1.0 (Euler, epsilon; CLIP ViT-L
  `conditioner.embedders.0.transformer.*` + OpenCLIP ViT-bigG `conditioner.embedders.1.model.*`),
- `configs/sdxl-refiner`: stabilityai/stable-diffusion-xl-refiner-1.0 (OpenCLIP ViT-bigG only, as
  `conditioner.embedders.0.model.*`; aesthetic-score conditioning),

and materialise them, with the CLIP BPE tokenizer written from the vocabulary in this package, into the
cache on first use. A checkpoint of another shape (SD 2.x-base, which predicts epsilon; a fine-tune with a
different scheduler or v-prediction) needs the user's own config folder (`--model-config DIR`).

For .safetensors only the header is read to tell the family, so `diffdiff plan` costs no torch import.
Pickle checkpoints (.ckpt/.pt/.pth/.bin; the registry lets them through only with --allow-pickle) are read
with `torch.load(weights_only=True)`, which refuses any object but tensors and plain containers, here and
in diffusers' own loader (diffusers.models.model_loading_utils.load_state_dict).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from diffdiff_cli.errors import InputError, RunError
from diffdiff_cli.models.registry import PICKLE_SUFFIXES

FAMILIES = ("sd15", "sd21", "sdxl", "sdxl-refiner")
FAMILY_LABELS = {
    "sd15": "Stable Diffusion 1.x",
    "sd21": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "sdxl-refiner": "Stable Diffusion XL refiner",
}
# The diffdiff family (diffdiff_cli.families) of each checkpoint family, and the pipeline that loads it.
ENGINE_FAMILY = {"sd15": "sd", "sd21": "sd", "sdxl": "sdxl", "sdxl-refiner": "sdxl"}
PIPELINE_CLASS = {"sd": "StableDiffusionImg2ImgPipeline", "sdxl": "StableDiffusionXLImg2ImgPipeline"}
CONFIG_VERSION = 1  # bump when a shipped config changes, so materialised copies are rebuilt

UNET_PREFIX = "model.diffusion_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # base: CLIP ViT-L (HF names)
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # base: OpenCLIP ViT-bigG
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."  # refiner: OpenCLIP ViT-bigG only
_UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

_SUPPORTED = (
    "supported single files are full Stable Diffusion 1.x, 2.x or XL checkpoints "
    "(.safetensors; .ckpt/.pt/.pth/.bin with --allow-pickle)"
)
_CONFIG_FIX = "give --model-config DIR, a diffusers folder whose configs match this checkpoint"
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
_TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "tokenizer.json")
# The tokenizer folders of each family and their padding token: CLIP ViT-L's pads with the end token,
# the OpenCLIP tokenizers (SD 2.x; SDXL's tokenizer_2) with "!" (as in the reference repositories).
_TOKENIZERS = {
    "sd15": {"tokenizer": "<|endoftext|>"},
    "sd21": {"tokenizer": "!"},
    "sdxl": {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"},
    "sdxl-refiner": {"tokenizer_2": "!"},
}
# Components diffusers' from_single_file never loads from a single file (we pass None for them).
_NOT_FROM_FILE = ("safety_checker", "feature_extractor", "image_encoder")


# --- reading the header ----------------------------------------------------------------------------


def _read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), checked for sanity."""
    if not path.exists():
        raise InputError(f"{path}: file not found; give the path of a Stable Diffusion checkpoint file")
    if not path.is_file():
        raise InputError(f"{path}: not a file; give a .safetensors checkpoint (or a diffusers folder as --model)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length < 2 or length > _MAX_HEADER or length > size - 8:
                if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a bare pickle
                    raise InputError(
                        f"{path}: a PyTorch pickle checkpoint under a .safetensors name; convert it to "
                        f"safetensors, or rename it .ckpt and pass --allow-pickle to load its tensors only"
                    )
                if len(head) < 8:
                    raise _NotSafetensors("shorter than a safetensors header")
                raise _NotSafetensors(f"header length {length} does not fit a {size}-byte file")
            raw = fh.read(length)
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err}); check the path and its permissions")
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _NotSafetensors("its header is not JSON") from None
    if not isinstance(table, dict):
        raise _NotSafetensors("its header is not a tensor table")
    table.pop("__metadata__", None)
    data_size = size - 8 - length
    end = 0
    for name, info in table.items():
        if not (isinstance(info, dict) and isinstance(info.get("shape"), list) and "dtype" in info):
            raise _NotSafetensors(f"tensor entry {name!r} is malformed")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _NotSafetensors(f"tensor entry {name!r} has no data offsets")
        end = max(end, offsets[1])
    if end > data_size:
        raise InputError(
            f"{path}: truncated safetensors file ({data_size} bytes of tensor data, the header needs {end}); "
            f"download or copy it again"
        )
    return table


class _NotSafetensors(Exception):
    pass


def _header(path: Path) -> dict[str, dict]:
    try:
        return _read_header(path)
    except _NotSafetensors as err:
        raise InputError(f"{path}: not a readable safetensors file ({err}); {_SUPPORTED}") from None


def is_pickle_path(path: str | os.PathLike) -> bool:
    """A PyTorch pickle checkpoint by its name (.ckpt/.pt/.pth/.bin), as diffusers' loader also decides."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def _weights_only_refusal(text: str) -> str:
    """What torch's weights-only unpickler refused, from its (long, multi-line) message."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"a Python object ({found.group(1)}) besides tensors"
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Weights only load failed", "Please file", "Check the documentation")):
            return f"content a weights-only load refuses ({line.removeprefix('WeightsUnpickler error:').strip()})"
    return "content a weights-only load refuses"


def load_pickle_state_dict(path: str | os.PathLike) -> dict:
    """The tensors of a pickle checkpoint, read with torch.load(weights_only=True): nothing in it runs.

    Unwraps `state_dict` as diffusers does and keeps string-named tensors. Any failure (an object other than
    tensors and plain containers, a corrupt file) is a one-line InputError naming the file.
    """
    import pickle
    import zipfile

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; give the path of a Stable Diffusion checkpoint file")
    if not path.is_file():
        raise InputError(f"{path}: not a file; give a checkpoint file (or a diffusers folder as --model)")
    import torch

    try:
        # mmap needs torch.save's zip format; an old-style pickle is read whole
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise InputError(
            f"{path}: the pickle holds {_weights_only_refusal(str(err))}, which diffdiff refuses to unpickle "
            f"(it could run code); convert it to .safetensors with a tool you trust"
        ) from None
    except MemoryError:
        raise RunError(f"{path}: out of memory while reading this checkpoint") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err}); check the path and its permissions") from None
    except Exception as err:  # torch raises RuntimeError/EOFError/ValueError... for files it cannot parse
        raise InputError(f"{path}: not a readable PyTorch pickle checkpoint ({_one_line(err, 160)}); {_SUPPORTED}") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: the pickle holds a {type(state).__name__}, not a state dict; {_SUPPORTED}")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _pickle_table(path: Path) -> dict[str, dict]:
    """The tensor table of a pickle checkpoint ({name: {dtype, shape}}), like a safetensors header."""
    return {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in load_pickle_state_dict(path).items()}


def _table(path: Path) -> dict[str, dict]:
    return _pickle_table(path) if is_pickle_path(path) else _header(path)


def _what_else(keys: list[str]) -> str | None:
    """A short description of a checkpoint that is not SD 1.x/2.x/XL, or None when it might be one."""

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    def starts(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if any(
        f in k
        for k in keys
        for f in ("lora_down", "lora_up", "lora_A", "lora_B", ".lora.", "hada_w", "lokr_w", "lora_te", "lora_unet")
    ):
        return "a LoRA/LyCORIS adapter (lora_* keys), not a full checkpoint"
    if set(keys) <= {"emb_params", "clip_l", "clip_g", "string_to_param", "string_to_token"} or starts(
        "string_to_param"
    ):
        return "a textual-inversion embedding, not a full checkpoint"
    if has("joint_blocks.") or starts("text_encoders."):
        return "a Stable Diffusion 3 checkpoint (joint_blocks.* keys)"
    if has("double_blocks.") or has("single_blocks."):
        return "a Flux checkpoint (double_blocks.* keys)"
    if starts("control_model.") or has("controlnet_cond_embedding"):
        return "a ControlNet, not a full checkpoint"
    if starts(UNET_PREFIX):
        return None
    if starts("first_stage_model.") or (starts("encoder.down.") and starts("decoder.up.")):
        return "a VAE only (no UNet or text encoder)"
    if starts("encoder.down_blocks.") or starts("decoder.up_blocks."):
        return "a VAE only, in diffusers layout"
    if starts("down_blocks.") or starts("time_embedding.") or starts("transformer_blocks."):
        return "one model in diffusers layout, not a full LDM checkpoint"
    first = sorted(keys)[0] if keys else "none"
    return f"no Stable Diffusion keys ({len(keys)} tensors, first {first!r})"


_IN_CHANNEL_KINDS = {
    9: "an inpainting checkpoint",
    8: "an instruct-pix2pix checkpoint",
    7: "an upscaler checkpoint",
    5: "a depth-to-image checkpoint",
}


def single_file_family(path: str | os.PathLike) -> str:
    """"sd15", "sd21", "sdxl" or "sdxl-refiner" for a single-file checkpoint, from its keys.

    A .safetensors file is judged by its header alone; a pickle (.ckpt/.pt/.pth/.bin) is read with
    torch.load(weights_only=True). Anything else (SD3, Flux, a LoRA, a VAE, an inpainting model, a corrupt
    or truncated file, a pickle with objects in it) is an InputError that names the file, what it looks
    like, and what is supported.
    """
    return _inspect(Path(path))[0]


def _family_from_keys(path: Path, keys: list[str]) -> str:
    def starts(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if starts(SD1_TEXT_PREFIX):
        return "sd15"
    if starts(SD2_TEXT_PREFIX):
        return "sd21"
    if starts(SDXL_OPENCLIP_PREFIX):
        if not starts(SDXL_CLIP_PREFIX):
            raise InputError(
                f"{path}: an SDXL checkpoint without its first text encoder (CLIP ViT-L, "
                f"{SDXL_CLIP_PREFIX}*); {_SUPPORTED}"
            )
        return "sdxl"
    if starts(SDXL_REFINER_OPENCLIP_PREFIX):
        return "sdxl-refiner"
    if starts("conditioner.embedders."):
        raise InputError(
            f"{path}: has SDXL-style conditioner.embedders.* keys but neither the base layout "
            f"({SDXL_CLIP_PREFIX}* + {SDXL_OPENCLIP_PREFIX}*) nor the refiner's ({SDXL_REFINER_OPENCLIP_PREFIX}*); "
            f"{_SUPPORTED}"
        )
    raise InputError(
        f"{path}: has a UNet (model.diffusion_model.*) but no text encoder (cond_stage_model.* or "
        f"conditioner.embedders.*); {_SUPPORTED}"
    )


def _inspect(path: Path) -> tuple[str, dict[str, dict]]:
    table = _table(path)
    keys = list(table)
    other = _what_else(keys)
    if other is not None:
        raise InputError(f"{path}: {other}; {_SUPPORTED}")
    family = _family_from_keys(path, keys)
    shape = table.get(_UNET_IN_KEY, {}).get("shape")
    if isinstance(shape, list) and len(shape) == 4 and shape[1] != 4:
        kind = _IN_CHANNEL_KINDS.get(shape[1], "a special-purpose checkpoint")
        raise InputError(
            f"{path}: {kind} (its UNet takes {shape[1]} input channels, not 4); "
            f"{_SUPPORTED} of the text-to-image kind"
        )
    return family, table


# --- config folders --------------------------------------------------------------------------------


def _components(index: dict) -> list[str]:
    """The components a model_index.json names (["library", "Class"] entries) that a single file fills."""
    return sorted(
        name
        for name, spec in index.items()
        if not name.startswith("_")
        and isinstance(spec, list)
        and len(spec) == 2
        and all(isinstance(part, str) and part for part in spec)
        and name not in _NOT_FROM_FILE
    )


def _check_user_config(folder: str | os.PathLike, family: str, path: Path) -> Path:
    """The user's --model-config folder, checked: every component's config and tokenizer is there, and
    it describes a pipeline of the checkpoint's family (SD 1.x/2.x vs SDXL, SDXL base vs refiner)."""
    from diffdiff_cli.families import FAMILIES as ENGINE_FAMILIES

    folder = Path(folder).expanduser()
    flag = f"--model-config {folder}"
    if not folder.is_dir():
        raise InputError(f"{flag}: not a folder; {_CONFIG_FIX} (configs only are enough)")
    if not (folder / "model_index.json").is_file():
        raise InputError(f"{flag}: no model_index.json in it; {_CONFIG_FIX}")
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{flag}: cannot read model_index.json ({_one_line(err, 120)}); {_CONFIG_FIX}") from None
    if not isinstance(index, dict):
        raise InputError(f"{flag}: model_index.json is not a JSON object; {_CONFIG_FIX}")
    components = _components(index)
    for name in components:
        if name.startswith("tokenizer"):
            if not any((folder / name / file).is_file() for file in _TOKENIZER_FILES):
                raise InputError(
                    f"{flag}: no {name}/ folder (vocab.json or tokenizer.json) in it; {_CONFIG_FIX}, tokenizer included"
                )
            continue
        rel = f"{name}/scheduler_config.json" if name == "scheduler" else f"{name}/config.json"
        if not (folder / rel).is_file():
            raise InputError(f"{flag}: {rel} is missing; {_CONFIG_FIX}")

    label = FAMILY_LABELS[family]
    want = ENGINE_FAMILY[family]
    class_name = index.get("_class_name")
    found = next((f for f in ENGINE_FAMILIES.values() if class_name in f.pipelines), None)
    if found is None or found.name != want:
        what = f"a {found.label} pipeline" if found else f"a {class_name or 'nameless'} pipeline"
        raise InputError(
            f"{flag}: describes {what}, but {path} is a {label} checkpoint; give the config folder of a "
            f"{ENGINE_FAMILIES[want].label} model"
        )
    if family == "sdxl-refiner" and "text_encoder" in components:
        raise InputError(
            f"{flag}: describes an SDXL base model (it has a text_encoder), but {path} is an SDXL refiner "
            f"checkpoint (OpenCLIP only); give a refiner's config folder or leave --model-config out"
        )
    if family == "sdxl" and "text_encoder" not in components:
        raise InputError(
            f"{flag}: describes an SDXL refiner (no text_encoder), but {path} is an SDXL base checkpoint; "
            f"give a base model's config folder or leave --model-config out"
        )
    return folder


def _shipped(family: str):
    return resources.files("diffdiff_cli.models").joinpath("configs", family)


def _copy_tree(src, dst: Path) -> None:
    """Copy a package resource tree (a Traversable) into dst."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        elif item.name.endswith(".json"):
            (dst / item.name).write_bytes(item.read_bytes())


def _materialise(family: str) -> Path:
    from diffdiff_cli.models.builtin import cache_root
    from diffdiff_cli.models.tokenizer import write_clip_tokenizer_files

    tokenizers = _TOKENIZERS[family]
    folder = cache_root() / "single-file-configs" / f"{family}-v{CONFIG_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=folder.parent))
        try:
            _copy_tree(_shipped(family), staging)
            for subfolder, pad_token in tokenizers.items():
                write_clip_tokenizer_files(staging / subfolder, pad_token=pad_token)
            try:
                os.replace(staging, folder)
            except OSError:  # another process finished first: keep its copy
                if not (folder / "model_index.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        raise RunError(
            f"cannot write the model configs into {folder.parent} ({err.strerror or err}); "
            f"set DIFFDIFF_CACHE to a writable folder"
        ) from None
    return folder


def config_folder_for(path: str | os.PathLike, config_folder: str | os.PathLike | None = None) -> Path:
    """The diffusers config folder (configs + tokenizer, no weights) to load the checkpoint at `path` with.

    The user's `config_folder` when given (it must hold model_index.json, the configs and tokenizer folders
    of the components it names, and describe the checkpoint's family), else the shipped config of the
    checkpoint's family, materialised in the cache.
    """
    family = single_file_family(path)
    if config_folder is not None:
        return _check_user_config(config_folder, family, Path(path))
    return _materialise(family)


def scheduler_config_for_single_file(
    path: str | os.PathLike, config_folder: str | os.PathLike | None = None
) -> dict:
    """The scheduler config the checkpoint will run with, without loading weights.

    Imports no torch for a .safetensors file; a pickle's keys can only be read through torch.load.
    """
    family = single_file_family(path)
    if config_folder is not None:
        source = _check_user_config(config_folder, family, Path(path)) / "scheduler" / "scheduler_config.json"
        try:
            config = json.loads(source.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"--model-config {config_folder}: cannot read {source.name} ({err}); {_CONFIG_FIX}")
        if not isinstance(config, dict):
            raise InputError(f"--model-config {config_folder}: {source.name} is not a JSON object; {_CONFIG_FIX}")
        return config
    return json.loads(_shipped(family).joinpath("scheduler", "scheduler_config.json").read_text())


# --- loading ---------------------------------------------------------------------------------------


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text.split(" If you want to instead overwrite")[0]  # diffusers' shape-mismatch hint: not for users
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _text_encoder_without_text_model_prefix(path: Path, folder: Path, torch_dtype):
    """Build the SD 1.x text encoder of a checkpoint whose CLIP keys lack `text_model.` (older exports).

    diffusers only recognises `cond_stage_model.transformer.text_model.*`; A1111 accepts both.
    """
    import torch
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True)
    with init_empty_weights():
        model = CLIPTextModel(config)
    state = {}
    if is_pickle_path(path):
        for key, value in load_pickle_state_dict(path).items():
            if key.startswith(SD1_TEXT_PREFIX):
                state[key[len(SD1_TEXT_PREFIX) :].removeprefix("text_model.")] = value
    else:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(SD1_TEXT_PREFIX):
                    state[key[len(SD1_TEXT_PREFIX) :].removeprefix("text_model.")] = fh.get_tensor(key)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"text encoder tensor {key} has shape {tuple(value.shape)}, the config wants "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False, assign=True)
    model.to(torch_dtype or torch.float32)
    return model.eval()


def _failing_component(err: BaseException) -> str | None:
    """Which pipeline component diffusers was loading when it failed ("unet", "vae", ...), if we can tell."""
    seen = 0
    while err is not None and seen < 5:  # diffusers re-raises some errors: look at the original too
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "load_single_file_sub_model":
                value = tb.tb_frame.f_locals.get("name")
                if isinstance(value, str):
                    return value
            tb = tb.tb_next
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def _meta_tensors(pipe) -> list[str]:
    """Names of weights no checkpoint tensor filled (diffusers leaves them on the meta device, silently)."""
    import torch

    missing = []
    for component, module in sorted(pipe.components.items()):
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_meta:
                missing.append(f"{component}.{name}")
    return missing


def load_single_file_pipeline(
    path: str | os.PathLike,
    config_folder: str | os.PathLike | None = None,
    torch_dtype=None,
):
    """The img2img pipeline of a single-file checkpoint, fully offline.

    SD 1.x / 2.x: a StableDiffusionImg2ImgPipeline (no safety checker); SDXL base and refiner: a
    StableDiffusionXLImg2ImgPipeline. A pickle checkpoint (.ckpt/.pt/.pth/.bin) is read with
    weights_only=True, here and by diffusers; the caller decides whether pickles are allowed at all
    (registry.resolve_model's allow_pickle). Any failure to load becomes a one-line InputError naming the
    file, what went wrong and the fix.
    """
    path = Path(path)
    family, table = _inspect(path)
    user_config = config_folder is not None
    folder = _check_user_config(config_folder, family, path) if user_config else _materialise(family)
    fix = (
        f"check that --model-config {folder} describes this checkpoint (same architecture and sizes)"
        if user_config
        else _CONFIG_FIX
    )
    label = FAMILY_LABELS[family]

    engine = ENGINE_FAMILY[family]
    text_keys = {
        "sd15": "text encoder cond_stage_model.transformer.*",
        "sd21": "text encoder cond_stage_model.model.*",
        "sdxl": f"text encoders {SDXL_CLIP_PREFIX}* and {SDXL_OPENCLIP_PREFIX}*",
        "sdxl-refiner": f"text encoder {SDXL_REFINER_OPENCLIP_PREFIX}*",
    }[family]

    try:
        import diffusers

        pipeline_class = getattr(diffusers, PIPELINE_CLASS[engine])
        extra = {}
        if engine == "sd":
            extra.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        if family == "sd15" and not any(k.startswith(SD1_TEXT_PREFIX + "text_model.") for k in table):
            extra["text_encoder"] = _text_encoder_without_text_model_prefix(path, folder, torch_dtype)
        pipe = pipeline_class.from_single_file(
            str(path),
            config=str(folder),
            local_files_only=True,
            torch_dtype=torch_dtype,
            **extra,
        )
    except (InputError, RunError):
        raise
    except MemoryError:
        raise RunError(
            f"{path}: out of memory while loading this {label} checkpoint; free memory or use a smaller dtype"
        ) from None
    except Exception as err:  # diffusers raises ValueError, KeyError, OSError, its own errors...
        component = _failing_component(err)
        where = f" {component}" if component else ""
        if type(err).__name__ == "SingleFileComponentError":  # no tensors at all for a component
            raise InputError(
                f"{path}: the checkpoint has no{where} weights at all; use a full {label} checkpoint (UNet "
                f"model.diffusion_model.*, VAE first_stage_model.*, {text_keys})"
            ) from None
        if "meta tensor" in str(err):  # a weight the config wants is not in the file (diffusers' wording)
            raise InputError(
                f"{path}: the checkpoint's{where or ' UNet or VAE'} lacks weights the {label} config needs "
                f"(pruned, truncated or another architecture); {fix}"
            ) from None
        detail = f"{component}: {_one_line(err)}" if component else _one_line(err)
        raise InputError(f"{path}: cannot load it as a {label} checkpoint ({detail}); {fix}") from None

    missing = _meta_tensors(pipe)
    if missing:
        raise InputError(
            f"{path}: the checkpoint has no weights for {len(missing)} tensors the {label} config needs "
            f"(e.g. {missing[0]}); {fix}"
        )
    return pipe
