"""Load: decode the input image and the change map (EXIF orientation, bit depth, alpha) with Pillow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffdiff_cli.errors import InputError

# Luminance weights (ITU-R BT.601, as Pillow's "L" conversion), applied in float so 16-bit detail survives.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass
class SourceImage:
    path: str
    image: Image.Image  # upright (EXIF orientation applied), original mode
    rgb: np.ndarray  # H x W x 3 uint8, what the model sees

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def open_image(path: str, what: str) -> Image.Image:
    """Open and fully decode an image file, or fail with one line naming it."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {path}: no such file")
    if p.is_dir():
        raise InputError(f"{what} {path}: is a folder, not an image file")
    try:
        with Image.open(p) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else f"cannot decode: {e}"
        raise InputError(f"{what} {path}: {reason}; give a PNG, JPEG, WebP or TIFF file") from None


def check_image_header(path: str, what: str) -> tuple[int, int]:
    """Cheap check (header only) that a file is an image; returns its stored size."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {path}: no such file" if not p.exists() else f"{what} {path}: is a folder, not an image file")
    try:
        with Image.open(p) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError(f"{what} {path}: not an image Pillow can read; give a PNG, JPEG, WebP or TIFF file") from None


def load_source(path: str) -> SourceImage:
    image = open_image(path, "image")
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit / float grayscale: bring to 8 bits by true depth (Pillow's own conversion clamps at 255)
        image = Image.fromarray(np.round(map_values(image) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # the model sees the colours; the alpha channel is carried through to the output untouched
        rgb = image.convert("RGBA").convert("RGB")
    else:
        rgb = image.convert("RGB")
    return SourceImage(path=path, image=image, rgb=np.asarray(rgb, dtype=np.uint8).copy())


def map_values(image: Image.Image) -> np.ndarray:
    """Grayscale values in [0, 1] as float32, scaled by the image's true bit depth."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image, dtype=np.float64) / 65535.0
    elif mode == "I":
        raw = np.asarray(image, dtype=np.float64)
        values = raw / (65535.0 if raw.max(initial=0) > 255 else 255.0)
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
    elif mode == "1":
        values = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    elif mode == "L":
        values = np.asarray(image, dtype=np.float64) / 255.0
    elif mode == "LA":
        values = np.asarray(image, dtype=np.float64)[..., 0] / 255.0
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        values = rgb @ _LUMA
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def load_map(path: str) -> np.ndarray:
    """The change map at its own size: white (1) = change fully, black (0) = keep exactly."""
    return map_values(open_image(path, "--map"))
