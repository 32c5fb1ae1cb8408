"""The built-in `demo` model (trained in training/, shipped in diffdiff_cli/models/demo/): it is a complete
diffusers SD folder, and it draws what the prompt says where the map lets it (a fast subset of
`make demo-check`; the full check is marked slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

import check  # noqa: E402
import shapes  # noqa: E402

DEMO = ROOT / "diffdiff_cli" / "models" / "demo"


@pytest.fixture(scope="module")
def demo_model():
    return check.load("demo")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return check.write_inputs(tmp_path_factory.mktemp("demo-inputs"))


def test_demo_is_a_shipped_complete_diffusers_folder():
    from diffdiff_cli.models.builtin import builtin_configs, builtin_folder
    from diffdiff_cli.models.registry import resolve_model

    assert resolve_model("demo").kind == "builtin"
    assert builtin_folder("demo") == DEMO  # shipped, not built at run time
    index = json.loads((DEMO / "model_index.json").read_text())
    assert index["_class_name"] in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                 "scheduler/scheduler_config.json"):
        assert (DEMO / part).is_file(), part
    assert not list(DEMO.rglob("*.bin")) and not list(DEMO.rglob("*.pt"))
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert total <= 40 * 1024 * 1024, total
    family, scheduler, factor = builtin_configs("demo")
    assert (family, factor) == ("sd", 8)
    assert scheduler == json.loads((DEMO / "scheduler" / "scheduler_config.json").read_text())


def test_package_data_ships_the_demo_folder():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"demo/**/*"' in text


def test_demo_loads_with_plain_diffusers_img2img():
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(DEMO, local_files_only=True, safety_checker=None,
                                                          requires_safety_checker=False)
    assert pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.vocab_size == 49408
    photo = Image.fromarray(check.demo_photo())
    out = pipe("a yellow circle on a red background", image=photo, strength=1.0, num_inference_steps=10,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("colour", ["red", "green", "purple", "white"])
def test_text_to_image_draws_the_named_colour(demo_model, colour):
    found = [shapes.foreground_colour(im) for im in check.text_to_image(demo_model, colour)]
    assert sum(f == colour for f in found) >= 8, found


def test_left_half_edit_takes_the_new_colour_right_half_bit_identical(demo_model, inputs):
    photo = np.asarray(Image.open(inputs["photo"]).convert("RGB"))
    results = [check.edit(demo_model, inputs, "left-half", "green", seed) for seed in check.SEEDS]
    stats = [check.left_right_stats(photo, r) for r in results]
    assert all(same for _, same in stats)
    assert sum(d == "green" for d, _ in stats) >= 8, stats
    # the photo's own colours stay where the map is black
    assert shapes.dominant(photo[:, 32:]) == "blue"


def test_gradient_map_share_of_new_colour_rises(demo_model, inputs):
    results = [check.edit(demo_model, inputs, "gradient", "red", seed, photo="plain") for seed in check.SEEDS[:5]]
    bands = check.band_shares(results, "red")
    assert check.rises(bands), bands  # each band >= the one before - 0.05, last >= first + 0.5
    assert bands[0] <= 0.2 and bands[-1] >= 0.8, bands  # black edge kept, white edge changed


def test_the_classifier_reads_the_generator_back():
    images, captions = shapes.batch(123, 0, 64)
    for image, caption in zip(images, captions):
        words = caption.split()
        if "on" in words:
            assert shapes.foreground_colour(image, min_share=0.01) == words[1], caption
        assert shapes.dominant(image[:2]) in caption  # the top rows show the background (or the shape)


@pytest.mark.slow
def test_full_demo_check_passes(tmp_path):
    assert check.main(["--out", str(tmp_path)]) == 0


@pytest.mark.slow
def test_training_is_deterministic_and_resumes(tmp_path):
    import torch

    import train

    threads = torch.get_num_threads()
    tiny = ["--vae-steps", "2", "--vae-batch", "4", "--dataset-size", "8", "--unet-batch", "4",
            "--checkpoint-seconds", "0"]
    train.main(tiny + ["--unet-steps", "2", "--work", str(tmp_path / "a"), "--out", str(tmp_path / "a-out")])
    train.main(tiny + ["--unet-steps", "4", "--work", str(tmp_path / "a"), "--out", str(tmp_path / "a-out")])
    train.main(tiny + ["--unet-steps", "4", "--work", str(tmp_path / "b"), "--out", str(tmp_path / "b-out")])
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "a-out" / part).read_bytes() == (tmp_path / "b-out" / part).read_bytes(), part
    torch.set_num_threads(threads)
