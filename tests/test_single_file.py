"""Single-file SD 1.x / 2.x checkpoints: family detection, shipped configs, offline loading, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ldm_convert import save_as_single_file  # noqa: E402

from diffdiff_cli.errors import InputError  # noqa: E402
from diffdiff_cli.models.single_file import (  # noqa: E402
    config_folder_for,
    load_single_file_pipeline,
    scheduler_config_for_single_file,
    single_file_family,
)

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Keep every cache write inside a temporary folder unless the caller chose one."""
    if os.environ.get("DIFFDIFF_CACHE"):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFDIFF_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny_folder():
    from diffdiff_cli.models.builtin import builtin_folder

    return builtin_folder("tiny-sd15")


@pytest.fixture(scope="module")
def tiny_pipe(tiny_folder):
    from diffusers import StableDiffusionImg2ImgPipeline

    return StableDiffusionImg2ImgPipeline.from_pretrained(tiny_folder, local_files_only=True)


@pytest.fixture(scope="module")
def tiny_file(tiny_pipe, tmp_path_factory):
    return save_as_single_file(tiny_pipe, tmp_path_factory.mktemp("ckpt") / "tiny-sd15.safetensors")


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return path


def _fake_checkpoint(path: Path, text_key: str, in_channels: int = 4) -> Path:
    """Just the keys family detection reads (a few bytes, no real model)."""
    import torch

    return _save(
        path,
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, in_channels, 1, 1),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 1, 1),
            text_key: torch.zeros(2, 2),
        },
    )


SD15_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
SD21_TEXT_KEY = "cond_stage_model.model.token_embedding.weight"


def _assert_same_weights(expected, actual):
    import torch

    for component in COMPONENTS:
        want = getattr(expected, component).state_dict()
        got = getattr(actual, component).state_dict()
        assert want.keys() == got.keys(), (component, sorted(set(want) ^ set(got))[:5])
        differ = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
        assert not differ, (component, differ[:5])


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- round trips ------------------------------------------------------------------------------------


def test_sd15_round_trip_equals_folder(tiny_file, tiny_folder, tiny_pipe):
    import torch
    from PIL import Image

    assert single_file_family(tiny_file) == "sd15"
    pipe = load_single_file_pipeline(tiny_file, config_folder=tiny_folder)
    _assert_same_weights(tiny_pipe, pipe)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert pipe.safety_checker is None
    assert pipe.scheduler.config == tiny_pipe.scheduler.config
    assert pipe.tokenizer("a cat").input_ids == tiny_pipe.tokenizer("a cat").input_ids

    image = Image.new("RGB", (64, 64), (120, 60, 30))
    run = dict(prompt="a cat", image=image, num_inference_steps=2, strength=1.0, output_type="np")
    want = tiny_pipe(**run, generator=torch.Generator().manual_seed(3)).images
    got = pipe(**run, generator=torch.Generator().manual_seed(3)).images
    assert (want == got).all()


def test_sd15_without_text_model_prefix(tiny_pipe, tiny_folder, tmp_path):
    """Older exports name CLIP `cond_stage_model.transformer.embeddings...` (no `text_model.`)."""
    path = save_as_single_file(tiny_pipe, tmp_path / "old.safetensors", text_model_prefix=False)
    assert single_file_family(path) == "sd15"
    _assert_same_weights(tiny_pipe, load_single_file_pipeline(path, config_folder=tiny_folder))


def _build_tiny_sd21(folder: Path):
    """SD 2.x architecture, tiny: linear projections, upcast attention, gelu text encoder, v-prediction."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from diffdiff_cli.models.builtin import build_tiny_sd15
    from diffdiff_cli.models.tokenizer import write_clip_tokenizer_files

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            hidden_act="gelu",
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        )
    )
    write_clip_tokenizer_files(folder / "tok", pad_token="!")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=build_tiny_sd15().vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "model")
    return pipe, folder / "model"


def test_sd21_round_trip_equals_folder(tmp_path):
    reference, folder = _build_tiny_sd21(tmp_path)
    path = save_as_single_file(reference, tmp_path / "tiny-sd21.safetensors", text_encoder_layout="open_clip")
    assert single_file_family(path) == "sd21"
    pipe = load_single_file_pipeline(path, config_folder=folder)
    _assert_same_weights(reference, pipe)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.pad_token == "!"
    assert scheduler_config_for_single_file(path, config_folder=folder)["prediction_type"] == "v_prediction"


def test_shipped_config_that_does_not_fit_is_one_line_input_error(tiny_file):
    """The tiny checkpoint is SD 1.x-shaped but not SD 1.5-sized: the error says so and names the fix."""
    with pytest.raises(InputError) as err:
        load_single_file_pipeline(tiny_file)
    message = _assert_one_line_naming(err, tiny_file)
    assert "--model-config" in message


def test_missing_tensors_are_input_errors(tiny_file, tiny_folder, tmp_path):
    """diffusers leaves weights the file lacks on the meta device without a word; we refuse instead."""
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_file))
    no_bias = _save(tmp_path / "no-bias.safetensors",
                    {k: v for k, v in tensors.items() if k != "model.diffusion_model.out.2.bias"})
    no_vae = _save(tmp_path / "no-vae.safetensors",
                   {k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")})
    no_norm = _save(tmp_path / "no-norm.safetensors",
                    {k: v for k, v in tensors.items() if not k.endswith("text_model.final_layer_norm.weight")})
    for path, words in ((no_bias, "unet lacks weights"), (no_vae, "vae"),
                        (no_norm, "text_encoder.final_layer_norm.weight")):
        with pytest.raises(InputError) as err:
            load_single_file_pipeline(path, config_folder=tiny_folder)
        message = _assert_one_line_naming(err, path)
        assert words in message, message


# --- family detection and refusals -----------------------------------------------------------------


def test_family_from_keys(tmp_path):
    assert single_file_family(_fake_checkpoint(tmp_path / "a.safetensors", SD15_TEXT_KEY)) == "sd15"
    assert single_file_family(_fake_checkpoint(tmp_path / "b.safetensors", SD21_TEXT_KEY)) == "sd21"


def _refusals(tmp_path: Path) -> dict[str, Path]:
    import torch

    z = torch.zeros(2, 2)
    files = {
        "SDXL without CLIP-L": _save(
            tmp_path / "sdxl.safetensors",
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
                "conditioner.embedders.1.model.token_embedding.weight": z,
                "first_stage_model.encoder.conv_in.weight": z,
            },
        ),
        "LoRA": _save(
            tmp_path / "lora.safetensors",
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": z,
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": z,
                "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
            },
        ),
        "SD3": _save(tmp_path / "sd3.safetensors", {"model.diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight": z}),
        "Flux": _save(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.norm.key_norm.scale": z}),
        "VAE only": _save(tmp_path / "vae.safetensors", {"encoder.down.0.block.0.conv1.weight": z,
                                                          "decoder.up.0.block.0.conv1.weight": z}),
        "inpainting": _fake_checkpoint(tmp_path / "inpaint.safetensors", SD15_TEXT_KEY, in_channels=9),
        "no text encoder": _save(tmp_path / "unet.safetensors", {"model.diffusion_model.out.2.weight": z}),
    }
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(random.Random(0).randbytes(4096))
    files["random bytes"] = noise
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"PK\x03\x04" + bytes(200))
    files["pickle"] = pickle
    bad_json = tmp_path / "badjson.safetensors"
    bad_json.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    files["corrupt header"] = bad_json
    good = _fake_checkpoint(tmp_path / "whole.safetensors", SD15_TEXT_KEY).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[:-8])
    files["truncated"] = truncated
    files["missing"] = tmp_path / "nowhere.safetensors"
    files["folder"] = tmp_path
    return files


EXPECTED_WORDS = {
    "SDXL without CLIP-L": "SDXL checkpoint without its first text encoder",
    "LoRA": "LoRA",
    "SD3": "Stable Diffusion 3",
    "Flux": "Flux",
    "VAE only": "VAE",
    "inpainting": "inpainting",
    "no text encoder": "text encoder",
    "random bytes": "not a readable safetensors",
    "pickle": "not a readable PyTorch pickle",
    "corrupt header": "not a readable safetensors",
    "truncated": "truncated",
    "missing": "not found",
    "folder": "not a file",
}


def test_refusals_are_one_line_input_errors(tmp_path):
    for what, path in _refusals(tmp_path).items():
        with pytest.raises(InputError) as err:
            single_file_family(path)
        message = _assert_one_line_naming(err, path)
        assert EXPECTED_WORDS[what] in message, (what, message)
        if what not in ("missing", "folder", "truncated", "pickle"):
            assert "Stable Diffusion 1.x, 2.x or XL" in message, (what, message)
        # the loaders refuse the same way, before touching torch or the config cache
        with pytest.raises(InputError):
            scheduler_config_for_single_file(path)
        with pytest.raises(InputError):
            load_single_file_pipeline(path)


# --- shipped configs ---------------------------------------------------------------------------------

# Parameter counts of the real models (SD 1.5 UNet 859.5 M, SD 2.x UNet 865.9 M, the KL-f8 VAE 83.7 M,
# CLIP ViT-L/14 text 123.1 M, OpenCLIP ViT-H text cut to 23 layers 340.4 M).
REAL_SIZES = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
}


@pytest.mark.parametrize("family", ["sd15", "sd21"])
def test_shipped_configs_materialise_and_describe_the_real_models(family, tmp_path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    ckpt = _fake_checkpoint(tmp_path / "x.safetensors", SD15_TEXT_KEY if family == "sd15" else SD21_TEXT_KEY)
    folder = config_folder_for(ckpt)
    assert folder.name == f"{family}-v1" and folder.parent.name == "single-file-configs"
    assert config_folder_for(ckpt) == folder  # cached
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert len(tokenizer) == 49408
    assert tokenizer.pad_token == ("<|endoftext|>" if family == "sd15" else "!")

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder", local_files_only=True))
    sizes = {name: sum(p.numel() for p in m.parameters()) for name, m in
             (("unet", unet), ("vae", vae), ("text_encoder", text))}
    assert sizes == REAL_SIZES[family]
    assert vae.config.scaling_factor == 0.18215

    scheduler = scheduler_config_for_single_file(ckpt)
    assert scheduler == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if family == "sd15":
        assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["prediction_type"] == "epsilon"
        assert unet.config.cross_attention_dim == 768 and text.config.hidden_act == "quick_gelu"
        PNDMScheduler.from_config(scheduler)
    else:
        assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["prediction_type"] == "v_prediction"
        assert unet.config.cross_attention_dim == 1024 and unet.config.use_linear_projection
        assert unet.config.upcast_attention and list(unet.config.attention_head_dim) == [5, 10, 20, 20]
        assert text.config.hidden_act == "gelu" and text.config.num_hidden_layers == 23
        DDIMScheduler.from_config(scheduler)


# --- user config folders -----------------------------------------------------------------------------


def test_user_config_folder_is_checked(tmp_path, tiny_folder):
    import shutil

    ckpt = _fake_checkpoint(tmp_path / "x.safetensors", SD15_TEXT_KEY)
    assert config_folder_for(ckpt, tiny_folder) == tiny_folder
    assert scheduler_config_for_single_file(ckpt, tiny_folder) == json.loads(
        (tiny_folder / "scheduler" / "scheduler_config.json").read_text()
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_folder, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer", "*.safetensors"))
    no_unet = tmp_path / "no-unet"
    shutil.copytree(tiny_folder, no_unet, ignore=shutil.ignore_patterns("unet", "*.safetensors"))
    for bad, words in (
        (tmp_path / "absent", "not a folder"),
        (empty, "model_index.json"),
        (no_tokenizer, "tokenizer"),
        (no_unet, "unet/config.json"),
    ):
        for call in (config_folder_for, scheduler_config_for_single_file, load_single_file_pipeline):
            with pytest.raises(InputError) as err:
                call(ckpt, bad)
            message = _assert_one_line_naming(err, bad)
            assert words in message and "--model-config" in message


def test_configs_only_folder_is_enough(tiny_file, tiny_folder, tiny_pipe, tmp_path):
    """A --model-config folder needs configs and a tokenizer, not weights."""
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(tiny_folder, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    _assert_same_weights(tiny_pipe, load_single_file_pipeline(tiny_file, config_folder=configs))


def test_detection_and_plan_do_not_import_torch(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "x.safetensors", SD21_TEXT_KEY)
    code = (
        "import sys; from diffdiff_cli.models.single_file import single_file_family, "
        "scheduler_config_for_single_file as s; "
        f"assert single_file_family({str(ckpt)!r}) == 'sd21'; "
        f"assert s({str(ckpt)!r})['prediction_type'] == 'v_prediction'; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- full size (slow: ~10 s and up to ~8 GB each; SDXL more) ---------------------------------------------------------


FULL_SIZE_TEXT_KEYS = {
    "sd15": (SD15_TEXT_KEY,),
    "sd21": (SD21_TEXT_KEY,),
    "sdxl": ("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
             "conditioner.embedders.1.model.positional_embedding"),
    "sdxl-refiner": ("conditioner.embedders.0.model.text_projection",),
}
FULL_SIZE_LAYOUT = {"sd15": "clip", "sd21": "open_clip", "sdxl": "sdxl", "sdxl-refiner": "sdxl_refiner"}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl", "sdxl-refiner"])
def test_full_size_checkpoint_loads_with_the_shipped_config(family, tmp_path, request):
    """A real-architecture checkpoint (each tensor filled with its own constant) loads tensor for tensor."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("full-size check (~20 s, ~8 GB; SDXL ~70 s, ~11 GB): select it with -m slow")
    from types import SimpleNamespace

    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    fake = tmp_path / "x.safetensors"
    _save(fake, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
                 **{key: torch.zeros(2, 2) for key in FULL_SIZE_TEXT_KEYS[family]}})
    folder = config_folder_for(fake)
    index = json.loads((folder / "model_index.json").read_text())
    text_classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with init_empty_weights(include_buffers=True):
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        }
        for name in ("text_encoder", "text_encoder_2"):
            if (index.get(name) or [None])[0]:
                models[name] = text_classes[index[name][1]](CLIPTextConfig.from_pretrained(folder / name))
    expected = {}
    for name, model in models.items():
        model.to(torch.float16).to_empty(device="cpu")
        expected[name] = {}
        for i, (key, tensor) in enumerate(model.state_dict().items()):
            tensor.fill_((i % 2000) / 1024)  # exact in float16; tells same-shaped tensors apart
            expected[name][key] = (i % 2000) / 1024
    stand_in = SimpleNamespace(**models, scheduler=SimpleNamespace(betas=torch.zeros(1000),
                                                                   alphas_cumprod=torch.zeros(1000)))
    path = save_as_single_file(stand_in, tmp_path / f"{family}.safetensors",
                               text_encoder_layout=FULL_SIZE_LAYOUT[family], copy=False)
    del models, stand_in
    assert single_file_family(path) == family

    pipe = load_single_file_pipeline(path, torch_dtype=torch.float16)
    for name, values in expected.items():
        state = getattr(pipe, name).state_dict()
        assert state.keys() == values.keys(), name
        wrong = [k for k, v in values.items() if not bool((state[k] == v).all())]
        assert not wrong, (name, wrong[:5])
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if family == "sd21" else "epsilon")
