"""Procedural captioned images for the `demo` model: one coloured shape on a coloured background.

Every image is drawn from a seed, so the data set is a pure function of (seed, index). The same palette
classifies colours back, which is what the demo checks measure.

    a red circle on a blue background      (a shape: circle, square or triangle, 7-22 px radius)
    a green background                     (about 1 in 8: the background alone)

Colours are jittered around each palette entry; backgrounds get a gentle brightness ramp and a little
grain, shapes are anti-aliased (drawn at 4x and reduced).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# name -> sRGB centre. Chosen far apart so nearest-centre classification is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (240, 225, 40),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "purple": (135, 45, 180),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
_CENTRES = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


def _jitter(rs: np.random.RandomState, colour: str) -> np.ndarray:
    base = np.array(PALETTE[colour], dtype=np.float32)
    return np.clip(base + rs.uniform(-18, 18, 3) + rs.uniform(-15, 15), 0, 255)


def draw(bg: str, fg: str | None, shape: str | None, cx: float, cy: float, r: float, rs: np.random.RandomState) -> np.ndarray:
    """One image as HxWx3 uint8."""
    bg_rgb = _jitter(rs, bg)
    ramp_dir = rs.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1) - 0.5
    ramp = (np.cos(ramp_dir) * xx + np.sin(ramp_dir) * yy) * rs.uniform(0, 30)
    image = bg_rgb[None, None, :] + ramp[..., None] + rs.normal(0, 2.0, (SIZE, SIZE, 1))
    if fg is not None:
        scale = 4
        mask_img = Image.new("L", (SIZE * scale, SIZE * scale), 0)
        d = ImageDraw.Draw(mask_img)
        x, y, rr = cx * scale, cy * scale, r * scale
        if shape == "circle":
            d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)
        elif shape == "square":
            d.rectangle((x - rr * 0.9, y - rr * 0.9, x + rr * 0.9, y + rr * 0.9), fill=255)
        else:
            d.polygon([(x, y - rr), (x - rr * 1.05, y + rr * 0.8), (x + rr * 1.05, y + rr * 0.8)], fill=255)
        mask = np.asarray(mask_img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255
        fg_rgb = _jitter(rs, fg)
        image = image * (1 - mask) + fg_rgb[None, None, :] * mask
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def caption(bg: str, fg: str | None, shape: str | None) -> str:
    if fg is None:
        return f"{article(bg)} background"
    return f"{article(fg)} {shape} on {article(bg)} background"


def sample(seed: int, index: int) -> tuple[np.ndarray, str]:
    """Image `index` of the data set drawn with `seed` (independent of every other index)."""
    rs = np.random.RandomState([seed, index])
    bg = COLOURS[rs.randint(len(COLOURS))]
    if rs.rand() < 0.125:
        return draw(bg, None, None, 0, 0, 0, rs), caption(bg, None, None)
    fg = COLOURS[rs.randint(len(COLOURS) - 1)]
    if fg == bg:
        fg = COLOURS[-1]
    shape = SHAPES[rs.randint(len(SHAPES))]
    r = rs.uniform(7, 22)
    cx, cy = rs.uniform(r, SIZE - r, 2)
    return draw(bg, fg, shape, cx, cy, r, rs), caption(bg, fg, shape)


def batch(seed: int, start: int, count: int) -> tuple[np.ndarray, list[str]]:
    images, captions = zip(*(sample(seed, i) for i in range(start, start + count)))
    return np.stack(images), list(captions)


def classify(pixels: np.ndarray) -> np.ndarray:
    """Nearest palette colour (index into COLOURS) of each RGB pixel; pixels: (..., 3) uint8 or float."""
    flat = np.asarray(pixels, dtype=np.float32).reshape(-1, 3)
    d = ((flat[:, None, :] - _CENTRES[None, :, :]) ** 2).sum(-1)
    return d.argmin(1).reshape(np.asarray(pixels).shape[:-1])


def shares(pixels: np.ndarray) -> np.ndarray:
    """Fraction of pixels of each palette colour."""
    labels = classify(pixels).ravel()
    return np.bincount(labels, minlength=len(COLOURS)) / max(labels.size, 1)


def dominant(pixels: np.ndarray) -> str:
    return COLOURS[int(shares(pixels).argmax())]


def foreground_colour(image: np.ndarray, min_share: float = 0.03) -> str | None:
    """The dominant colour among pixels that are not of the background's colour (read from the border).

    None when fewer than `min_share` of the pixels differ from the background (no visible shape).
    """
    labels = classify(image)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    background = np.bincount(border, minlength=len(COLOURS)).argmax()
    fg = labels[labels != background]
    if fg.size < min_share * labels.size:
        return None
    return COLOURS[int(np.bincount(fg, minlength=len(COLOURS)).argmax())]
