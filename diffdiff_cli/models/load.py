"""Load a model named by `--model`: its configs alone (for `plan`) or the whole pipeline (for `edit`)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from diffdiff_cli.errors import InputError, RunError
from diffdiff_cli.models.registry import ModelSource

# diffusers pipeline classes whose components diffdiff runs as the "sd" family
SD_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
SUPPORTED = "Stable Diffusion 1.x/2.x (StableDiffusionPipeline folders, hub ids and .safetensors files)"


def quiet_libraries(offline: bool) -> None:
    """Silence library chatter and progress bars; forbid downloads when offline.

    HF_HUB_OFFLINE is read when huggingface_hub is imported, so this runs before any import of it.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module="torchsde")  # rounding notices from its Brownian tree
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


@dataclass
class ModelConfigs:
    """What `plan` needs, read without any weights."""

    family: str
    scheduler_config: dict
    vae_scale_factor: int


@dataclass
class LoadedModel:
    label: str
    family: str
    pipe: object
    scheduler_config: dict


def family_of(class_name: str, label: str) -> str:
    if class_name in SD_PIPELINES:
        return "sd"
    raise InputError(f"--model {label}: is a {class_name}; diffdiff supports {SUPPORTED}")


def _read_json(path: Path, label: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"--model {label}: cannot read {path}: {e}") from None


def _hub_file(source: ModelSource, filename: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(source.value, filename, local_files_only=offline))
    except GatedRepoError:
        raise InputError(
            f"--model {source.label}: {source.value} is gated on the Hugging Face hub; accept its licence "
            f"on its page and log in with 'hf auth login'"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"--model {source.label}: no repository {source.value} on the Hugging Face hub (or it is private)") from None
    except LocalEntryNotFoundError:
        how = "--offline forbids downloading" if offline else "the hub could not be reached"
        raise InputError(
            f"--model {source.label}: {source.value} is not in the Hugging Face cache and {how}; "
            f"download it once with network access, or give a local folder or .safetensors file"
        ) from None
    except EntryNotFoundError:
        raise InputError(f"--model {source.label}: {source.value} has no {filename}; it is not a diffusers model repository") from None
    except OSError as e:
        raise InputError(f"--model {source.label}: could not fetch {filename} from {source.value}: {e}") from None


def _folder_file(source: ModelSource, filename: str, offline: bool) -> Path:
    """A config file of a folder, built-in or hub model."""
    if source.kind == "hub":
        return _hub_file(source, filename, offline)
    if source.kind == "builtin":
        from diffdiff_cli.models.builtin import builtin_folder

        root = builtin_folder(source.value)
    else:
        root = Path(source.value)
    path = root / filename
    if not path.is_file():
        raise InputError(f"--model {source.label}: {path} is missing; the folder is not a complete diffusers model")
    return path


def read_configs(source: ModelSource, offline: bool = False, model_config: str | None = None) -> ModelConfigs:
    """Family, scheduler config and VAE scale factor, without loading weights."""
    quiet_libraries(offline)
    if source.kind == "single_file":
        from diffdiff_cli.models.single_file import config_folder_for

        folder = config_folder_for(source.value, model_config)
        source = ModelSource("folder", str(folder), source.label)
    if source.kind == "builtin":
        from diffdiff_cli.models.builtin import builtin_configs

        family, scheduler, factor = builtin_configs(source.value)
        return ModelConfigs(family, scheduler, factor)
    index = _read_json(_folder_file(source, "model_index.json", offline), source.label)
    family = family_of(index.get("_class_name", "?"), source.label)
    scheduler = _read_json(_folder_file(source, "scheduler/scheduler_config.json", offline), source.label)
    vae = _read_json(_folder_file(source, "vae/config.json", offline), source.label)
    return ModelConfigs(family, scheduler, 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1))


def pick_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def load_model(source: ModelSource, offline: bool = False, model_config: str | None = None) -> LoadedModel:
    """The whole pipeline, on the best device here, ready for the sampling engine."""
    quiet_libraries(offline)
    configs = read_configs(source, offline, model_config)
    device, dtype = pick_device()
    from diffusers import StableDiffusionImg2ImgPipeline

    try:
        if source.kind == "single_file":
            from diffdiff_cli.models.single_file import load_single_file_pipeline

            pipe = load_single_file_pipeline(source.value, model_config, torch_dtype=dtype)
        else:
            if source.kind == "builtin":
                from diffdiff_cli.models.builtin import builtin_folder

                where = str(builtin_folder(source.value))
            else:
                where = source.value
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                where,
                local_files_only=offline or source.kind != "hub",
                safety_checker=None,
                requires_safety_checker=False,
                dtype=dtype,
            )
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"--model {source.label}: could not load: {_first_line(e)}") from None
    except (ValueError, RuntimeError, KeyError) as e:
        raise RunError(f"--model {source.label}: failed while loading: {_first_line(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return LoadedModel(source.label, configs.family, pipe, dict(pipe.scheduler.config))


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
