"""Strength levels of a plan and threshold dithering: what a map value really does, and how to smooth it.

Under binary masks a pixel is reset to q(x0, t) at every evaluation whose threshold is above its change c,
and follows the sampler from the first evaluation with c >= threshold on. Its last reset fixes how much
it changes: a pixel last reset at threshold tau is denoised from that level, as img2img at strength tau
of the run. So a run with distinct thresholds d1 = 1 > d2 > ... > dm gives the strengths
    1 for c >= d2,   d(j-1) for d(j) <= c < d(j-1),   0 for c < dm (or c = 0: pinned to the end)
- a staircase with about one level per step. Pixels with d2 <= c < 1 are reset only at the first
evaluation, to the latent the run starts from anyway, so they change as fully as white ones.

Dithering gives each latent pixel its own threshold offset from a fixed pattern u(p) in [0, 1): jittering
the threshold by d(p) is comparing c - d(p) with the unchanged thresholds, so the engine runs as it is on
a dithered map. Between the two strength levels a < b around c, the offset is scaled to that gap so that a
share (c - a) / (b - a) of the pixels lands on b and the rest on a; every neighbourhood then averages to
c. The dithered map holds, per pixel, a value inside the interval of the level it lands on.
"""

from __future__ import annotations

import numpy as np

# Roberts' R2 sequence (the plastic number g, alpha = 1/g, 1/g^2): a fixed ordered pattern whose every
# row, column and small window is spread evenly over [0, 1), so column and row means track the map.
_PLASTIC = 1.324717957244746
_ALPHA = (1.0 / _PLASTIC, 1.0 / _PLASTIC**2)


def dither_pattern(height: int, width: int) -> np.ndarray:
    """Offsets u(p) in [0, 1) for each latent pixel, the same for every run."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.mod(0.5 + _ALPHA[0] * xs + _ALPHA[1] * ys, 1.0)


def _distinct_descending(thresholds) -> np.ndarray:
    return np.unique(np.asarray(thresholds, dtype=np.float32))[::-1]


def effective_strength(change: np.ndarray, thresholds) -> np.ndarray:
    """The strength each pixel gets under binary masks: the threshold of its last reset, 1 if only the
    first, 0 if pinned to the end. Compared in float32, as the engine and `plan.free_mask` compare."""
    d = _distinct_descending(thresholds)
    c = np.asarray(change, dtype=np.float32)
    # index of the first (largest) threshold the pixel reaches; len(d) if none
    first_free = len(d) - np.searchsorted(d[::-1], c, side="right")
    reset_level = np.concatenate([[1.0], d[:-1].astype(np.float64), [0.0]])
    strength = reset_level[first_free]
    return np.where(c > 0, strength, 0.0)


def strength_levels(thresholds) -> np.ndarray:
    """The distinct strengths a run with these thresholds can give, ascending (0 and 1 included)."""
    d = _distinct_descending(thresholds).astype(np.float64)
    return np.unique(np.concatenate([[0.0, 1.0], d[:-1]]))


def level_representatives(thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(levels ascending, a map value giving each level): 0 for 0, 1 for 1, mid-interval for the others."""
    d = _distinct_descending(thresholds).astype(np.float64)
    levels, values = [0.0], [0.0]
    for j in range(len(d) - 1, 0, -1):  # level d[j-1] comes from change in [d[j], d[j-1])
        if d[j - 1] < 1.0:
            levels.append(float(d[j - 1]))
            values.append(float(d[j] + d[j - 1]) / 2.0)
    levels.append(1.0)
    values.append(1.0)
    return np.array(levels), np.array(values, dtype=np.float32)


def dither(change: np.ndarray, thresholds) -> np.ndarray:
    """The dithered latent map: same shape, 0 stays 0 and 1 stays 1, local means of the strength follow c."""
    c = np.asarray(change, dtype=np.float64)
    levels, values = level_representatives(thresholds)
    upper = np.clip(np.searchsorted(levels, c, side="right"), 1, len(levels) - 1)
    low, high = levels[upper - 1], levels[upper]
    share = np.clip((c - low) / (high - low), 0.0, 1.0)
    up = dither_pattern(*c.shape) < share
    out = np.where(up, values[upper], values[upper - 1]).astype(np.float32)
    out[c <= 0] = 0.0
    out[c >= 1] = 1.0
    return out
