"""Reading change maps: bit depths, palettes, alpha and colour channels, EXIF orientation, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import save_map, save_rgb
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.errors import InputError
from diffdiff_cli.load import load_map
from diffdiff_cli.prepare_map import prepare_map

ORIENTATION = 0x0112


def test_16_bit_png_and_tiff_read_by_true_depth(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    for name in ("ramp16.png", "ramp16.tif"):
        Image.fromarray(ramp).save(tmp_path / name)
        values = load_map(str(tmp_path / name))
        assert values.min() == 0.0 and values.max() == 1.0  # not clamped at 255/65535
        assert np.allclose(values, ramp / 65535.0, atol=1e-6)
        assert len(np.unique(values)) > 1000  # finer than 8 bits


def test_float_8_bit_and_1_bit_maps(tmp_path):
    floats = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    assert np.allclose(load_map(str(tmp_path / "f.tif")), floats)
    save_map(tmp_path / "l.png", np.array([[0.0, 0.5, 1.0]]))
    assert np.allclose(load_map(str(tmp_path / "l.png")), [[0, 128 / 255, 1]])
    Image.fromarray(np.array([[True, False], [False, True]])).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    assert load_map(str(tmp_path / "b.png")).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_float_map_outside_0_1_is_refused_with_the_fix(tmp_path):
    Image.fromarray(np.full((4, 4), 255.0, dtype=np.float32), mode="F").save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match=r"wide\.tif.*0\.\.1.*rescale"):
        load_map(str(tmp_path / "wide.tif"))


def test_palette_map_reads_by_luminance(tmp_path):
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    Image.fromarray(colours).quantize(4, dither=Image.Dither.NONE).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    values = load_map(str(tmp_path / "p.png"))
    assert np.allclose(values, [[0.299, 0.587], [0.114, 1.0]], atol=1 / 255)


def test_rgba_map_channels_alpha_means_transparent_changes(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[..., 2] = [[0, 128, 255], [0, 128, 255]]
    rgba[..., 3] = [[0, 255, 255], [255, 255, 0]]  # transparent at two corners
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "cut.png")
    path = str(tmp_path / "cut.png")
    assert load_map(path, "alpha").tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert load_map(path, "red").tolist() == [[1.0] * 3] * 2
    assert np.allclose(load_map(path, "blue"), [[0, 128 / 255, 1]] * 2)
    assert np.allclose(load_map(path, "green"), 0)
    luma = load_map(path)  # colour by luminance; the alpha is not mixed in
    assert np.allclose(luma[0], 0.299 + 0.114 * np.array([0, 128 / 255, 1]), atol=1e-6)
    la = Image.fromarray(rgba[..., [1, 3]], mode="LA")
    la.save(tmp_path / "la.png")
    assert load_map(str(tmp_path / "la.png"), "alpha").tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_alpha_channel_of_an_opaque_map_is_an_error_naming_the_flag(tmp_path):
    path = save_map(tmp_path / "grey.png", np.full((4, 4), 0.5))
    with pytest.raises(InputError, match=r"grey\.png: --map-channel alpha but the map \(L\) has no alpha channel; use --map-channel luma"):
        load_map(path, "alpha")
    with pytest.raises(InputError, match="--map-channel"):
        load_map(path, "purple")


def test_size_mismatch_is_fitted_with_a_notice_or_refused_when_strict():
    change = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (16, 1))
    prepared = prepare_map(change, (64, 32), 8, map_label="--map m.png")
    assert prepared.pixels.shape == (32, 64) and "resized" in prepared.notices[0]
    with pytest.raises(InputError, match=r"--map m.png is 32x16, the image 64x32.*--strict-size"):
        prepare_map(change, (64, 32), 8, strict_size=True, map_label="--map m.png")
    transposed = prepare_map(np.zeros((64, 32), np.float32), (64, 32), 8).notices[0]
    assert "EXIF" in transposed  # a hint when the sizes are each other's turn


def _rotated_for_exif(upright: Image.Image) -> Image.Image:
    """How a camera stores an upright picture under EXIF orientation 6 (display = rotate 90 clockwise)."""
    return upright.transpose(Image.Transpose.ROTATE_90)


@pytest.mark.parametrize("map_also_rotated", [False, True])
def test_exif_rotated_jpeg_and_its_map_line_up(tiny_model, tmp_path, map_also_rotated):
    width, height = 64, 96  # upright portrait; stored as a 96 x 64 landscape JPEG
    upright_photo = Image.open(save_rgb(tmp_path / "upright.png", width, height, seed=3))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    _rotated_for_exif(upright_photo).save(tmp_path / "photo.jpg", quality=95, exif=exif.tobytes())
    keep_left = np.zeros((height, width))
    keep_left[:, width // 2 :] = 1.0  # upright: left half kept, right half changed
    map_path = save_map(tmp_path / "map.png", keep_left)
    if map_also_rotated:
        _rotated_for_exif(Image.open(map_path)).save(tmp_path / "map-rot.png", exif=exif.tobytes())
        map_path = str(tmp_path / "map-rot.png")
        assert Image.open(map_path).size == (height, width)

    result = compute_edit(tiny_model, EditSettings(prompt="x", steps=2, seed=1, fit="full"), str(tmp_path / "photo.jpg"), map_path)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg")))
    out = np.asarray(result.image)
    assert result.image.size == (width, height)
    assert np.array_equal(out[:, : width // 2], shown[:, : width // 2])  # the kept half is the photo's own pixels
    assert np.abs(out[:, width // 2 + 8 :].astype(int) - shown[:, width // 2 + 8 :]).mean() > 5
