"""The Strength Fan (Levin & Fried, Fig. "strength fan"): one edit at a row of uniform map values, in a grid.

Each cell is the same edit (same prompt, seed, steps) with the whole map set to one value, so the grid
shows what each grey level of a map will do to this image; an optional last cell uses a real map. The
model is loaded once by the caller and passed in.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from diffdiff_cli.errors import InputError

DEFAULT_STRENGTHS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0"
_LABEL_HEIGHT = 18
_GAP = 4


def parse_strengths(text: str) -> list[float]:
    """'0.1,0.5,1' -> [0.1, 0.5, 1.0]; each in (0, 1]."""
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--strengths {text}: expected numbers separated by commas, e.g. 0.25,0.5,0.75,1") from None
    if not values:
        raise InputError(f"--strengths {text!r}: give at least one value, e.g. 0.25,0.5,0.75,1")
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise InputError(f"--strengths {text}: {bad[0]:g} is outside (0, 1]")
    return values


def _label(strength: float) -> str:
    text = f"{strength:g}"
    return text if "." in text else f"{strength:.1f}"


def fan_cells(model, settings, image_path: str, strengths: list[float], map_path: str | None = None, reporter=None):
    """(seed, [(label, RGB image)]) for each strength and the map, if given; every cell with the same seed."""
    from diffdiff_cli.edit import compute_edit, new_seed
    from diffdiff_cli.load import load_source
    from diffdiff_cli.progress import Reporter

    reporter = reporter or Reporter(quiet=True)
    settings = replace(settings, seed=new_seed() if settings.seed is None else settings.seed)
    width, height = load_source(image_path).size
    jobs = [(_label(s), np.full((height, width), s, dtype=np.float32)) for s in strengths]
    if map_path is not None:
        jobs.append(("map", map_path))
    cells = []
    for i, (label, change) in enumerate(jobs, 1):
        reporter.notice(f"fan: cell {i}/{len(jobs)} ({'map ' + map_path if label == 'map' else 'uniform ' + label})")
        # per-step progress only for the map cell: uniform cells have nothing to report but their time
        result = compute_edit(model, settings, image_path, change, reporter if label == "map" else Reporter(quiet=True))
        cells.append((label, result.image.convert("RGB")))
    return settings.seed, cells


def grid(cells: list[tuple[str, Image.Image]], columns: int) -> Image.Image:
    """Cells left to right, top to bottom, each under its label."""
    from diffdiff_cli.preview import label_font

    width, height = cells[0][1].size
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    cell_w, cell_h = width + _GAP, height + _LABEL_HEIGHT + _GAP
    canvas = Image.new("RGB", (columns * cell_w + _GAP, rows * cell_h + _GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    for i, (label, image) in enumerate(cells):
        x = _GAP + (i % columns) * cell_w
        y = _GAP + (i // columns) * cell_h
        draw.text((x + 2, y + 2), label, fill=(0, 0, 0), font=font)
        canvas.paste(image, (x, y + _LABEL_HEIGHT))
    return canvas
