"""What users bring to a checkpoint: LoRAs, textual-inversion embeddings, a replacement VAE, clip skip.

Three stages, so bad input fails as early as the files allow:

1. `Extras.from_options` (no torch): the paths parse and exist, pickles need --allow-pickle.
2. `check_extras` (before the model loads): each file is read far enough to say what it is (safetensors
   key names come from the header alone) and whether it fits the model's family.
3. `ExtrasCheck.apply` (after the pipeline loads, before it is placed on its device): the VAE is swapped,
   the LoRAs loaded through diffusers' `load_lora_weights` (which converts kohya and A1111 layouts) and
   combined with `set_adapters`, then fused into the weights unless `fuse` is off; the embeddings go in
   through `load_textual_inversion`. Returns the record for the output's metadata (hashes as A1111 writes
   them: LoRAs by the "addnet" hash of a .safetensors file, embeddings by the file's sha256, 12 hex digits
   each; a VAE file by its AutoV2 hash, the sha256's first 10).
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffdiff_cli.errors import InputError, RunError
from diffdiff_cli.models.registry import PICKLE_SUFFIXES

LORA_FOLDER_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
_LORA_MARKERS = ("lora", "lokr")  # every layout names its tensors so: lora_down, lora_A, to_q_lora, qkv_lora1, lokr_w1
_LABELS = {"sd": "an SD 1.x/2.x", "sdxl": "an SDXL", "sd3": "an SD3", "flux": "a Flux"}
_TEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # cross-attention width of real checkpoints
_LATENT_CHANNELS = {"sd": 4, "sdxl": 4, "sd3": 16, "flux": 16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --- 1. parsing the flags ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float = 1.0

    @property
    def name(self) -> str:
        """As A1111 names it in `Lora hashes`: the file's stem (a diffusers LoRA folder's name)."""
        path = Path(self.path)
        return path.parent.name if path.name == LORA_FOLDER_FILE else path.stem

    def __str__(self) -> str:  # the canonical PATH:SCALE, which parses back to the same spec
        return f"{self.path}:{self.scale!r}"


@dataclass(frozen=True)
class EmbeddingSpec:
    path: str
    token: str

    def __str__(self) -> str:
        return f"{self.path}:{self.token}"


@dataclass(frozen=True)
class VaeSource:
    kind: str  # folder | file | hub
    value: str  # path or hub id
    subfolder: str | None = None  # "vae" for a whole model's folder

    @property
    def name(self) -> str:
        return self.value if self.kind == "hub" else Path(self.value).name


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _checked_file(path: str, flag: str, what: str, allow_pickle: bool) -> str:
    """The file a --lora/--embedding names, checked: it exists, and a pickle is allowed."""
    file = Path(path).expanduser()
    if file.is_dir() and (file / LORA_FOLDER_FILE).is_file() and flag == "--lora":
        file = file / LORA_FOLDER_FILE
    if not file.exists():
        raise InputError(f"{flag} {path}: no such file")
    if not file.is_file():
        raise InputError(f"{flag} {path}: is a folder, not {what} file")
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InputError(
            f"{flag} {path}: {suffix} files are pickles that can run code when loaded; pass --allow-pickle to "
            f"read its tensors only (weights_only), or convert it to .safetensors"
        )
    if suffix not in PICKLE_SUFFIXES and suffix != ".safetensors":
        raise InputError(f"{flag} {path}: not {what} file diffdiff reads; give a .safetensors (or, with --allow-pickle, .pt) file")
    return str(file)


def parse_lora(text: str, allow_pickle: bool = False) -> LoraSpec:
    """`PATH[:SCALE]`: SCALE only when what follows the last ':' is a number and `text` is not itself a file."""
    path, scale = text, 1.0
    if not Path(text).expanduser().exists() and ":" in text:
        head, tail = text.rsplit(":", 1)
        if _number(tail) is not None:
            path, scale = head, _number(tail)
    return LoraSpec(_checked_file(path, "--lora", "a LoRA", allow_pickle), scale)


def parse_embedding(text: str, allow_pickle: bool = False) -> EmbeddingSpec:
    """`PATH[:TOKEN]`: the token defaults to the file's stem (the word to use in prompts)."""
    path, token = text, None
    if not Path(text).expanduser().exists() and ":" in text:
        head, tail = text.rsplit(":", 1)
        if tail and not any(c in tail for c in "/\\"):
            path, token = head, tail
    path = _checked_file(path, "--embedding", "an embedding", allow_pickle)
    token = token or Path(path).stem
    if any(c.isspace() for c in token) or token in ("(", ")", "[", "]", "BREAK"):
        raise InputError(f"--embedding {text}: the token {token!r} must be one word; name one with PATH:TOKEN")
    return EmbeddingSpec(path, token)


def resolve_vae(text: str, allow_pickle: bool = False) -> VaeSource:
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return VaeSource("folder", str(path))
        if (path / "vae" / "config.json").is_file():
            return VaeSource("folder", str(path), "vae")
        raise InputError(f"--vae {text}: the folder has no config.json (a VAE folder) or vae/config.json (a model folder)")
    if path.is_file():
        return VaeSource("file", _checked_file(text, "--vae", "a VAE", allow_pickle))
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return VaeSource("hub", text)
    raise InputError(f"--vae {text}: no such file or folder (give a VAE folder, a .safetensors file or a hub id owner/name)")


@dataclass
class Extras:
    loras: tuple[LoraSpec, ...] = ()
    embeddings: tuple[EmbeddingSpec, ...] = ()
    vae: VaeSource | None = None
    vae_label: str | None = None  # as typed, for messages and the record
    clip_skip: int | None = None
    fuse: bool = True

    @classmethod
    def from_options(cls, loras=(), embeddings=(), vae=None, clip_skip=None, fuse=True, allow_pickle=False) -> "Extras":
        parsed = tuple(parse_embedding(e, allow_pickle) for e in embeddings)
        tokens = [e.token for e in parsed]
        for token in tokens:
            if tokens.count(token) > 1:
                raise InputError(f"--embedding: two embeddings use the token {token!r}; name them apart with PATH:TOKEN")
        return cls(
            tuple(parse_lora(lora, allow_pickle) for lora in loras), parsed,
            None if vae is None else resolve_vae(vae, allow_pickle), vae, clip_skip, fuse,
        )

    @classmethod
    def from_settings(cls, settings, allow_pickle: bool = False) -> "Extras":
        return cls.from_options(settings.loras, settings.embeddings, settings.vae, settings.clip_skip, settings.fuse_lora, allow_pickle)

    def settings(self) -> dict:
        """The EditSettings fields these stand for (canonical strings, so a rerun parses them back the same)."""
        return dict(
            loras=tuple(str(lora) for lora in self.loras), embeddings=tuple(str(e) for e in self.embeddings),
            vae=self.vae_label, clip_skip=self.clip_skip, fuse_lora=self.fuse,
        )

    @property
    def empty(self) -> bool:
        return not (self.loras or self.embeddings or self.vae or self.clip_skip)


# --- 2. reading and checking the files --------------------------------------------------------------


def _has(keys, fragments) -> bool:
    return any(f in k for k in keys for f in fragments)


def _what_it_holds(keys: list[str]) -> str:
    if _has(keys, _LORA_MARKERS):
        return "a LoRA (lora_* keys)"
    if set(keys) & {"emb_params", "clip_l", "clip_g", "string_to_param"}:
        return "a textual-inversion embedding"
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
        return "a full Stable Diffusion checkpoint"
    if _has(keys, ("encoder.down", "decoder.up")):
        return "a VAE"
    first = sorted(keys)[0] if keys else "none"
    return f"{len(keys)} tensors (first {first!r})"


def _read_pickle(path: str, flag: str):
    """A pickle read with torch.load(weights_only=True): tensors and plain containers only, nothing runs."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a Python object ({found.group(1)})" if found else "content"
        raise InputError(f"{flag} {path}: the pickle holds {what} besides tensors, which diffdiff refuses to unpickle") from None
    except Exception as err:  # torch raises RuntimeError/EOFError/ValueError for files it cannot parse
        raise InputError(f"{flag} {path}: not a readable PyTorch file ({type(err).__name__})") from None


def _safetensors_table(path: str, flag: str) -> dict[str, list[int]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError for any malformed file
        raise InputError(f"{flag} {path}: not a readable safetensors file ({str(err).splitlines()[0][:120]})") from None


def _read_tensors(path: str, flag: str) -> dict:
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path, flag)
    from safetensors.torch import load_file

    return load_file(path)


@dataclass
class LoraFile:
    spec: LoraSpec
    table: dict[str, list[int]]  # key -> shape
    state: dict | None = None  # the tensors, when reading the keys meant reading them all (pickles)

    @property
    def cross_width(self) -> int | None:
        """The text-embedding width its UNet cross-attention layers take (None when it has none)."""
        for key, shape in self.table.items():
            if "attn2" in key and ("to_k" in key or "to_v" in key) and _has([key], ("lora_down", "lora_A", "lora.down", "down.weight")) and len(shape) == 2:
                return shape[1]
        return None

    def families(self) -> tuple[set[str], str]:
        """The families it may be for, and the evidence."""
        keys = list(self.table)
        unet = _has(keys, ("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block", "lora_unet_input_blocks",
                           "lora_unet_output_blocks", "lora_unet_middle_block", "unet.", "attentions"))
        if _has(keys, ("double_blocks", "single_blocks", "single_transformer_blocks")):
            return {"flux"}, "Flux block names"
        if _has(keys, ("joint_blocks",)):
            return {"sd3"}, "SD3 block names"
        if _has(keys, ("transformer.", "lora_transformer_")) and not unet:
            return {"sd3", "flux"}, "diffusion-transformer keys"
        if _has(keys, ("lora_te2_", "text_encoder_2.")):
            return {"sdxl"}, "a second text encoder"
        width = self.cross_width
        if width in (768, 1024):
            return {"sd"}, f"cross-attention width {width}"
        if width == 2048:
            return {"sdxl"}, "cross-attention width 2048"
        if _has(keys, ("lora_te_",)) and not _has(keys, ("lora_te1_",)):
            return {"sd"}, "one text encoder"
        return ({"sd", "sdxl"}, "UNet keys") if unet or width else (set(_LABELS), "no telling keys")


def _read_lora(spec: LoraSpec) -> LoraFile:
    flag = f"--lora {spec.path}"
    if Path(spec.path).suffix.lower() in PICKLE_SUFFIXES:
        import torch

        state = _read_pickle(spec.path, "--lora")
        while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InputError(f"{flag}: the file holds a {type(state).__name__}, not LoRA weights")
        state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        lora = LoraFile(spec, {k: list(v.shape) for k, v in state.items()}, state)
    else:
        lora = LoraFile(spec, _safetensors_table(spec.path, "--lora"))
    keys = list(lora.table)
    if not _has(keys, _LORA_MARKERS):
        raise InputError(f"{flag}: not a LoRA: it holds {_what_it_holds(keys)}")
    if _has(keys, ("hada_w",)):
        raise InputError(f"{flag}: a LyCORIS LoHa adapter (hada_* keys), which diffusers cannot load; use a LoRA")
    return lora


def _vectors(obj, flag: str) -> dict:
    """The embedding's vectors: {"": (n, width)} for SD 1.x/2.x, {"clip_l": ..., "clip_g": ...} for SDXL."""
    import torch

    def as_rows(value):
        if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
            raise InputError(f"{flag}: not a textual-inversion embedding (its vectors have shape {getattr(value, 'shape', '?')})")
        return value.detach().float().reshape(-1, value.shape[-1])

    if isinstance(obj, torch.Tensor):
        return {"": as_rows(obj)}
    if isinstance(obj, dict):
        if "clip_l" in obj or "clip_g" in obj:
            return {k: as_rows(obj[k]) for k in ("clip_l", "clip_g") if k in obj}
        params = obj.get("string_to_param")
        if isinstance(params, dict) and params:  # A1111's .pt
            return {"": as_rows(params.get("*", next(iter(params.values()))))}
        if "emb_params" in obj:  # A1111's .safetensors
            return {"": as_rows(obj["emb_params"])}
        if len(obj) == 1:  # diffusers: {token: vectors}
            return {"": as_rows(next(iter(obj.values())))}
        raise InputError(f"{flag}: not a textual-inversion embedding: it holds {_what_it_holds([str(k) for k in obj])}")
    raise InputError(f"{flag}: not a textual-inversion embedding (the file holds a {type(obj).__name__})")


@dataclass
class ExtrasCheck:
    """The extras, read and checked against the model's family; `apply` puts them on the loaded pipeline."""

    extras: Extras
    family: object  # diffdiff_cli.families.Family
    loras: list[LoraFile] = field(default_factory=list)
    embeddings: list[tuple[EmbeddingSpec, dict]] = field(default_factory=list)

    def apply(self, pipe, offline: bool, dtype) -> dict:
        """Swap the VAE, load and combine the LoRAs, add the embeddings; return the metadata record."""
        record: dict = {}
        if self.extras.vae is not None:
            record.update(_swap_vae(pipe, self.extras.vae, self.extras.vae_label, self.family, offline, dtype))
        if self.extras.clip_skip is not None:
            from diffdiff_cli.sample.families.text import check_layer

            for encoder in (getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")):
                if encoder is not None:
                    check_layer(encoder, self.extras.clip_skip)
        if self.loras:
            record["lora_hashes"] = _apply_loras(pipe, self.loras, self.family, self.extras.fuse)
        if self.embeddings:
            record["ti_hashes"] = {}
            for spec, vectors in self.embeddings:
                _add_embedding(pipe, spec, vectors, self.family)
                record["ti_hashes"][spec.token] = file_sha256(spec.path)[:12]
        return record

    def apply_to_refiner(self, refiner) -> None:
        """An SDXL refiner reads prompts with the OpenCLIP encoder only: it gets the embeddings' clip_g vectors."""
        for spec, vectors in self.embeddings:
            if "clip_g" in vectors:
                _add_embedding(refiner, spec, {"clip_g": vectors["clip_g"]}, self.family)


def check_extras(extras: Extras, family) -> ExtrasCheck:
    """Read every file far enough to tell what it is; refuse what cannot fit `family` (before any weights load)."""
    check = ExtrasCheck(extras, family)
    if extras.clip_skip is not None and family.name == "flux":
        raise InputError("--clip-skip: Flux reads only the pooled output of its CLIP encoder, so clip skip does not apply")
    for spec in extras.loras:
        lora = _read_lora(spec)
        families, evidence = lora.families()
        if family.name not in families:
            looks = " or ".join(_LABELS[f] for f in sorted(families))
            raise InputError(f"--lora {spec.path}: keys look like {looks} LoRA ({evidence}); the model is {family.label}")
        check.loras.append(lora)
    for spec in extras.embeddings:
        flag = f"--embedding {spec.path}"
        if family.name not in ("sd", "sdxl"):
            raise InputError(f"{flag}: textual-inversion embeddings work with SD 1.x/2.x and SDXL models; the model is {family.label}")
        vectors = _vectors(_read_tensors(spec.path, "--embedding"), flag)
        if family.name == "sdxl" and "clip_g" not in vectors:
            width = vectors[next(iter(vectors))].shape[-1]
            raise InputError(f"{flag}: an SD 1.x/2.x embedding ({width}-wide vectors); SDXL models need one with clip_l and clip_g vectors")
        if family.name == "sd" and "" not in vectors:
            raise InputError(f"{flag}: an SDXL embedding (clip_l/clip_g vectors); the model is {family.label}")
        check.embeddings.append((spec, vectors))
    if extras.vae is not None:
        _check_vae_file(extras.vae, extras.vae_label, family)
    return check


# --- 3. applying them -------------------------------------------------------------------------------


def _apply_loras(pipe, loras: list[LoraFile], family, fuse: bool) -> dict[str, str]:
    names = []
    for index, lora in enumerate(loras):
        flag = f"--lora {lora.spec.path}"
        width, unet = lora.cross_width, getattr(pipe, "unet", None)
        if width is not None and unet is not None and width != unet.config.cross_attention_dim:
            known = f" ({_TEXT_WIDTHS[width]})" if width in _TEXT_WIDTHS else ""
            raise InputError(
                f"{flag}: its cross-attention layers take {width}-wide text embeddings{known}; "
                f"this {family.label} model's take {unet.config.cross_attention_dim}"
            )
        name = f"lora{index}"  # peft adapter names must be plain identifiers
        state = lora.state if lora.state is not None else _read_tensors(lora.spec.path, "--lora")
        try:
            with warnings.catch_warnings():  # peft's "Already found a peft_config" is what a second LoRA means
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                pipe.load_lora_weights(state, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise InputError(f"{flag}: does not fit this {family.label} model ({_first_line(err)})") from None
        if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
            raise InputError(f"{flag}: none of its {len(lora.table)} tensors matches a layer of this {family.label} model")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.spec.scale for lora in loras])
    if fuse:  # merge W + sum(scale x B A) once: the steps then run plain layers
        # every component by name: Flux's fuse_lora defaults to the transformer only, and unloading would
        # then drop its text encoder's LoRA
        pipe.fuse_lora(components=list(pipe._lora_loadable_modules), adapter_names=names)
        pipe.unload_lora_weights()
    return {lora.spec.name: lora_hash(lora.spec.path) for lora in loras}


def _add_embedding(pipe, spec: EmbeddingSpec, vectors: dict, family) -> None:
    targets = (
        [("", pipe.tokenizer, pipe.text_encoder)]
        if family.name == "sd"
        else [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
    )
    for key, tokenizer, encoder in targets:
        if key not in vectors or encoder is None:
            continue
        width, expected = vectors[key].shape[-1], encoder.get_input_embeddings().weight.shape[-1]
        if width != expected:
            known = f" ({_TEXT_WIDTHS[width]})" if width in _TEXT_WIDTHS and key == "" else ""
            which = f"{key} " if key else ""
            raise InputError(
                f"--embedding {spec.path}: its {which}vectors are {width} wide{known}; this model's text encoder takes {expected}"
            )
        try:
            pipe.load_textual_inversion(vectors[key], token=spec.token, tokenizer=tokenizer, text_encoder=encoder)
        except ValueError as err:
            raise InputError(f"--embedding {spec.path}: {_first_line(err)}; name another token with PATH:TOKEN") from None


def _check_vae_file(source: VaeSource, label: str, family) -> None:
    """A VAE file or folder must hold a VAE with the family's latent channels (a hub id is checked at load)."""
    flag = f"--vae {label}"
    want = _LATENT_CHANNELS[family.name]
    if source.kind == "folder":
        import json

        config = Path(source.value) / (source.subfolder or "") / "config.json"
        try:
            channels = json.loads(config.read_text()).get("latent_channels")
        except (OSError, ValueError) as err:
            raise InputError(f"{flag}: cannot read {config} ({err})") from None
    elif source.kind == "file":
        if Path(source.value).suffix.lower() in PICKLE_SUFFIXES:
            table = {k: list(v.shape) for k, v in _vae_state(source.value, flag).items()}
        else:
            table = _safetensors_table(source.value, "--vae")
        conv = next((shape for key, shape in table.items() if key.endswith("encoder.conv_out.weight")), None)
        if conv is None:
            raise InputError(f"{flag}: not a VAE: it holds {_what_it_holds(list(table))}")
        channels = conv[0] // 2
    else:
        return
    if channels != want:
        raise InputError(f"{flag}: a VAE with {channels} latent channels; {family.label} models use {want}")


def _vae_state(path: str, flag: str) -> dict:
    import torch

    state = _read_tensors(path, "--vae")
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{flag}: the file holds a {type(state).__name__}, not VAE weights")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _swap_vae(pipe, source: VaeSource, label: str, family, offline: bool, dtype) -> dict:
    from diffusers import AutoencoderKL

    flag = f"--vae {label}"
    if source.kind == "file":
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        state = _vae_state(source.value, flag)
        for prefix in ("first_stage_model.", "vae."):
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if any(k.startswith("encoder.down.") for k in state):  # the original (LDM) layout
            state = convert_ldm_vae_checkpoint(state, dict(pipe.vae.config))
        vae = AutoencoderKL.from_config(pipe.vae.config)
        try:
            vae.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise InputError(f"{flag}: does not fit this model's VAE ({_first_line(err)})") from None
        vae.to(dtype)
        hash_ = file_sha256(source.value)[:10]
    else:
        subfolder = source.subfolder if source.kind == "folder" else _hub_vae_subfolder(source.value, label, offline)
        try:
            vae = AutoencoderKL.from_pretrained(
                source.value, subfolder=subfolder, local_files_only=offline or source.kind == "folder", torch_dtype=dtype
            )
        except OSError as err:
            raise InputError(f"{flag}: could not load it ({_first_line(err)})") from None
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            raise RunError(f"{flag}: failed while loading ({_first_line(err)})") from None
        if vae.config.latent_channels != pipe.vae.config.latent_channels:
            raise InputError(
                f"{flag}: a VAE with {vae.config.latent_channels} latent channels; {family.label} models use "
                f"{pipe.vae.config.latent_channels}"
            )
        hash_ = None
    vae.eval()
    pipe.register_modules(vae=vae)
    return {"vae_name": source.name, "vae_hash": hash_}


def _hub_vae_subfolder(repo: str, label: str, offline: bool) -> str | None:
    """None when the repository is a VAE (config.json at its root), "vae" when it is a whole model."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    flag = f"--vae {label}"
    for subfolder in (None, "vae"):
        try:
            hf_hub_download(repo, "config.json", subfolder=subfolder, local_files_only=offline)
            return subfolder
        except EntryNotFoundError:
            continue
        except GatedRepoError:
            raise InputError(f"{flag}: {repo} is gated on the Hugging Face hub; accept its licence and log in with 'hf auth login'") from None
        except RepositoryNotFoundError:
            raise InputError(f"{flag}: no repository {repo} on the Hugging Face hub (or it is private)") from None
        except LocalEntryNotFoundError:
            if subfolder is None:
                continue  # not cached at the root: perhaps as a model's vae/
            how = "--offline forbids downloading" if offline else "the hub could not be reached"
            raise InputError(f"{flag}: {repo} is not in the Hugging Face cache and {how}; give a local folder or file") from None
        except OSError as err:
            raise InputError(f"{flag}: could not fetch its config from {repo} ({_first_line(err)})") from None
    raise InputError(f"{flag}: {repo} has neither config.json nor vae/config.json; it is not a diffusers VAE or model")


# --- hashes, as A1111 writes them -------------------------------------------------------------------


def file_sha256(path: str, offset: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_hash(path: str) -> str:
    """A1111's LoRA short hash: the "addnet" hash of a .safetensors file (sha256 of the tensor data after the
    header, which metadata edits leave alone), else the file's sha256; first 12 hex digits."""
    if Path(path).suffix.lower() != ".safetensors":
        return file_sha256(path)[:12]
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
    return file_sha256(path, offset=8 + header)[:12]


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
