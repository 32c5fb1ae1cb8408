"""Load: decode the input image and the change map (EXIF orientation, bit depth, alpha) with Pillow."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffdiff_cli.errors import InputError

# Pillow's own guard against decompression bombs: it refuses images above twice MAX_IMAGE_PIXELS (about
# 179 megapixels). diffdiff keeps that limit as the default of --max-pixels and checks it itself, so that
# the refusal is one line naming the file and its size (exit 2). 0 = no limit.
DEFAULT_MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
_limit = {"pixels": DEFAULT_MAX_PIXELS}
_pillow_limit = threading.Lock()
# Modes that PNG and WebP cannot write: converted to RGB when the image is read, so an edit never fails at the end.
_CONVERT_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV")


def set_max_pixels(pixels: int) -> None:
    """--max-pixels N: the largest image (width x height) diffdiff opens; 0 turns the guard off."""
    if pixels < 0:
        raise InputError(f"--max-pixels {pixels}: must be 0 (no limit) or more")
    _limit["pixels"] = pixels


def _open_lazily(p: Path, what: str, label: str):
    """Image.open (header only), with diffdiff's decompression-bomb check in place of Pillow's."""
    with _pillow_limit:  # validation opens files on several threads; Pillow's limit is one global
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own check below names the file, its size and the flag
        try:
            im = Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = im.size
    limit = _limit["pixels"]
    if limit and width * height > limit:
        im.close()
        raise InputError(
            f"{what} {label}: {width}x{height} is {width * height:,} pixels, more than --max-pixels {limit:,} "
            f"(a guard against decompression bombs); if you trust the file, pass --max-pixels {width * height}"
        )
    return im


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


def _exists(p: Path, what: str, label: str) -> None:
    if not p.exists():
        raise InputError(f"{what} {label}: no such file")
    if p.is_dir():
        raise InputError(f"{what} {label}: is a folder, not an image file")


def _unreadable(e: Exception, what: str, label: str) -> InputError:
    reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else f"cannot decode: {e}"
    return InputError(f"{what} {label}: {reason}; give a PNG, JPEG, WebP or TIFF file")


_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def open_image(path: str, what: str, label: str | None = None) -> Image.Image:
    """Open and fully decode an image file, or fail with one line naming it (`label`: the name to show,
    e.g. "-" for standard input, whose bytes lie in a temporary file)."""
    p, label = Path(path), label or path
    _exists(p, what, label)
    try:
        with _open_lazily(p, what, label) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS as e:
        raise _unreadable(e, what, label) from None


def decode_check(path: str, what: str, label: str | None = None) -> tuple[int, int]:
    """Decode every byte of an image's pixel data (a truncated or corrupt file fails here, named), as cheaply
    as Pillow allows: JPEGs at 1/8 scale (`draft`: the entropy-coded data is still read to the end).
    Returns the upright (EXIF-oriented) size."""
    p, label = Path(path), label or path
    _exists(p, what, label)
    try:
        with _open_lazily(p, what, label) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112)
            if im.format == "JPEG":
                im.draft(im.mode if im.mode in ("RGB", "L") else None, (max(width // 8, 1), max(height // 8, 1)))
            im.load()
    except _DECODE_ERRORS as e:
        raise _unreadable(e, what, label) from None
    return (height, width) if orientation in _TRANSPOSING else (width, height)


def check_image_header(path: str, what: str, label: str | None = None) -> tuple[int, int]:
    """Cheap check (header only) that a file is an image; returns its stored size."""
    p, label = Path(path), label or path
    _exists(p, what, label)
    try:
        with _open_lazily(p, what, label) as im:
            return im.size
    except _DECODE_ERRORS:
        raise InputError(f"{what} {label}: not an image Pillow can read; give a PNG, JPEG, WebP or TIFF file") from None


_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def upright_size(path: str, what: str) -> tuple[int, int]:
    """(width, height) as shown, EXIF orientation applied, from the header alone (no pixels decoded)."""
    check_image_header(path, what)
    with _open_lazily(Path(path), what, path) as im:
        width, height = im.size
        orientation = im.getexif().get(0x0112)
    return (height, width) if orientation in _TRANSPOSING else (width, height)


def load_source(path: str, label: str | None = None) -> SourceImage:
    image = open_image(path, "image", label)
    if image.mode in _CONVERT_TO_RGB:
        image = image.convert("RGB")  # a CMYK JPEG: the output is RGB (PNG and WebP hold no CMYK)
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit / float grayscale: bring to 8 bits by true depth (Pillow's own conversion clamps at 255)
        image = Image.fromarray(np.round(map_values(image, what=f"image {label or path}") * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # the model sees the colours; the alpha channel is carried through to the output untouched
        rgb = image.convert("RGBA").convert("RGB")
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # a 12 MP photo: no needless copy
    return SourceImage(path=path, image=image, rgb=np.asarray(rgb, dtype=np.uint8).copy())


MAP_CHANNELS = ("luma", "alpha", "red", "green", "blue")
_HAS_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _float_values(image: Image.Image, what: str) -> np.ndarray:
    """Grayscale as float64 in [0, 1], scaled by the true bit depth (Pillow's own conversion clamps 16-bit)."""
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "I":  # 32-bit integers: 16-bit data in practice, full 32-bit range if the values say so
        raw = np.asarray(image, dtype=np.float64)
        return raw / (4294967295.0 if raw.max(initial=0) > 65535 else 65535.0)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InputError(f"{what}: a float image holds {bad} NaN or infinite value(s); fix them, or save the map as an 8- or 16-bit image")
        if values.min(initial=0) < -1e-3 or values.max(initial=0) > 1 + 1e-3:
            raise InputError(
                f"{what}: a float image must hold values in 0..1 (found {np.nanmin(values):g}..{np.nanmax(values):g}); "
                f"rescale it, or save it as an 8- or 16-bit image"
            )
        return values
    if mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"), dtype=np.float64) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ _LUMA


def _grey_float32(image: Image.Image) -> np.ndarray | None:
    """8- and 16-bit grey maps straight to float32, without the float64 copies a 12 MP map would cost.

    The values equal the float64 path's bit for bit (v / 255 and v / 65535 are correctly rounded either
    way, checked for every value). None for other modes.
    """
    if image.mode in ("1", "L"):
        scale = 255.0
        values = np.asarray(image.convert("L") if image.mode == "1" else image, dtype=np.float32)
    elif image.mode.startswith("I;16"):
        scale = 65535.0
        values = np.asarray(image, dtype=np.float32)
    else:
        return None
    values = values.copy() if not values.flags.writeable else values
    values /= np.float32(scale)
    return values


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _HAS_ALPHA or (image.mode == "P" and "transparency" in image.info)


def map_values(image: Image.Image, channel: str = "luma", what: str = "--map") -> np.ndarray:
    """Change values in [0, 1] as float32, from the channel asked for.

    luma: the grey level (colour maps by BT.601 luminance, palettes by their colours, alpha ignored).
    alpha: transparent = change, opaque = keep, as cut-outs and image-edit APIs read a mask.
    red / green / blue: one colour channel.
    """
    if channel not in MAP_CHANNELS:
        raise InputError(f"--map-channel {channel}: choose one of: {', '.join(MAP_CHANNELS)}")
    if channel == "luma":
        grey = _grey_float32(image)
        if grey is not None:
            return grey
        values = _float_values(image, what)
    elif channel == "alpha":
        if not _has_alpha(image):
            raise InputError(f"{what}: --map-channel alpha but the map ({image.mode}) has no alpha channel; use --map-channel luma")
        values = 1.0 - np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float64) / 255.0
    else:
        if image.mode.startswith("I") or image.mode == "F":
            values = _float_values(image, what)  # a grey image: every colour channel is the grey
        else:
            values = np.asarray(image.convert("RGB").getchannel(channel[0].upper()), dtype=np.float64) / 255.0
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def load_map(source, channel: str = "luma", label: str | None = None) -> np.ndarray:
    """The change map at its own size: white (1) = change fully, black (0) = keep exactly.

    `source` is a file path, or an array of change values already in memory (used as it is).
    """
    if isinstance(source, np.ndarray):
        return np.clip(source, 0.0, 1.0).astype(np.float32)
    label = label or source
    return map_values(open_image(source, "--map", label), channel, f"--map {label}")
