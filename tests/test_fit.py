"""--fit: the map's region at the model's native resolution, stitched back into the full-size original."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_map, save_rgb
from diffdiff_cli.edit import EditSettings, compute_edit, recorded_settings
from diffdiff_cli.errors import InputError
from diffdiff_cli.finish import stitch_back
from diffdiff_cli.fit import (
    CONTEXT_FLOOR, MAX_ASPECT, auto_context, check_fit_settings, oversize_warning, parse_work_size, plan_region, widen,
)
from diffdiff_cli.prepare_map import MapShaping, changes_nothing, fit_image, fit_map, support_box
from diffdiff_cli.schedulers import make_scheduler

def cli(capsys, *args) -> tuple[int, str, str]:
    """`diffdiff ARGS` through the real entry point, in this process (no second start-up of torch):
    (exit code, stdout, stderr)."""
    from diffdiff_cli.cli import main

    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def settings(**overrides) -> EditSettings:
    values = dict(prompt="a red circle on a blue background", steps=2, seed=5, scheduler="euler")
    values.update(overrides)
    return EditSettings(**values)


# --- the region planner: numbers in, numbers out ----------------------------------------------------------


@pytest.mark.parametrize("image, support, native, multiple", [
    ((4000, 3000), (1700, 1300, 2300, 1700), 512, 8),  # a blob in a 12 MP photo
    ((4000, 3000), (0, 0, 4000, 3000), 1024, 8),  # a map that changes everything
    ((6000, 4000), (100, 3000, 5900, 3900), 1024, 16),  # a wide strip (SD3 / Flux multiple)
    ((120, 90), (30, 20, 90, 70), 1024, 8),  # a web image on an SDXL-class model: scaled up
    ((768, 1024), (0, 0, 768, 1024), 768, 8),  # portrait on an SD 2.x-768 model
])
def test_working_size_has_the_native_area_the_regions_aspect_and_the_multiple(image, support, native, multiple):
    region = plan_region(support, image, native, multiple)
    (w, h), (work_w, work_h) = region.size, region.work_size
    scale = math.sqrt(native * native / (w * h))
    assert work_w % multiple == 0 and work_h % multiple == 0
    assert abs(work_w - w * scale) <= multiple / 2 and abs(work_h - h * scale) <= multiple / 2  # nearest multiple
    assert abs(work_w * work_h - native * native) <= multiple * (work_w + work_h)  # native area, within one multiple a side
    x0, y0, x1, y1 = region.box
    assert 0 <= x0 <= support[0] and 0 <= y0 <= support[1] and support[2] <= x1 <= image[0] and support[3] <= y1 <= image[1]
    assert region.native_size == (native, native) and region.fit == "auto"


def test_context_grows_the_support_and_is_clipped_to_the_image():
    support = (1700, 1300, 2300, 1700)  # 600 x 400
    assert auto_context(support) == 150  # a quarter of the longer side
    assert auto_context((10, 10, 20, 20)) == CONTEXT_FLOOR
    assert plan_region(support, (4000, 3000), 512, 8).box == (1550, 1150, 2450, 1850)
    assert plan_region(support, (4000, 3000), 512, 8, context=0).box == support
    assert plan_region(support, (4000, 3000), 512, 8, context=40).box == (1660, 1260, 2340, 1740)
    assert plan_region((0, 2900, 300, 3000), (4000, 3000), 512, 8, context=50).box == (0, 2850, 350, 3000)


def test_a_speck_gets_surroundings_and_a_strip_a_frame_the_model_knows():
    speck = plan_region((2000, 1500, 2003, 1503), (4000, 3000), 512, 8)
    assert speck.size == (128, 128) and speck.work_size == (512, 512)  # magnified at most 4x
    corner = plan_region((0, 0, 2, 2), (100, 80), 1024, 8)
    assert corner.box == (0, 0, 100, 80)  # the image is all there is
    strip = plan_region((0, 1495, 4000, 1505), (4000, 3000), 1024, 8)
    w, h = strip.size
    assert w == 4000 and w / h <= MAX_ASPECT and strip.box[1] < 1495 and strip.box[3] > 1505
    assert widen(10, 20, 4, 100) == (10, 20)  # never narrowed
    assert widen(0, 10, 30, 100) == (0, 30) and widen(90, 100, 30, 100) == (70, 100)  # kept inside


def test_full_keeps_the_whole_image_at_its_own_size_and_work_size_forces_one():
    full = plan_region((10, 10, 20, 20), (120, 90), 512, 8, fit="full")
    assert full.box == (0, 0, 120, 90) and full.work_size == (120, 96) and not full.resampled  # padded, not resampled
    native = plan_region((0, 0, 512, 512), (512, 512), 512, 8)
    assert native.work_size == (512, 512) and not native.resampled  # at native size auto is the image itself
    forced = plan_region((10, 10, 20, 20), (120, 90), 1024, 16, work_size=(500, 300))
    assert forced.work_size == (496, 304) and forced.resampled
    forced_full = plan_region(None, (4000, 3000), 1024, 8, fit="full", work_size=(1024, 768))
    assert forced_full.box == (0, 0, 4000, 3000) and forced_full.work_size == (1024, 768)
    assert plan_region(None, (300, 200), 512, 8).box == (0, 0, 300, 200)  # nothing to change: the whole image


def test_fit_full_far_above_the_native_area_warns():
    big = plan_region(None, (1200, 1200), 512, 8, fit="full")
    assert "native area" in oversize_warning(big, forced=False) and "--fit auto" in oversize_warning(big, forced=False)
    assert oversize_warning(plan_region(None, (700, 700), 512, 8, fit="full"), forced=False) is None  # 1.9x
    assert oversize_warning(plan_region(None, (1200, 1200), 512, 8), forced=False) is None  # auto is native
    assert oversize_warning(big, forced=True) is None


@pytest.mark.parametrize("fit, context, work_size, flag", [
    ("sideways", None, None, "--fit"), ("auto", -1, None, "--context"), ("auto", None, "0x64", "--work-size"),
    ("auto", None, "64", "--work-size"), ("auto", None, "ax64", "--work-size"),
])
def test_bad_fit_settings_name_their_flag(fit, context, work_size, flag):
    with pytest.raises(InputError, match=flag):
        check_fit_settings(fit, context, work_size)
    assert parse_work_size("1024X768") == (1024, 768) and parse_work_size(None) is None


# --- crop, resize and stitch (no weights) -------------------------------------------------------------


def test_support_box_and_blank_maps():
    change = np.zeros((30, 40), dtype=np.float32)
    assert support_box(change) is None
    change[5, 7] = 0.01
    change[20, 30] = 1
    assert support_box(change) == (7, 5, 31, 21)
    white = np.ones((8, 8), dtype=np.float32)
    assert changes_nothing(np.zeros((8, 8), np.float32), MapShaping(grow=3, blur=2))
    assert changes_nothing(white, MapShaping(invert=True)) and not changes_nothing(white, MapShaping())
    assert changes_nothing(np.full((8, 8), 0.1, np.float32), MapShaping(levels=(0.2, 1.0)))


def _checker(width, height, block):
    y, x = np.mgrid[:height, :width]
    return (((x // block) + (y // block)) % 2).astype(np.float32)


@pytest.mark.parametrize("image, support, native", [((400, 300), (100, 60, 260, 200), 64), ((400, 300), (150, 100, 190, 140), 512)])
def test_image_and_map_go_through_the_same_crop_and_resize(image, support, native):
    """A checkerboard drawn into both: the working image's grey and the working map agree pixel for pixel."""
    board = _checker(*image, block=16)
    rgb = np.repeat((board * 255).astype(np.uint8)[..., None], 3, axis=2)
    region = plan_region(support, image, native, 8)
    assert region.resampled
    work_rgb = fit_image(rgb, region)
    prepared = fit_map(board, region, 8)
    assert work_rgb.shape[:2] == prepared.pixels.shape == (region.work_size[1], region.work_size[0])
    grey = work_rgb[..., 0] / 255.0
    if region.work_size[0] < region.size[0]:  # shrunk: both are area averages
        assert np.abs(grey - prepared.pixels).max() <= 1 / 255 + 1e-6
    else:  # enlarged: Lanczos and bilinear agree away from the block edges
        assert np.abs(grey - prepared.pixels).mean() < 0.02 and np.corrcoef(grey.ravel(), prepared.pixels.ravel())[0, 1] > 0.97
    assert prepared.latent.shape == (region.work_size[1] // 8, region.work_size[0] // 8)


def test_map_zero_stays_zero_in_the_working_map():
    change = np.zeros((300, 400), dtype=np.float32)
    change[100:140, 150:200] = np.linspace(0.2, 1, 50)
    for native in (64, 1024):  # shrunk and enlarged
        region = plan_region(support_box(change), (400, 300), native, 8)
        pixels = fit_map(change, region, 8).pixels
        x0, y0 = region.box[:2]
        sx, sy = region.work_size[0] / region.size[0], region.work_size[1] / region.size[1]
        far = pixels[: int((100 - y0 - 2) * sy), :]  # rows well above the support
        assert far.size and far.max() == 0.0 and 0 <= pixels.min() and pixels.max() <= 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_stitch_back_touches_only_the_region_and_keeps_map_zero_exactly(tmp_path, mode):
    path = save_rgb(tmp_path / "p.png", 200, 150, seed=2, mode=mode)
    if mode == "RGBA":
        image = Image.open(path)
        image.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 200).astype(np.uint8), (150, 1))))
        image.save(path)
    from diffdiff_cli.load import load_source

    source = load_source(path)
    change = np.zeros((150, 200), dtype=np.float32)
    change[50:90, 80:140] = 1.0
    region = plan_region(support_box(change), (200, 150), 512, 8)
    generated = np.full((region.work_size[1], region.work_size[0], 3), (250, 10, 10), dtype=np.uint8)
    out = stitch_back(source, region, generated, change, True, 0.1)
    assert out.size == (200, 150) and out.mode == source.image.mode
    before, after = np.asarray(source.image), np.asarray(out)
    kept = change == 0
    assert np.array_equal(after[kept], before[kept])  # map 0, inside the region or outside it: bit-identical
    assert not np.array_equal(after[~kept], before[~kept])
    if mode == "RGBA":
        assert np.array_equal(after[..., 3], before[..., 3])
    if mode == "RGB":
        assert (after[60:80, 90:130] == (250, 10, 10)).all()


# --- whole edits on tiny models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_12mp(tmp_path_factory):
    """A 4000 x 3000 JPEG (a camera photo) and a map whose support is a 600 x 400 elliptic blob."""
    folder = tmp_path_factory.mktemp("photo")
    rs = np.random.RandomState(0)
    photo = Image.fromarray((rs.rand(30, 40, 3) * 255).astype(np.uint8)).resize((4000, 3000), Image.Resampling.BICUBIC)
    photo.save(folder / "IMG_4032.jpg", quality=90)
    y, x = np.ogrid[:3000, :4000]
    blob = (((x - 2000) / 300.0) ** 2 + ((y - 1500) / 200.0) ** 2 <= 1).astype(np.uint8) * 255
    Image.fromarray(blob).save(folder / "blob.png")
    return str(folder / "IMG_4032.jpg"), str(folder / "blob.png")


def test_a_12_megapixel_photo_is_edited_at_the_native_area_and_stitched_back_exactly(tiny_model, photo_12mp):
    photo, blob = photo_12mp
    result = compute_edit(tiny_model, settings(guidance=1.0), photo, blob)
    record = recorded_settings(tiny_model, settings(guidance=1.0), result, photo, blob)  # what --json and the file carry
    original = Image.open(photo)
    assert result.image.size == (4000, 3000) and result.image.mode == original.mode == "RGB"
    before, after = np.asarray(original), np.asarray(result.image)
    kept = np.asarray(Image.open(blob)) == 0
    assert np.array_equal(after[kept], before[kept])  # every map-0 pixel bit-identical
    assert np.abs(after[~kept].astype(int) - before[~kept]).mean() > 5
    (work_w, work_h), (w, h) = record["work_size"], result.region.size
    assert record["native_size"] == [512, 512] and abs(work_w * work_h - 512 * 512) <= 8 * (work_w + work_h)
    assert abs(work_w / work_h - w / h) < 0.02
    x0, y0, x1, y1 = record["region"]
    assert x0 < 1700 and y0 < 1300 and x1 > 2300 and y1 > 1700 and (x1 - x0) * (y1 - y0) < 4000 * 3000 / 10
    assert record["denoiser_calls"] == record["model_evaluations"] == 2  # once per evaluation ...
    assert [v * 8 for v in record["denoiser_latent_size"]] == record["work_size"]  # ... at the working size


_models: dict = {}


def demo_model():
    """The built-in demo model (native at 64 px, so whole edits at auto stay cheap), loaded once."""
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    if "demo" not in _models:
        _models["demo"] = load_model(resolve_model("demo"), offline=True)
    return _models["demo"]


def test_fit_auto_at_the_native_size_is_the_familys_img2img(images):
    """The demo model is native at 64 px: a 64 px photo under a white map is its own region, not resampled."""
    import torch

    demo = demo_model()
    result = compute_edit(demo, settings(steps=4), images["photo"], images["white"])
    assert result.region.work_size == (64, 64) and not result.region.resampled
    demo.pipe.scheduler = make_scheduler(demo.scheduler_config, "euler", 5)
    expected = demo.pipe(settings().prompt, image=Image.open(images["photo"]), strength=1.0, num_inference_steps=4,
                         guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    assert np.abs(np.asarray(result.image).astype(int) - np.round(expected * 255).astype(int)).max() <= 1


def test_a_map_of_a_few_pixels_still_works(tmp_path):
    photo = save_rgb(tmp_path / "p.png", 400, 300, seed=6)
    change = np.zeros((300, 400))
    change[150:153, 200:203] = 1
    speck = save_map(tmp_path / "speck.png", change)
    result = compute_edit(demo_model(), settings(steps=4), photo, speck)
    x0, y0, x1, y1 = result.region.box
    assert (x0, y0, x1, y1) == (168, 118, 235, 185) and result.region.work_size == (64, 64)  # 3 px and 32 px of context
    before, after = np.asarray(Image.open(photo)), np.asarray(result.image)
    assert result.image.size == (400, 300) and np.array_equal(after[change == 0], before[change == 0])
    assert not np.array_equal(after[150:153, 200:203], before[150:153, 200:203])


def test_a_small_image_on_a_1024_family_forced_small_records_its_sizes_and_reruns_like_it(tmp_path, capsys):
    photo = save_rgb(tmp_path / "web.png", 120, 90, seed=4)
    change = np.zeros((90, 120))
    change[30:60, 40:80] = 1
    mask = save_map(tmp_path / "m.png", change)
    code, out, err = cli(capsys, "edit", photo, "--map", mask, "-p", "x", "--model", "tiny-sdxl", "--steps", 2, "--seed", 3,
                         "--work-size", "128x96", "--context", 8, "-o", tmp_path / "a.png", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["work_size"] == [128, 96] and record["native_size"] == [1024, 1024] and record["region"] == [0, 0, 120, 90]
    assert record["denoiser_latent_size"] == [16, 12] and "at 128x96]: step 2/2" in err  # the progress line
    written = Image.open(tmp_path / "a.png")
    assert written.size == (120, 90) and "Diffdiff work size: 128x96" in written.info["parameters"]
    code, _, err = cli(capsys, "edit", "--like", tmp_path / "a.png", photo, "-o", tmp_path / "b.png")
    assert code == 0, err
    assert np.array_equal(np.asarray(written), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.slow
def test_a_small_image_on_a_1024_family_works_at_the_native_area(tmp_path, capsys):
    """~25 s: tiny-sdxl at about 1024 x 768 (the fast test above forces a small working size)."""
    photo = save_rgb(tmp_path / "web.png", 120, 90, seed=4)
    change = np.zeros((90, 120))
    change[30:60, 40:80] = 1
    mask = save_map(tmp_path / "m.png", change)
    code, out, err = cli(capsys, "edit", photo, "--map", mask, "-p", "x", "--model", "tiny-sdxl", "--steps", 2, "--seed", 3,
                         "-o", tmp_path / "a.png", "--json")
    assert code == 0, err
    record = json.loads(out)
    work_w, work_h = record["work_size"]
    assert abs(work_w * work_h - 1024 * 1024) <= 8 * (work_w + work_h) and record["region"] == [0, 0, 120, 90]
    assert Image.open(tmp_path / "a.png").size == (120, 90)
    original, out = np.asarray(Image.open(photo)), np.asarray(Image.open(tmp_path / "a.png"))
    assert np.array_equal(out[change == 0], original[change == 0])


def test_a_black_map_writes_the_input_without_loading_the_model(tmp_path, capsys):
    photo = save_rgb(tmp_path / "p.png", 96, 64, seed=1, mode="RGBA")
    black = save_map(tmp_path / "black.png", np.zeros((64, 96)))
    code, out, err = cli(capsys, "edit", photo, "--map", black, "-p", "x", "-o", tmp_path / "o.png", "--json", "--seed", 2)
    assert code == 0, err
    record = json.loads(out)
    assert record["model_loads"] == 0 and record["status"] == "done" and record["unchanged"] is True
    assert "loading model" not in err and "0 everywhere" in err
    out, original = Image.open(tmp_path / "o.png"), Image.open(photo)
    assert out.mode == original.mode and np.array_equal(np.asarray(out), np.asarray(original))
    assert json.loads(out.info["diffdiff"])["seed"] == record["seed"]


def test_plan_and_map_preview_show_the_region_and_the_working_size(tmp_path, capsys):
    photo = save_rgb(tmp_path / "p.png", 400, 300, seed=3)
    change = np.zeros((300, 400))
    change[100:140, 200:260] = 1
    mask = save_map(tmp_path / "m.png", change)
    code, out, err = cli(capsys, "plan", "--map", mask, "--image", photo, "--model", "tiny-sdxl", "--steps", 4, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fit"] == "auto" and report["native_size"] == [1024, 1024] and report["work_size"] == [1024, 1024]
    x0, y0, x1, y1 = report["region"]
    assert x0 < 200 and y0 < 100 and x1 > 260 and y1 > 140 and (x1 - x0, y1 - y0) == (256, 256)  # at most 4x up
    code, out, err = cli(capsys, "map", "preview", photo, mask, "--model", "tiny-sdxl", "--steps", 4, "-o", tmp_path / "v.png", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["region"] == report["region"] and record["work_size"] == report["work_size"]
    tinted = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))[:300, :400].astype(int)
    shown = np.asarray(Image.open(photo)).astype(int)
    outside = np.ones((300, 400), dtype=bool)
    outside[max(y0 - 4, 0) : y1 + 4, max(x0 - 4, 0) : x1 + 4] = False  # the box and its outline
    assert np.array_equal(tinted[outside], shown[outside])  # outside the region: untinted
    assert np.abs(tinted[110:130, 210:250] - shown[110:130, 210:250]).mean() > 20

    big = save_map(tmp_path / "big.png", np.ones((1200, 1200)))
    code, out, err = cli(capsys, "plan", "--map", big, "--fit", "full", "--steps", 4, "--json")
    assert code == 0 and "native area" in err and json.loads(out)["work_size"] == [1200, 1200]


def test_bad_fit_flags_fail_before_any_work(images, tmp_path, capsys):
    for flag, value in (("--fit", "sideways"), ("--work-size", "12"), ("--context", "-4")):
        code, _, err = cli(capsys, "edit", images["photo"], "--map", images["gradient"], "-p", "x", "-o", tmp_path / "o.png", flag, value)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and flag in lines[0] and "loading model" not in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("model, native", [("tiny-sd15", 512), ("tiny-sdxl", 1024), ("tiny-sd3", 1024), ("tiny-flux", 1024), ("demo", 64)])
def test_native_sizes_of_the_built_ins(model, native):
    from diffdiff_cli.models.load import read_configs
    from diffdiff_cli.models.registry import resolve_model

    assert read_configs(resolve_model(model), offline=True).native_size == native


@pytest.mark.parametrize("folder, native", [("sd15", 512), ("sd21", 768), ("sdxl", 1024)])
def test_native_sizes_from_real_configs(folder, native):
    from diffdiff_cli.families import FAMILIES
    from diffdiff_cli.models.load import native_side, read_configs
    from diffdiff_cli.models.registry import ModelSource

    root = Path(__file__).resolve().parent.parent / "diffdiff_cli" / "models" / "configs" / folder
    assert read_configs(ModelSource("folder", str(root), folder), offline=True).native_size == native
    assert native_side(FAMILIES["sd"], 8, {}, {"prediction_type": "v_prediction"}) == 768  # SD 2.x-768 without sample_size
    assert native_side(FAMILIES["flux"], 8, {}, {}) == 1024
