"""Load a model named by `--model`: its configs alone (for `plan`) or the whole pipeline (for `edit`)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffdiff_cli.errors import InputError, RunError
from diffdiff_cli.models.registry import ModelSource

from diffdiff_cli.families import FAMILIES, Family, family_of_pipeline


def quiet_environment(offline: bool) -> None:
    """Library chatter and progress bars off, downloads forbidden when offline: the environment and warning
    filters only, so reading configs (plan, map preview) imports none of the libraries.

    HF_HUB_OFFLINE is read when huggingface_hub is imported, so this runs before any import of it; diffusers
    and transformers read their *_VERBOSITY variables when first imported, so a later import stays quiet too.
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


def quiet_libraries(offline: bool) -> None:
    """`quiet_environment`, and diffusers' and transformers' own logging and progress bars (imports both)."""
    quiet_environment(offline)
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


@dataclass
class ModelConfigs:
    """What `plan` needs, read without any weights."""

    family: Family
    scheduler_config: dict
    vae_scale_factor: int
    native_size: int = 0  # the side of the square the model was trained at (0: the family's default_size)

    def __post_init__(self):
        self.native_size = self.native_size or self.family.default_size

    @property
    def latent_factor(self) -> int:
        """Image pixels per engine latent cell side (16 for FLUX.2's patchified latents, else the VAE's)."""
        return self.vae_scale_factor * self.family.latent_patch


@dataclass
class Runtime:
    """Where and how the weights run."""

    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16
    offload: str = "none"  # none | model | sequential
    vae_tiling: bool = False
    no_t5: bool = False  # SD3: drop the T5 encoder to save memory
    compile: bool = False  # torch.compile the denoiser(s)

    def validate(self) -> None:
        for flag, value, choices in (
            ("--device", self.device, ("auto", "cpu", "cuda", "mps")),
            ("--dtype", self.dtype, ("auto", "fp32", "fp16", "bf16")),
            ("--offload", self.offload, ("none", "model", "sequential")),
        ):
            if value not in choices:
                raise InputError(f"{flag} {value}: choose one of: {', '.join(choices)}")


@dataclass
class LoadedModel:
    label: str
    family: Family
    pipe: object
    scheduler_config: dict
    refiner: object = None  # a loaded SDXL refiner pipeline, or None
    extras_record: dict = field(default_factory=dict)  # LoRA/embedding/VAE names and hashes, for the metadata
    native_size: int = 0  # as ModelConfigs.native_size (0: the family's default_size)

    def __post_init__(self):
        self.native_size = self.native_size or self.family.default_size


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
    """Family, scheduler config, VAE scale factor and native resolution, without loading weights (nor
    importing torch or diffusers)."""
    quiet_environment(offline)
    if source.kind == "single_file":
        from diffdiff_cli.models.single_file import config_folder_for

        folder = config_folder_for(source.value, model_config)
        source = ModelSource("folder", str(folder), source.label)
    if source.kind == "builtin":
        from diffdiff_cli.models.builtin import SHIPPED, builtin_configs, shipped_folder

        family, scheduler, factor = builtin_configs(source.value)
        native = 0  # random-weight built-ins stand for their family's real models, so they have its size
        if source.value in SHIPPED:
            unet = _read_json(shipped_folder(source.value) / "unet" / "config.json", source.label)
            native = native_side(FAMILIES[family], factor, unet, scheduler)
        return ModelConfigs(FAMILIES[family], scheduler, factor, native)
    index = _read_json(_folder_file(source, "model_index.json", offline), source.label)
    family = family_of_pipeline(index.get("_class_name", "?"), source.label)
    scheduler = _read_json(_folder_file(source, "scheduler/scheduler_config.json", offline), source.label)
    vae = _read_json(_folder_file(source, "vae/config.json", offline), source.label)
    factor = vae_scale_factor_of(vae)
    denoiser = None
    try:
        name = "unet" if "unet" in index else "transformer"
        denoiser = _read_json(_folder_file(source, f"{name}/config.json", offline), source.label)
    except InputError:  # not needed to run: the family's usual size stands in
        pass
    return ModelConfigs(family, scheduler, factor, native_side(family, factor, denoiser, scheduler))


def native_side(family: Family, factor: int, denoiser_config: dict | None, scheduler_config: dict) -> int:
    """The resolution a model was trained at: its denoiser's sample_size (latent cells) times the VAE
    factor (SD 1.x 64 -> 512, SD 2.x-768 96 -> 768, SDXL 128 -> 1024, SDXL-Turbo 64 -> 512); an SD model
    without one predicting v is a 768 model; otherwise the family's usual size (Flux: 1024)."""
    sample = (denoiser_config or {}).get("sample_size")
    if isinstance(sample, int) and sample > 0:
        return sample * factor
    if family.name == "sd" and scheduler_config.get("prediction_type") == "v_prediction":
        return 768
    return family.default_size


def vae_scale_factor_of(vae_config: dict) -> int:
    """Pixels per VAE latent cell, as the pipelines compute it (Qwen-Image's video VAE counts its downsamples)."""
    if "temperal_downsample" in vae_config:
        return 2 ** len(vae_config["temperal_downsample"])
    return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)


def resolve_runtime(runtime: Runtime):
    """The torch device and dtype: fp32 on the CPU, fp16 on CUDA (bf16 where the GPU has it and fp16 is unsafe)."""
    import torch

    if runtime.device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    else:
        device = runtime.device
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("--device mps: no Apple GPU is available here; use --device cpu or auto")
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{int(local_rank) % torch.cuda.device_count()}"  # one GPU per process under accelerate/torchrun
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if runtime.dtype != "auto":
        return torch.device(device), dtypes[runtime.dtype]
    return torch.device(device), torch.float32 if device == "cpu" else torch.float16


def half_precision_for(family: Family, runtime: Runtime, dtype):
    """bfloat16 instead of float16 for families shipped in bf16 (their activations overflow fp16), unless asked."""
    import torch

    if runtime.dtype == "auto" and family.bf16 and dtype == torch.float16:
        return torch.bfloat16
    return dtype


def component_dtypes(family: Family, runtime: Runtime, dtype) -> dict:
    """Components that run in another dtype than the rest, as diffusers' own pipelines run them.

    `--dtype auto` in fp16 keeps the components a family declares fp16-unsafe (SD3's T5) in bf16. The VAE
    stays in the run's dtype: SD 1.x/2.x and SD3 decode in fp16 as diffusers does, and SDXL's VAE
    (`force_upcast`) is upcast to fp32 only around each encode and decode (the SDXL adapter), as
    diffusers' SDXL pipelines do, instead of being held in fp32.
    """
    import torch

    if runtime.dtype == "auto" and dtype == torch.float16:
        return {name: torch.bfloat16 for name in family.bf16_components}
    return {}


def compile_denoiser(pipe) -> None:
    """torch.compile the UNet or transformer in place (the module keeps its type, config and dtype)."""
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.compile()


def _from_pretrained(family: Family, where: str, local_only: bool, dtype, runtime: Runtime, **extra):
    import diffusers

    cls = getattr(diffusers, family.img2img_pipeline)
    if family.name == "sd":
        extra.update(safety_checker=None, requires_safety_checker=False)
    if family.name == "sd3" and runtime.no_t5:
        extra.update(text_encoder_3=None, tokenizer_3=None)
    return cls.from_pretrained(where, local_files_only=local_only, dtype=dtype, **extra)


def _place(pipe, family: Family, device, dtype, runtime: Runtime) -> None:
    pipe.set_progress_bar_config(disable=True)
    for name, component_dtype in component_dtypes(family, runtime, dtype).items():
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(component_dtype)
    if runtime.vae_tiling:
        pipe.vae.enable_tiling()
    if runtime.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif runtime.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if runtime.compile:
        compile_denoiser(pipe)


def _load_pipeline(source: ModelSource, family: Family, offline: bool, model_config, dtype, runtime: Runtime, **extra):
    try:
        if source.kind == "single_file":
            from diffdiff_cli.models.single_file import load_single_file_pipeline

            return load_single_file_pipeline(source.value, model_config, torch_dtype=dtype)
        if source.kind == "builtin":
            from diffdiff_cli.models.builtin import builtin_folder

            where = str(builtin_folder(source.value))
        else:
            where = source.value
        return _from_pretrained(family, where, offline or source.kind != "hub", dtype, runtime, **extra)
    except InputError:
        raise
    except MemoryError:
        raise RunError(f"--model {source.label}: out of memory while loading; try --offload model or --dtype fp16") from None
    except OSError as e:
        raise InputError(f"--model {source.label}: could not load: {_first_line(e)}") from None
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise RunError(f"--model {source.label}: failed while loading: {_first_line(e)}") from None


def load_model(
    source: ModelSource,
    offline: bool = False,
    model_config: str | None = None,
    runtime: Runtime | None = None,
    refiner: ModelSource | None = None,
    extras=None,
) -> LoadedModel:
    """The whole pipeline (and an SDXL refiner, if asked), placed as `runtime` says.

    `extras` (models.extras.Extras: LoRAs, embeddings, a VAE) are checked against the family before any
    weights load, and applied to the pipeline before it is placed.
    """
    runtime = runtime or Runtime()
    runtime.validate()
    quiet_libraries(offline)
    configs = read_configs(source, offline, model_config)
    device, dtype = resolve_runtime(runtime)
    dtype = half_precision_for(configs.family, runtime, dtype)
    refiner_pipe = None
    if refiner is not None:
        if configs.family.name != "sdxl":
            raise InputError(f"--refiner: refiners go with SDXL base models; --model {source.label} is {configs.family.label}")
        refiner_configs = read_configs(refiner, offline)
        if refiner_configs.family.name != "sdxl":
            raise InputError(f"--refiner {refiner.label}: is {refiner_configs.family.label}, not an SDXL refiner")
    checked = None
    if extras is not None and not extras.empty:
        from diffdiff_cli.models.extras import check_extras

        checked = check_extras(extras, configs.family)
    pipe = _load_pipeline(source, configs.family, offline, model_config, dtype, runtime)
    record = checked.apply(pipe, offline, dtype) if checked else {}
    _place(pipe, configs.family, device, dtype, runtime)
    if refiner is not None:
        refiner_pipe = _load_pipeline(refiner, configs.family, offline, None, dtype, runtime, vae=pipe.vae)
        if checked:
            checked.apply_to_refiner(refiner_pipe)
        _place(refiner_pipe, configs.family, device, dtype, runtime)
    return LoadedModel(source.label, configs.family, pipe, dict(pipe.scheduler.config), refiner_pipe, record, configs.native_size)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
