"""See what a map will do: the photo under a colour overlay of the strength each area will really get,
and a legend of the distinct strength levels the chosen steps give (from the plan; no weights needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffdiff_cli.dither import effective_strength, strength_levels

# Strength ramp for the overlay: blue (a little change) through green and yellow to red (full change).
_RAMP_AT = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_RGB = np.array([(40, 70, 200), (0, 170, 220), (60, 190, 80), (250, 200, 30), (230, 40, 30)], dtype=np.float64)
LEGEND_MIN_WIDTH = 360
_ROW = 16


def strength_colours(strength: np.ndarray) -> np.ndarray:
    """(..., 3) float RGB for strengths in [0, 1]."""
    s = np.clip(np.asarray(strength, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(s, _RAMP_AT, _RAMP_RGB[:, i]) for i in range(3)], axis=-1)


def upsample_cells(cells: np.ndarray, factor: int, size: tuple[int, int]) -> np.ndarray:
    """Latent cells back to image pixels (each cell covers factor x factor pixels), cropped to (width, height)."""
    width, height = size
    return np.repeat(np.repeat(cells, factor, axis=0), factor, axis=1)[:height, :width]


def overlay(photo_rgb: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Tint each pixel by its strength; pixels that keep (strength 0) show the photo untouched."""
    alpha = np.where(strength > 0, 0.35 + 0.4 * strength, 0.0)[..., None]
    blended = photo_rgb.astype(np.float64) * (1.0 - alpha) + strength_colours(strength) * alpha
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def label_font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def legend_rows(strength: np.ndarray, levels: np.ndarray) -> list[tuple[float, float]]:
    """(level, share of the pixels at that level) for every level the run can give, ascending."""
    total = max(strength.size, 1)
    return [(float(level), float(np.isclose(strength, level, atol=1e-6).sum()) / total) for level in levels]


def render_preview(photo_rgb: np.ndarray, strength: np.ndarray, levels: np.ndarray, title: str, box=None) -> Image.Image:
    """The overlaid photo above a legend: a swatch, the strength and the share of the image for each level.

    `box` (x0, y0, x1, y1), the working region, is outlined when it is not the whole photo.
    """
    height, width = photo_rgb.shape[:2]
    canvas_width = max(width, LEGEND_MIN_WIDTH)
    rows = legend_rows(strength, levels)
    per_column = 150
    columns = max(1, canvas_width // per_column)
    per_row = -(-len(rows) // columns)  # legend entries per column
    legend_height = 8 + _ROW + per_row * _ROW + 8
    canvas = Image.new("RGB", (canvas_width, height + legend_height), (255, 255, 255))
    canvas.paste(Image.fromarray(overlay(photo_rgb, strength)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if box is not None and tuple(box) != (0, 0, width, height):
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(255, 255, 255), width=max(1, min(width, height) // 256))
    font = label_font()
    top = height + 8
    draw.text((6, top), title, fill=(0, 0, 0), font=font)
    colours = strength_colours(np.array([level for level, _ in rows]))
    for i, ((level, share), colour) in enumerate(zip(rows, colours)):
        x = 6 + (i // per_row) * per_column
        y = top + _ROW + (i % per_row) * _ROW
        swatch = (255, 255, 255) if level == 0 else tuple(int(v) for v in colour)
        draw.rectangle((x, y + 2, x + 11, y + 13), fill=swatch, outline=(0, 0, 0))
        label = "keep" if level == 0 else f"{level:.3f}"
        draw.text((x + 16, y + 1), f"{label}  {share:6.1%}", fill=(0, 0, 0), font=font)
    return canvas


def preview_strength(
    change_latent: np.ndarray, thresholds, factor: int, region, size: tuple[int, int], rule: str = "entry"
) -> tuple[np.ndarray, np.ndarray]:
    """(strength at each pixel of the (width, height) image, the run's levels): what the engine's binary masks
    will give each area. The working region's cells are brought back onto its box; outside it nothing changes."""
    cells = effective_strength(change_latent, thresholds, rule)
    width, height = region.size
    local = upsample_cells(cells, factor, region.work_size)
    if region.resampled:  # nearest, so that every pixel shows one of the run's levels exactly
        local = np.asarray(Image.fromarray(local.astype(np.float32), mode="F").resize((width, height), Image.Resampling.NEAREST))
    strength = np.zeros((size[1], size[0]), dtype=np.float32)
    x0, y0, x1, y1 = region.box
    strength[y0:y1, x0:x1] = local[:height, :width]
    return strength, strength_levels(thresholds, rule)
