"""Single-file SDXL checkpoints (base and refiner) and pickle checkpoints (--allow-pickle), offline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ldm_convert import pipeline_to_ldm, save_as_pickle_checkpoint, save_as_single_file  # noqa: E402

from diffdiff_cli.errors import InputError  # noqa: E402
from diffdiff_cli.models.registry import resolve_model  # noqa: E402
from diffdiff_cli.models.single_file import (  # noqa: E402
    config_folder_for,
    load_single_file_pipeline,
    scheduler_config_for_single_file,
    single_file_family,
)


def _modules(pipe) -> dict:
    import torch

    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _assert_same_weights(expected, actual):
    import torch

    want_modules, got_modules = _modules(expected), _modules(actual)
    assert want_modules.keys() == got_modules.keys()
    for component, module in want_modules.items():
        want, got = module.state_dict(), got_modules[component].state_dict()
        assert want.keys() == got.keys(), (component, sorted(set(want) ^ set(got))[:5])
        differ = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
        assert not differ, (component, differ[:5])


def _one_line_naming(err: pytest.ExceptionInfo, what) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(what) in message, message
    return message


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return path


# --- fixtures: the tiny built-ins as single files ------------------------------------------------------


def _folder_pipe(name: str):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from diffdiff_cli.models.builtin import builtin_folder

    folder = builtin_folder(name)
    return folder, StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    folder, pipe = _folder_pipe("tiny-sdxl")
    path = save_as_single_file(pipe, tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors", text_encoder_layout="sdxl")
    return folder, pipe, path


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    folder, pipe = _folder_pipe("tiny-sdxl-refiner")
    path = save_as_single_file(pipe, tmp_path_factory.mktemp("refiner") / "tiny-refiner.safetensors",
                               text_encoder_layout="sdxl_refiner")
    return folder, pipe, path


# --- SDXL round trips -----------------------------------------------------------------------------------


def test_sdxl_layout_is_the_original_one(sdxl):
    """The converter writes what real SDXL files hold (and what diffusers' converter reads back)."""
    from safetensors import safe_open

    _, pipe, path = sdxl
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        projection = fh.get_tensor("conditioner.embedders.1.model.text_projection")
    assert {"model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
            "conditioner.embedders.1.model.positional_embedding",
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
            "conditioner.embedders.1.model.ln_final.weight",
            "first_stage_model.decoder.mid.attn_1.q.weight"} <= keys
    assert not any(k.startswith(("cond_stage_model.", "conditioner.embedders.0.model.")) for k in keys)
    # OpenCLIP stores the projection as (width, embed): the transpose of transformers' Linear weight
    assert tuple(projection.shape) == (64, 32)
    assert (projection.T == pipe.text_encoder_2.text_projection.weight).all()


def test_sdxl_single_file_loads_offline_and_equals_its_folder(sdxl):
    folder, pipe, path = sdxl
    assert single_file_family(path) == "sdxl"
    assert config_folder_for(path, folder) == folder
    loaded = load_single_file_pipeline(path, config_folder=folder)
    assert type(loaded).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert set(_modules(loaded)) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    _assert_same_weights(pipe, loaded)
    assert loaded.scheduler.config == pipe.scheduler.config
    assert loaded.config.force_zeros_for_empty_prompt and not loaded.config.requires_aesthetics_score
    for name in ("tokenizer", "tokenizer_2"):
        assert getattr(loaded, name)("a cat").input_ids == getattr(pipe, name)("a cat").input_ids


def _fresh_memory(pipe) -> None:
    """Copy every weight into newly allocated (64-byte aligned) memory.

    Loaded weights live where the loader left them: memory-mapped from the file at whatever offset the
    tensor has there, or in a fresh copy where diffusers converted it (split q/k/v, transposed projections).
    The CPU BLAS rounds differently for differently aligned operands (seen here: SDXL's pooled
    text_projection, 1 ulp), so two loads of the same weights agree to float rounding, not bit for bit,
    until their memory layout is the same too.
    """
    import torch

    with torch.no_grad():
        for module in _modules(pipe).values():
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()


def test_sdxl_single_file_edit_equals_folder_edit(sdxl, images):
    """The issue's requirement: the single file gives the same output pixels as its folder."""
    from PIL import Image

    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.models.load import load_model

    folder, _, path = sdxl
    from_file = load_model(resolve_model(str(path)), offline=True, model_config=str(folder))
    from_folder = load_model(resolve_model("tiny-sdxl"), offline=True)
    assert from_file.family.name == from_folder.family.name == "sdxl"
    assert type(from_file.pipe) is type(from_folder.pipe)
    assert from_file.scheduler_config == from_folder.scheduler_config
    _assert_same_weights(from_folder.pipe, from_file.pipe)

    settings = EditSettings(prompt="a red circle", steps=3, seed=1, fit="full")

    def edit(model):
        result = compute_edit(model, settings, images["photo"], images["gradient"])
        return np.asarray(result.image).astype(int), result.latents

    # as loaded: the same up to float rounding (memory alignment, see _fresh_memory)
    (want, want_latents), (got, got_latents) = edit(from_folder), edit(from_file)
    assert want.shape == got.shape == (64, 64, 3)
    assert np.abs(want - got).max() <= 1
    assert float((want_latents - got_latents).abs().max()) < 1e-4
    # with the weights in equally fresh memory: bit for bit
    _fresh_memory(from_folder.pipe)
    _fresh_memory(from_file.pipe)
    (want, want_latents), (got, got_latents) = edit(from_folder), edit(from_file)
    assert (want == got).all()
    assert bool((want_latents == got_latents).all())
    source = np.asarray(Image.open(images["photo"]).convert("RGB")).astype(int)
    assert (got != source).any()  # the edit changed pixels: the comparison is not vacuous


def test_sdxl_refiner_single_file(refiner, sdxl):
    folder, pipe, path = refiner
    assert single_file_family(path) == "sdxl-refiner"
    loaded = load_single_file_pipeline(path, config_folder=folder)
    assert type(loaded).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert loaded.text_encoder is None and loaded.tokenizer is None
    assert set(_modules(loaded)) == {"unet", "vae", "text_encoder_2"}
    _assert_same_weights(pipe, loaded)
    assert loaded.config.requires_aesthetics_score

    # base and refiner config folders are not interchangeable: said up front, in one line
    base_folder, _, base_path = sdxl
    with pytest.raises(InputError) as err:
        config_folder_for(path, base_folder)
    assert "refiner" in _one_line_naming(err, base_folder)
    with pytest.raises(InputError) as err:
        load_single_file_pipeline(base_path, config_folder=folder)
    assert "refiner" in _one_line_naming(err, folder)


def test_shipped_sdxl_config_that_does_not_fit_is_one_line_input_error(sdxl, refiner):
    """The tiny files are SDXL-shaped but not SDXL-sized: the shipped configs refuse them in one line."""
    for _, _, path in (sdxl, refiner):
        with pytest.raises(InputError) as err:
            load_single_file_pipeline(path)
        assert "--model-config" in _one_line_naming(err, path)


def test_family_mismatch_between_file_and_config_folder(sdxl, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    from diffdiff_cli.models.builtin import builtin_folder

    sdxl_folder, _, sdxl_path = sdxl
    sd_folder = builtin_folder("tiny-sd15")
    for call in (config_folder_for, scheduler_config_for_single_file, load_single_file_pipeline):
        with pytest.raises(InputError) as err:
            call(sdxl_path, sd_folder)
        message = _one_line_naming(err, sd_folder)
        assert "Stable Diffusion 1.x/2.x pipeline" in message and "Stable Diffusion XL checkpoint" in message

    sd_path = save_as_single_file(StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder, local_files_only=True),
                                  tmp_path / "sd.safetensors")
    with pytest.raises(InputError) as err:
        config_folder_for(sd_path, sdxl_folder)
    assert "Stable Diffusion XL pipeline" in _one_line_naming(err, sdxl_folder)


def test_sdxl_missing_text_encoder_2_tensor_is_an_input_error(sdxl, tmp_path):
    from safetensors.torch import load_file

    folder, _, path = sdxl
    tensors = load_file(str(path))
    cut = _save(tmp_path / "cut.safetensors",
                {k: v for k, v in tensors.items() if k != "conditioner.embedders.1.model.ln_final.weight"})
    with pytest.raises(InputError) as err:
        load_single_file_pipeline(cut, config_folder=folder)
    assert "text_encoder_2" in _one_line_naming(err, cut)


# --- detection from keys only ---------------------------------------------------------------------------


def _fake(path: Path, *text_keys: str, in_channels: int = 4) -> Path:
    import torch

    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, in_channels, 1, 1),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 1, 1),
    }
    tensors.update({key: torch.zeros(2, 2) for key in text_keys})
    return _save(path, tensors)


CLIP_L = "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
BIG_G = "conditioner.embedders.1.model.positional_embedding"
REFINER_G = "conditioner.embedders.0.model.text_projection"


def test_sdxl_families_from_keys(tmp_path):
    assert single_file_family(_fake(tmp_path / "base.safetensors", CLIP_L, BIG_G)) == "sdxl"
    assert single_file_family(_fake(tmp_path / "refiner.safetensors", REFINER_G)) == "sdxl-refiner"
    refusals = {
        "inpainting": (_fake(tmp_path / "inpaint.safetensors", CLIP_L, BIG_G, in_channels=9), "inpainting"),
        "only bigG": (_fake(tmp_path / "g.safetensors", BIG_G), "without its first text encoder"),
        "odd conditioner": (_fake(tmp_path / "odd.safetensors", "conditioner.embedders.3.foo.weight"),
                            "neither the base layout"),
    }
    for what, (path, words) in refusals.items():
        with pytest.raises(InputError) as err:
            single_file_family(path)
        assert words in _one_line_naming(err, path), what


def test_detection_and_plan_configs_do_not_import_torch(tmp_path):
    import subprocess

    ckpt = _fake(tmp_path / "x.safetensors", CLIP_L, BIG_G)
    code = (
        "import sys; from diffdiff_cli.models.single_file import single_file_family, "
        "scheduler_config_for_single_file as s; "
        f"assert single_file_family({str(ckpt)!r}) == 'sdxl'; "
        f"assert s({str(ckpt)!r})['_class_name'] == 'EulerDiscreteScheduler'; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- shipped configs ---------------------------------------------------------------------------------------

# Parameter counts of the real models: SDXL base UNet 2.567 B, refiner UNet 2.260 B, the SDXL VAE 83.7 M,
# CLIP ViT-L/14 text 123.1 M, OpenCLIP ViT-bigG text with projection 694.7 M.
REAL_SIZES = {
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "sdxl-refiner": {"unet": 2_259_526_660, "vae": 83_653_863, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", ["sdxl", "sdxl-refiner"])
def test_shipped_sdxl_configs_describe_the_real_models(family, tmp_path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    ckpt = _fake(tmp_path / "x.safetensors", *((CLIP_L, BIG_G) if family == "sdxl" else (REFINER_G,)))
    folder = config_folder_for(ckpt)
    assert folder.name == f"{family}-v1" and folder.parent.name == "single-file-configs"
    assert config_folder_for(ckpt) == folder
    index = json.loads((folder / "model_index.json").read_text())
    pads = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}
    if family == "sdxl":
        assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"]
    else:
        assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline" and index["requires_aesthetics_score"]
        assert index["text_encoder"] == [None, None] and not (folder / "tokenizer").exists()
        del pads["tokenizer"]
    for name, pad in pads.items():
        tokenizer = CLIPTokenizer.from_pretrained(folder / name, local_files_only=True)
        assert len(tokenizer) == 49408 and tokenizer.pad_token == pad

    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
        }
        if family == "sdxl":
            models["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert sizes == REAL_SIZES[family]
    vae = models["vae"].config
    assert vae.scaling_factor == 0.13025 and vae.force_upcast
    unet = models["unet"].config
    assert unet.addition_embed_type == "text_time" and unet.addition_time_embed_dim == 256
    assert unet.cross_attention_dim == (2048 if family == "sdxl" else 1280)
    scheduler = scheduler_config_for_single_file(ckpt)
    assert scheduler["_class_name"] == "EulerDiscreteScheduler" and scheduler["prediction_type"] == "epsilon"
    assert scheduler["timestep_spacing"] == "leading"
    EulerDiscreteScheduler.from_config(scheduler)


# --- pickle checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_ckpt(tmp_path_factory):
    from diffusers import StableDiffusionImg2ImgPipeline

    from diffdiff_cli.models.builtin import builtin_folder

    folder = builtin_folder("tiny-sd15")
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
    path = save_as_pickle_checkpoint(pipe, tmp_path_factory.mktemp("ckpt") / "tiny-sd15.ckpt", global_step=470000)
    return folder, pipe, path


class Payload:
    """Unpickling this would create a folder: the stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def evil_ckpt(sd15_ckpt, tmp_path):
    import torch

    _, pipe, _ = sd15_ckpt
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": pipeline_to_ldm(pipe), "callbacks": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_are_refused_without_allow_pickle(suffix, tmp_path):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(InputError) as err:
        resolve_model(str(path))
    message = _one_line_naming(err, path)
    assert "--allow-pickle" in message and "pickle" in message
    source = resolve_model(str(path), allow_pickle=True)
    assert source.kind == "single_file" and source.value == str(path)


def test_pickle_checkpoint_loads_with_allow_pickle(sd15_ckpt):
    from diffdiff_cli.models.load import load_model

    folder, pipe, path = sd15_ckpt
    with pytest.raises(InputError):
        resolve_model(str(path))
    assert single_file_family(path) == "sd15"
    loaded = load_model(resolve_model(str(path), allow_pickle=True), offline=True, model_config=str(folder))
    assert loaded.family.name == "sd" and type(loaded.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    _assert_same_weights(pipe, loaded.pipe)


def test_pickle_with_an_object_is_refused_even_with_allow_pickle(evil_ckpt, sd15_ckpt):
    from diffdiff_cli.models.load import load_model

    path, marker = evil_ckpt
    folder = sd15_ckpt[0]
    source = resolve_model(str(path), allow_pickle=True)  # allowed through the door, refused by weights_only
    for attempt in (
        lambda: load_model(source, offline=True, model_config=str(folder)),
        lambda: load_model(source, offline=True),
        lambda: single_file_family(path),
        lambda: load_single_file_pipeline(path, folder),
    ):
        with pytest.raises(InputError) as err:
            attempt()
        message = _one_line_naming(err, path)
        assert "posix.mkdir" in message or "nt.mkdir" in message, message
        assert "refuses to unpickle" in message
    assert not marker.exists()


def test_diffusers_own_loader_reads_pickles_weights_only(evil_ckpt):
    """from_single_file reads .ckpt/.pt/.pth/.bin through this function: pin that it stays weights_only."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    path, marker = evil_ckpt
    with pytest.raises(Exception):
        load_single_file_checkpoint(str(path), local_files_only=True)
    assert not marker.exists()


def test_unreadable_pickles_are_one_line_input_errors(tmp_path):
    import torch

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"PK\x03\x04" + bytes(200))
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.RandomState(0).bytes(300))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    a_list = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], a_list)
    lora = tmp_path / "lora.bin"
    torch.save({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, lora)
    legacy = tmp_path / "legacy.ckpt"  # torch.save's pre-zip format cannot be memory-mapped: read whole
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
                "cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)},
               legacy, _use_new_zipfile_serialization=False)
    assert single_file_family(legacy) == "sd21"
    for path, words in ((garbage, "not a readable PyTorch pickle"), (noise, "refuses to unpickle"),
                        (empty, "not a readable PyTorch pickle"), (a_list, "holds a list"),
                        (lora, "LoRA"), (tmp_path / "absent.ckpt", "not found")):
        with pytest.raises(InputError) as err:
            single_file_family(path)
        assert words in _one_line_naming(err, path), (path.name, str(err.value))


def test_cli_refuses_a_ckpt_with_exit_2_in_one_line(sd15_ckpt):
    import shutil
    import subprocess

    diffdiff = shutil.which("diffdiff", path=str(Path(sys.executable).parent)) or "diffdiff"
    path = sd15_ckpt[2]
    done = subprocess.run([diffdiff, "plan", "--model", str(path), "--steps", "4"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--allow-pickle" in lines[0], done.stderr
