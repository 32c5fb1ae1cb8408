"""Map and picture files that diffdiff writes besides edits: 16-bit grayscale PNG maps, previews, fans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from diffdiff_cli import __version__
from diffdiff_cli.errors import InputError
from diffdiff_cli.write import check_output_path, output_format, write_image_atomically


def check_map_output(output: str, inputs: list[str]) -> None:
    if Path(output).suffix.lower() != ".png":
        raise InputError(f"-o {output}: maps are written as 16-bit PNG; give a .png file name")
    check_output_path(output, inputs)


def map_image(values: np.ndarray) -> Image.Image:
    """[0, 1] floats -> a 16-bit grayscale image (65,536 levels, so gradients keep their precision)."""
    return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 65535.0).astype(np.uint16))


def _pnginfo(record: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("diffdiff", json.dumps({**record, "diffdiff_version": __version__}, sort_keys=True))
    return info


def save_map(values: np.ndarray, path: str, record: dict) -> None:
    """Write a change map atomically as 16-bit PNG; `record` (how it was made) goes into its metadata."""
    write_image_atomically(map_image(values), path, "PNG", {"pnginfo": _pnginfo(record)})


def save_picture(image: Image.Image, path: str, record: dict) -> None:
    """Write a preview or fan atomically (.png with `record` as metadata, or .jpg / .webp)."""
    fmt = output_format(path)
    save_args = {"pnginfo": _pnginfo(record)} if fmt == "PNG" else {"quality": 95}
    write_image_atomically(image.convert("RGB"), path, fmt, save_args)
