"""Change maps as arrays: the shaping steps and the generators, pure numpy on float (H, W) arrays in [0, 1].

Shaping, in the order `prepare_map` applies it: invert, levels, gamma, min/max, grow, blur. Generators:
linear gradients, radial falloffs and the distance-based feather of a binary mask. Nothing here reads or
writes files.
"""

from __future__ import annotations

import math

import numpy as np


def invert(change: np.ndarray) -> np.ndarray:
    return (1.0 - change).astype(np.float32)


def levels(change: np.ndarray, low: float, high: float) -> np.ndarray:
    """Remap [low, high] to [0, 1]: values at or below `low` become 0, at or above `high` become 1."""
    return np.clip((change - low) / (high - low), 0.0, 1.0).astype(np.float32)


def gamma(change: np.ndarray, g: float) -> np.ndarray:
    """Midtone gamma as image editors apply it: c ** (1 / g). g > 1 lifts greys (more change); 0 and 1 stay."""
    return np.power(np.clip(change, 0.0, 1.0), 1.0 / g).astype(np.float32)


def clamp_change(change: np.ndarray, minimum: float, maximum: float) -> np.ndarray:
    """Limit the change to [minimum, maximum]; black stays 0, so what the map keeps is still kept exactly.

    The floor only lifts pixels that change at all: a minimum amount of change wherever the map edits.
    """
    capped = np.minimum(change, maximum)
    return np.where(change > 0, np.maximum(capped, minimum), 0.0).astype(np.float32)


def _disc_half_widths(radius: float) -> dict[int, list[int]]:
    """Row offsets dy of a disc of `radius`, grouped by the disc's half width at that row."""
    r = int(math.floor(radius))
    groups: dict[int, list[int]] = {}
    for dy in range(-r, r + 1):
        groups.setdefault(int(math.floor(math.sqrt(radius * radius - dy * dy))), []).append(dy)
    return groups


def grow(change: np.ndarray, radius: float) -> np.ndarray:
    """Grey dilation by a disc of `radius` pixels: every pixel takes the largest change within that distance.

    Horizontal running maxima widen one pixel at a time; each row offset of the disc reads the one whose
    width matches, so the cost is O(radius) passes over the image.
    """
    r = int(math.floor(radius))
    if r < 1:
        return change.astype(np.float32)
    h, w = change.shape
    padded = np.pad(change.astype(np.float32), r, mode="edge")
    groups = _disc_half_widths(radius)
    out = np.zeros((h, w), dtype=np.float32)
    running = padded.copy()  # running[y, x] = max of padded[y, x - k .. x + k], k growing
    for k in range(r + 1):
        if k > 0:
            wider = running.copy()
            np.maximum(wider[:, 1:], running[:, :-1], out=wider[:, 1:])
            np.maximum(wider[:, :-1], running[:, 1:], out=wider[:, :-1])
            running = wider
        for dy in groups.get(k, []):
            np.maximum(out, running[r + dy : r + dy + h, r : r + w], out=out)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, cut at 3 sigma (so change never leaks further than that)."""
    half = max(int(math.ceil(3.0 * sigma)), 1)
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _convolve_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    half = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(values, pad, mode="edge")
    n = values.shape[axis]
    out = np.zeros_like(values, dtype=np.float64)
    for i, weight in enumerate(kernel):
        out += weight * (padded[i : i + n] if axis == 0 else padded[:, i : i + n])
    return out


def blur(change: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian feather with standard deviation `sigma` pixels (Pillow's GaussianBlur radius), edges extended."""
    if sigma <= 0:
        return change.astype(np.float32)
    kernel = gaussian_kernel(sigma)
    out = _convolve_axis(_convolve_axis(change.astype(np.float64), kernel, 0), kernel, 1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def distance_to(mask: np.ndarray, limit: float) -> np.ndarray:
    """Euclidean distance from each pixel to the nearest True pixel (0 on the mask), exact up to `limit`.

    Distances beyond `limit` come back as some value > `limit`. Two separable passes: the distance along
    each column, then for each pixel the best column within `limit` of it.
    """
    h, w = mask.shape
    far = float(limit) + 1.0
    rows = np.arange(h, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(mask, rows, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(mask, rows, np.inf)[::-1], axis=0)[::-1]
    column = np.minimum(np.minimum(rows - above, below - rows), far)
    squared = column**2
    best = squared.copy()
    reach = int(math.ceil(limit))
    for dx in range(1, min(reach, w - 1) + 1):
        np.minimum(best[:, dx:], squared[:, :-dx] + dx * dx, out=best[:, dx:])
        np.minimum(best[:, :-dx], squared[:, dx:] + dx * dx, out=best[:, :-dx])
    return np.sqrt(best)


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


FALLOFFS = ("smooth", "linear")


def _ramp(t: np.ndarray, falloff: str) -> np.ndarray:
    """0 at t = 0 rising to 1 at t >= 1, linearly or along a smoothstep."""
    return smoothstep(t) if falloff == "smooth" else np.clip(t, 0.0, 1.0)


def feather(mask_values: np.ndarray, radius: float, falloff: str = "smooth") -> np.ndarray:
    """A binary mask (values >= 0.5 are in) to a soft change map: 1 inside, falling to 0 at `radius` px outside."""
    inside = mask_values >= 0.5
    distance = distance_to(inside, radius)
    return (1.0 - _ramp(distance / radius, falloff)).astype(np.float32)


def linear_gradient(width: int, height: int, angle: float = 0.0, start: float = 0.0, end: float = 1.0, bands: int = 0) -> np.ndarray:
    """`start` to `end` across the image along `angle` degrees, counter-clockwise from left-to-right.

    0 = left to right, 90 = bottom to top, 180 = right to left, 270 = top to bottom. The first and last
    pixel centres along that direction get `start` and `end` exactly. `bands` > 1 cuts the ramp into that
    many flat bands, the first `start` and the last `end`.
    """
    theta = math.radians(angle)
    dx, dy = math.cos(theta), -math.sin(theta)  # image rows grow downwards
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    projection = xs * dx + ys * dy
    corners = [x * dx + y * dy for x in (0, width - 1) for y in (0, height - 1)]
    low, high = min(corners), max(corners)
    t = np.zeros_like(projection) if high - low < 1e-12 else (projection - low) / (high - low)
    if bands > 1:
        t = np.minimum(np.floor(t * bands), bands - 1) / (bands - 1)
    return np.clip(start + (end - start) * t, 0.0, 1.0).astype(np.float32)


def radial(
    width: int,
    height: int,
    center: tuple[float, float] | None = None,
    radius: tuple[float, float] | None = None,
    falloff: str = "smooth",
    start: float = 1.0,
    end: float = 0.0,
) -> np.ndarray:
    """`start` at `center`, `end` at `radius` (x and y radii: an ellipse) and beyond.

    Defaults: the image centre and a circle reaching the nearer edges.
    """
    cx, cy = center if center is not None else ((width - 1) / 2.0, (height - 1) / 2.0)
    rx, ry = radius if radius is not None else (min(width, height) / 2.0,) * 2
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    t = np.hypot((xs - cx) / rx, (ys - cy) / ry)
    return np.clip(start + (end - start) * _ramp(t, falloff), 0.0, 1.0).astype(np.float32)
