"""Map shaping and generators as pure functions, and the antialiased resample to the latent grid."""

from __future__ import annotations

import numpy as np
import pytest

from diffdiff_cli import maps
from diffdiff_cli.errors import InputError
from diffdiff_cli.prepare_map import MapShaping, parse_levels, prepare_map, shape_map


def shaped(values, **flags) -> np.ndarray:
    """The prepared map (factor 1, so pixels are the shaped values) for a small array."""
    change = np.asarray(values, dtype=np.float32)
    return prepare_map(change, (change.shape[1], change.shape[0]), 1, shaping=MapShaping(**flags)).pixels


ROW = [[0.0, 0.1, 0.2, 0.25, 0.5, 0.8, 0.9, 1.0]]


def test_no_shaping_leaves_the_map_as_it_is():
    assert np.array_equal(shaped(ROW), np.float32(ROW))


def test_invert():
    assert np.allclose(shaped(ROW, invert=True), 1 - np.float32(ROW))


def test_levels_map_low_to_0_and_high_to_1_linearly_between():
    got = shaped(ROW, levels=(0.2, 0.8))[0]
    assert got.tolist() == pytest.approx([0, 0, 0, 1 / 12, 0.5, 1, 1, 1], abs=1e-6)


def test_gamma_lifts_greys_above_1_and_keeps_the_ends():
    lifted = shaped(ROW, gamma=2.0)[0]
    assert lifted[0] == 0 and lifted[-1] == 1
    assert lifted[3] == pytest.approx(0.5)  # 0.25 ** (1 / 2)
    assert np.all(np.diff(lifted) > 0)  # still monotone
    assert shaped(ROW, gamma=0.5)[0][4] == pytest.approx(0.25)


def test_min_max_clamp_the_change_but_black_stays_black():
    got = shaped(ROW, minimum=0.3, maximum=0.85)[0]
    assert got.tolist() == pytest.approx([0, 0.3, 0.3, 0.3, 0.5, 0.8, 0.85, 0.85])


def test_grow_is_a_disc_dilation_that_keeps_grey_values():
    change = np.zeros((15, 15), np.float32)
    change[7, 7] = 0.5
    grown = shaped(change, grow=3)
    ys, xs = np.mgrid[0:15, 0:15]
    disc = (ys - 7) ** 2 + (xs - 7) ** 2 <= 9
    assert np.array_equal(grown == 0.5, disc) and np.all(grown[~disc] == 0)


def test_grow_matches_a_brute_force_max_filter():
    rs = np.random.RandomState(0)
    change = (rs.rand(20, 24) > 0.93) * rs.rand(20, 24)
    radius = 2.5
    expected = np.zeros_like(change)
    for y in range(20):
        for x in range(24):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    yy, xx = min(max(y + dy, 0), 19), min(max(x + dx, 0), 23)
                    if dx * dx + dy * dy <= radius * radius:
                        expected[y, x] = max(expected[y, x], change[yy, xx])
    assert np.allclose(maps.grow(change, radius), expected)


def test_blur_feathers_keeps_mass_and_leaves_far_pixels_exactly_zero():
    change = np.zeros((41, 41), np.float32)
    change[20, 20] = 1.0
    blurred = shaped(change, blur=2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4)
    assert 0 < blurred.max() < 0.1 and blurred[20, 20] == blurred.max()
    assert blurred[20, 20 + 7] == 0 and blurred[0, 0] == 0  # beyond 3 sigma: untouched, so kept exactly
    ys, xs = np.mgrid[0:41, 0:41]
    variance = float((blurred * (xs - 20) ** 2).sum())
    assert variance == pytest.approx(4.0, rel=0.05)  # sigma = 2 pixels


def test_shaping_runs_in_the_documented_order():
    # invert, then levels, then min: 0.75 -> 0.25 -> 0.5 -> 0.5 ; levels before invert would give 0.5 -> 0.0
    assert shaped([[0.75]], invert=True, levels=(0.0, 0.5), minimum=0.2)[0, 0] == pytest.approx(0.5)
    # min before grow: the lifted floor is what grows
    grown = shaped([[0.0, 0.05, 0.0]], minimum=0.4, grow=1)[0]
    assert grown.tolist() == pytest.approx([0.4, 0.4, 0.4])


@pytest.mark.parametrize(
    "flags, flag",
    [
        (dict(levels=(0.8, 0.2)), "--map-levels"),
        (dict(gamma=0.0), "--map-gamma"),
        (dict(minimum=0.6, maximum=0.4), "--map-min"),
        (dict(maximum=1.5), "--map-max"),
        (dict(grow=-1), "--map-grow"),
        (dict(blur=-2), "--map-blur"),
    ],
)
def test_bad_shaping_values_name_their_flag(flags, flag):
    with pytest.raises(InputError, match=flag):
        MapShaping(**flags).validate()


def test_parse_levels():
    assert parse_levels("0.2:0.8") == (0.2, 0.8)
    for text in ("0.5", "a:b", "0.8:0.2", "0:1.5"):
        with pytest.raises(InputError, match="--map-levels"):
            parse_levels(text)


def nearest(change: np.ndarray, factor: int) -> np.ndarray:
    """What an aliasing resampler does: one pixel per latent cell (the cell's centre)."""
    return change[factor // 2 :: factor, factor // 2 :: factor]


def test_a_one_pixel_line_keeps_its_mean_on_the_latent_grid_unlike_nearest():
    change = np.zeros((64, 64), np.float32)
    change[:, 19] = 1.0  # a thin vertical line between cell centres
    latent = prepare_map(change, (64, 64), 8).latent
    assert latent.mean() == pytest.approx(change.mean())
    assert np.allclose(latent[:, 2], 1 / 8) and np.all(np.delete(latent, 2, axis=1) == 0)
    assert nearest(change, 8).mean() == 0  # nearest sampling loses the line altogether
    change[:, 20] = 1.0  # on a cell centre, nearest makes it a full-strength column instead
    assert nearest(change, 8).mean() == pytest.approx(1 / 8) and change.mean() == pytest.approx(2 / 64)


def test_a_fine_checkerboard_stays_an_even_grey_even_when_the_map_is_resized():
    ys, xs = np.mgrid[0:128, 0:128]
    board = ((ys + xs) % 2).astype(np.float32)
    latent = prepare_map(board[:64, :64], (64, 64), 8).latent
    assert np.allclose(latent, 0.5)
    assert nearest(board, 8).mean() in (0.0, 1.0)  # nearest sampling turns the even grey all black or all white
    fitted = prepare_map(board, (64, 64), 8)  # a 128 px map for a 64 px image: shrunk with an area filter
    assert fitted.pixels.mean() == pytest.approx(0.5, abs=0.01) and fitted.pixels.std() < 0.05
    assert np.allclose(fitted.latent, 0.5, atol=0.02)


def test_distance_is_exact_euclidean_up_to_the_limit():
    rs = np.random.RandomState(1)
    mask = rs.rand(30, 40) > 0.97
    got = maps.distance_to(mask, limit=10)
    on = np.argwhere(mask)
    ys, xs = np.mgrid[0:30, 0:40]
    brute = np.sqrt(((ys[..., None] - on[:, 0]) ** 2 + (xs[..., None] - on[:, 1]) ** 2).min(axis=-1))
    near = brute <= 10
    assert np.allclose(got[near], brute[near]) and np.all(got[~near] > 10)


def test_gradient_size_range_direction_and_bands():
    g = maps.linear_gradient(48, 32, angle=0)
    assert g.shape == (32, 48) and g.min() == 0 and g.max() == 1
    assert np.all(np.diff(g[0]) > 0) and np.all(g == g[0])  # left to right, constant down each column
    up = maps.linear_gradient(48, 32, angle=90)
    assert up[-1, 0] == 0 and up[0, 0] == 1 and np.all(np.diff(up[:, 0]) < 0)  # bottom to top
    down = maps.linear_gradient(48, 32, angle=270, start=0.2, end=0.6)
    assert down[0, 0] == pytest.approx(0.2) and down[-1, 0] == pytest.approx(0.6)
    diagonal = maps.linear_gradient(40, 40, angle=45)
    assert diagonal[-1, 0] == 0 and diagonal[0, -1] == 1
    bands = maps.linear_gradient(50, 10, bands=5)
    assert np.allclose(np.unique(bands), [0, 0.25, 0.5, 0.75, 1]) and np.all(np.diff(bands[0]) >= 0)


@pytest.mark.parametrize("falloff", maps.FALLOFFS)
def test_radial_falls_off_monotonically_to_the_radius(falloff):
    r = maps.radial(61, 41, center=(30, 20), radius=(20, 20), falloff=falloff)
    assert r.shape == (41, 61) and r[20, 30] == 1 and r.min() == 0
    profile = r[20, 30:]
    assert np.all(np.diff(profile) <= 0) and profile[20] == 0
    assert r[20, 40] == pytest.approx(0.5)  # halfway out: both falloffs pass 0.5 there
    vignette = maps.radial(61, 41, radius=(35, 25), start=0, end=1)
    assert vignette[20, 30] == 0 and vignette[0, 0] == 1


@pytest.mark.parametrize("falloff", maps.FALLOFFS)
def test_feather_is_one_inside_and_falls_with_distance_to_zero_at_the_radius(falloff):
    mask = np.zeros((40, 80), np.float32)
    mask[:, :30] = 1.0
    soft = maps.feather(mask, radius=16, falloff=falloff)
    assert soft.shape == mask.shape and np.all(soft[:, :30] == 1)
    row = soft[10, 29:]
    assert np.all(np.diff(row) <= 0) and np.all(soft[:, 29 + 16 :] == 0) and 0 < soft[10, 37] < 1
    assert soft.min() == 0 and soft.max() == 1


def test_shape_map_is_pure():
    change = np.full((4, 4), 0.5, np.float32)
    before = change.copy()
    shape_map(change, MapShaping(invert=True, grow=1, blur=1))
    assert np.array_equal(change, before)
