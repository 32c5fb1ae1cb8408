"""Strength levels of a plan and threshold dithering: what a map value really does, and how to smooth it.

Under binary masks a pixel is pinned at every evaluation whose threshold is above its change c and free
from the first evaluation with c >= threshold on. With distinct thresholds d0 = 1 > d1 > ... > dm:

- rule "entry" (timestep schedule, the node's rule): a pinned pixel's prediction points at x0, so it
  travels exactly along q(x0, .) and enters the run at q(x0, sigma_k) of the evaluation k that frees it;
  it changes as img2img at strength d_k of the run. c in [d_k, d_(k-1)) gets d_k; c < dm (or 0) is kept.
- rule "last_reset" (steps schedule, the paper's code): the input is reset but the model's own prediction
  steps the pixel, so it changes from the level of its last reset: c in [d_k, d_(k-1)) gets d_(k-1), and
  c >= d1 changes as fully as white.

Either way a staircase with about one level per evaluation. Dithering gives each latent pixel its own
threshold offset from a fixed pattern u(p) in [0, 1): jittering the threshold by d(p) is comparing
c - d(p) with the unchanged thresholds, so the engine runs as it is on a dithered map. Between the two
strength levels a < b around c the offset is scaled to that gap so that a share (c - a) / (b - a) of the
pixels lands on b and the rest on a; every neighbourhood then averages to c. The dithered map holds, per
pixel, a value inside an interval that gives the level it lands on.
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


RULES = ("entry", "last_reset")


def _distinct_descending(thresholds) -> np.ndarray:
    return np.unique(np.asarray(thresholds, dtype=np.float32))[::-1]


def _interval_levels(thresholds, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(d, levels): change in [d[k], d[k-1]) (k = 0: c >= d[0]) gets levels[k]; below d[-1] it is kept (0)."""
    if rule not in RULES:
        raise ValueError(f"unknown level rule {rule!r}")
    d = _distinct_descending(thresholds)
    if rule == "entry":
        levels = d.astype(np.float64)
    else:
        levels = np.concatenate([[1.0], d[:-1].astype(np.float64)])
    return d, levels


def effective_strength(change: np.ndarray, thresholds, rule: str = "entry") -> np.ndarray:
    """The strength each pixel gets under binary masks. Compared in float32, as the engine and
    `plan.free_mask` compare."""
    d, levels = _interval_levels(thresholds, rule)
    c = np.asarray(change, dtype=np.float32)
    first_free = len(d) - np.searchsorted(d[::-1], c, side="right")  # first threshold c reaches; len(d) if none
    strength = np.concatenate([levels, [0.0]])[first_free]
    return np.where(c > 0, strength, 0.0)


def strength_levels(thresholds, rule: str = "entry") -> np.ndarray:
    """The distinct strengths a run with these thresholds can give, ascending (0 included)."""
    _, levels = _interval_levels(thresholds, rule)
    return np.unique(np.concatenate([[0.0], levels]))


def level_representatives(thresholds, rule: str = "entry") -> tuple[np.ndarray, np.ndarray]:
    """(levels ascending, a map value giving each level): 0 for 0, 1 for 1, mid-interval for the others."""
    d, levels = _interval_levels(thresholds, rule)
    by_level = {0.0: 0.0}
    for k in range(len(d) - 1, -1, -1):  # lowest interval first; a level keeps its lowest interval
        level = float(levels[k])
        if level in by_level:
            continue
        if level >= 1.0:
            by_level[level] = 1.0
        else:
            upper = float(d[k - 1]) if k > 0 else 1.0
            by_level[level] = (float(d[k]) + upper) / 2.0
    ordered = sorted(by_level)
    return np.array(ordered), np.array([by_level[level] for level in ordered], dtype=np.float32)


def dither(change: np.ndarray, thresholds, rule: str = "entry") -> np.ndarray:
    """The dithered latent map: same shape, 0 stays 0 and 1 stays 1, local means of the strength follow c."""
    c = np.asarray(change, dtype=np.float64)
    levels, values = level_representatives(thresholds, rule)
    upper = np.clip(np.searchsorted(levels, c, side="right"), 1, len(levels) - 1)
    low, high = levels[upper - 1], levels[upper]
    share = np.clip((c - low) / (high - low), 0.0, 1.0)
    up = dither_pattern(*c.shape) < share
    out = np.where(up, values[upper], values[upper - 1]).astype(np.float32)
    out[c <= 0] = 0.0
    out[c >= 1] = 1.0
    return out
