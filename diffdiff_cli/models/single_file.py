"""Single-file Stable Diffusion 1.x / 2.x checkpoints (.safetensors, original "LDM" key layout), offline.

A civitai/A1111-style checkpoint holds the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`)
and the text encoder (`cond_stage_model.*`) but no configs and no tokenizer. diffusers converts the weights
itself (`from_single_file`); what it needs from us is a local diffusers folder with the configs and a
tokenizer, because without one it goes to the hub. We ship the configs of the two reference models:

- `configs/sd15`: stable-diffusion-v1-5 (runwayml layout; PNDM, epsilon, CLIP ViT-L/14 text encoder),
- `configs/sd21`: stabilityai/stable-diffusion-2-1 (768-v: DDIM, v_prediction, OpenCLIP ViT-H text
  encoder cut to 23 layers, linear projections, upcast attention),

and materialise them, with the CLIP BPE tokenizer written from the vocabulary in this package, into the
cache on first use. A checkpoint of another shape (SD 2.x-base, which predicts epsilon; a fine-tune with a
different scheduler) needs the user's own config folder (`--model-config DIR`).

Only the safetensors header is read to tell the family, so `diffdiff plan` costs no torch import.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from diffdiff_cli.errors import InputError, RunError

FAMILIES = ("sd15", "sd21")
FAMILY_LABELS = {"sd15": "Stable Diffusion 1.x", "sd21": "Stable Diffusion 2.x"}
CONFIG_VERSION = 1  # bump when a shipped config changes, so materialised copies are rebuilt

UNET_PREFIX = "model.diffusion_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
_UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

_SUPPORTED = "supported single files are full Stable Diffusion 1.x or 2.x .safetensors checkpoints"
_CONFIG_FIX = "give --model-config DIR, a diffusers folder whose configs match this checkpoint"
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
_COMPONENT_CONFIGS = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
_TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "tokenizer.json")
# The tokenizer's padding token: SD 1.x pads with the end token, SD 2.x's OpenCLIP tokenizer with "!".
_PAD_TOKEN = {"sd15": "<|endoftext|>", "sd21": "!"}


# --- reading the header ----------------------------------------------------------------------------


def _read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), checked for sanity."""
    if not path.exists():
        raise InputError(f"{path}: file not found; give the path of a Stable Diffusion 1.x/2.x checkpoint file")
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
                        f"{path}: a PyTorch pickle checkpoint (.ckpt), not safetensors; diffdiff never unpickles "
                        f"files: convert it to .safetensors or give a diffusers folder"
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


def _what_else(keys: list[str]) -> str | None:
    """A short description of a checkpoint that is not SD 1.x/2.x, or None when it might be one."""

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
    if starts("conditioner.embedders."):
        return "an SDXL checkpoint (conditioner.embedders.* keys)"
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
    """"sd15" or "sd21" for a single-file SD 1.x / 2.x checkpoint, from its safetensors header only.

    Anything else (SDXL, SD3, Flux, a LoRA, a VAE, a pickle, a corrupt or truncated file) is an InputError
    that names the file, what it looks like, and what is supported.
    """
    return _inspect(Path(path))[0]


def _inspect(path: Path) -> tuple[str, dict[str, dict]]:
    table = _header(path)
    keys = list(table)
    other = _what_else(keys)
    if other is not None:
        raise InputError(f"{path}: {other}; {_SUPPORTED}")
    if any(k.startswith(SD1_TEXT_PREFIX) for k in keys):
        family = "sd15"
    elif any(k.startswith(SD2_TEXT_PREFIX) for k in keys):
        family = "sd21"
    else:
        raise InputError(
            f"{path}: has a UNet (model.diffusion_model.*) but no SD 1.x/2.x text encoder "
            f"(cond_stage_model.*); {_SUPPORTED}"
        )
    shape = table.get(_UNET_IN_KEY, {}).get("shape")
    if isinstance(shape, list) and len(shape) == 4 and shape[1] != 4:
        kind = _IN_CHANNEL_KINDS.get(shape[1], "a special-purpose checkpoint")
        raise InputError(
            f"{path}: {kind} (its UNet takes {shape[1]} input channels, not 4); "
            f"{_SUPPORTED} of the text-to-image kind"
        )
    return family, table


# --- config folders --------------------------------------------------------------------------------


def _check_user_config(folder: str | os.PathLike) -> Path:
    folder = Path(folder).expanduser()
    flag = f"--model-config {folder}"
    if not folder.is_dir():
        raise InputError(f"{flag}: not a folder; {_CONFIG_FIX} (configs only are enough)")
    if not (folder / "model_index.json").is_file():
        raise InputError(f"{flag}: no model_index.json in it; {_CONFIG_FIX}")
    tokenizer = folder / "tokenizer"
    if not any((tokenizer / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(
            f"{flag}: no tokenizer/ folder (vocab.json or tokenizer.json) in it; {_CONFIG_FIX}, tokenizer included"
        )
    for rel in _COMPONENT_CONFIGS:
        if not (folder / rel).is_file():
            raise InputError(f"{flag}: {rel} is missing; {_CONFIG_FIX}")
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

    folder = cache_root() / "single-file-configs" / f"{family}-v{CONFIG_VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=folder.parent))
        try:
            _copy_tree(_shipped(family), staging)
            write_clip_tokenizer_files(staging / "tokenizer", pad_token=_PAD_TOKEN[family])
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

    The user's `config_folder` when given (it must hold model_index.json, the component configs and a
    tokenizer/ folder), else the shipped config of the checkpoint's family, materialised in the cache.
    """
    if config_folder is not None:
        single_file_family(path)
        return _check_user_config(config_folder)
    return _materialise(single_file_family(path))


def scheduler_config_for_single_file(
    path: str | os.PathLike, config_folder: str | os.PathLike | None = None
) -> dict:
    """The scheduler config the checkpoint will run with, without loading weights or importing torch."""
    family = single_file_family(path)
    if config_folder is not None:
        source = _check_user_config(config_folder) / "scheduler" / "scheduler_config.json"
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
    missing = []
    for component in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, component, None)
        if module is None:
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
    """A StableDiffusionImg2ImgPipeline from a single-file SD 1.x / 2.x checkpoint, fully offline.

    Any failure to load becomes a one-line InputError naming the file, what went wrong and the fix.
    """
    path = Path(path)
    family, table = _inspect(path)
    user_config = config_folder is not None
    folder = _check_user_config(config_folder) if user_config else _materialise(family)
    fix = (
        f"check that --model-config {folder} describes this checkpoint (same architecture and sizes)"
        if user_config
        else _CONFIG_FIX
    )
    label = FAMILY_LABELS[family]

    try:
        from diffusers import StableDiffusionImg2ImgPipeline

        extra = {}
        if family == "sd15" and not any(k.startswith(SD1_TEXT_PREFIX + "text_model.") for k in table):
            extra["text_encoder"] = _text_encoder_without_text_model_prefix(path, folder, torch_dtype)
        pipe = StableDiffusionImg2ImgPipeline.from_single_file(
            str(path),
            config=str(folder),
            local_files_only=True,
            torch_dtype=torch_dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
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
                f"model.diffusion_model.*, VAE first_stage_model.*, text encoder cond_stage_model.*)"
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
