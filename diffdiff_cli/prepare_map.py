"""Prepare the map: fit it to the image, shape it, cut image and map to the working region and bring them
to the working size (or pad to the model's multiple), resample the map to the latent grid.

Shaping runs in a fixed order (invert, levels, gamma, min/max, grow, blur) at the image's own pixel size,
so PX values are image pixels, and before the working region is chosen (grow and blur widen the support). Dithering needs the plan's thresholds and so runs after planning
(`dither_prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from diffdiff_cli import maps
from diffdiff_cli.dither import dither
from diffdiff_cli.errors import InputError


@dataclass
class PreparedMap:
    pixels: np.ndarray  # change in [0, 1] at the padded working size (H, W), float32
    latent: np.ndarray  # the same on the latent grid (H / factor, W / factor): the engine's mask source
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MapShaping:
    """The map-shaping flags of `edit`, `plan` and `map preview`, in the order they apply."""

    invert: bool = False
    levels: tuple[float, float] = (0.0, 1.0)
    gamma: float = 1.0
    minimum: float = 0.0
    maximum: float = 1.0
    grow: float = 0.0
    blur: float = 0.0

    @classmethod
    def from_settings(cls, settings) -> "MapShaping":
        """From an object with EditSettings' map fields (invert_map, map_levels "LOW:HIGH", map_gamma, ...)."""
        levels = getattr(settings, "map_levels", None)
        return cls(
            invert=bool(getattr(settings, "invert_map", False)),
            levels=(0.0, 1.0) if levels is None else parse_levels(levels),
            gamma=getattr(settings, "map_gamma", 1.0),
            minimum=getattr(settings, "map_min", 0.0),
            maximum=getattr(settings, "map_max", 1.0),
            grow=getattr(settings, "map_grow", 0.0),
            blur=getattr(settings, "map_blur", 0.0),
        )

    def validate(self) -> None:
        low, high = self.levels
        if not 0.0 <= low < high <= 1.0:
            raise InputError(f"--map-levels {low:g}:{high:g}: need 0 <= LOW < HIGH <= 1, e.g. 0.2:0.8")
        if not self.gamma > 0:
            raise InputError(f"--map-gamma {self.gamma:g}: must be above 0 (1 = unchanged, 2 lifts greys, 0.5 lowers them)")
        for flag, value in (("--map-min", self.minimum), ("--map-max", self.maximum)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{flag} {value:g}: must be in [0, 1]")
        if self.minimum > self.maximum:
            raise InputError(f"--map-min {self.minimum:g} is above --map-max {self.maximum:g}; lower --map-min")
        for flag, value in (("--map-grow", self.grow), ("--map-blur", self.blur)):
            if not 0.0 <= value <= 4096:
                raise InputError(f"{flag} {value:g}: must be 0 or more pixels (at most 4096)")


def parse_levels(text: str, flag: str = "--map-levels") -> tuple[float, float]:
    """'LOW:HIGH' -> (low, high), both in [0, 1] with low < high."""
    parts = str(text).split(":")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"{flag} {text}: expected LOW:HIGH with numbers in [0, 1], e.g. 0.2:0.8") from None
    if not 0.0 <= low < high <= 1.0:
        raise InputError(f"{flag} {text}: need 0 <= LOW < HIGH <= 1, e.g. 0.2:0.8")
    return low, high


def shape_map(change: np.ndarray, shaping: MapShaping) -> np.ndarray:
    """Apply the shaping steps in their documented order; an all-default shaping returns the map unchanged."""
    out = np.asarray(change, dtype=np.float32)
    if shaping.invert:
        out = maps.invert(out)
    if shaping.levels != (0.0, 1.0):
        out = maps.levels(out, *shaping.levels)
    if shaping.gamma != 1.0:
        out = maps.gamma(out, shaping.gamma)
    if (shaping.minimum, shaping.maximum) != (0.0, 1.0):
        out = maps.clamp_change(out, shaping.minimum, shaping.maximum)
    if shaping.grow > 0:
        out = maps.grow(out, shaping.grow)
    if shaping.blur > 0:
        out = maps.blur(out, shaping.blur)
    return out


def padding_for(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Extra columns and rows that bring (width, height) up to a multiple of `multiple`."""
    width, height = size
    return (-width) % multiple, (-height) % multiple


def pad_image(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad an H x W x C image on the right and bottom; cropped off again after decoding."""
    pad_w, pad_h = padding_for((rgb.shape[1], rgb.shape[0]), multiple)
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def fit_to_size(change: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a map to (width, height): antialiased when shrinking, bilinear when growing."""
    resized = Image.fromarray(change.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def to_latent_grid(change: np.ndarray, factor: int) -> np.ndarray:
    """Area average over each factor x factor block: the mean of every latent cell is preserved, no aliasing."""
    h, w = change.shape
    blocks = change.reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def size_mismatch(map_size: tuple[int, int], image_size: tuple[int, int], map_label: str) -> str:
    (mw, mh), (iw, ih) = map_size, image_size
    text = f"{map_label} is {mw}x{mh}, the image {iw}x{ih}"
    if (mw, mh) == (ih, iw):
        text += " (one of them turned by EXIF orientation?)"
    return text


def shaped_map(
    raw: np.ndarray, image_size: tuple[int, int], shaping: MapShaping, strict_size: bool = False, map_label: str = "map"
) -> tuple[np.ndarray, list[str]]:
    """The map at the image's full pixel size, shaped; and the notices (a map of another size is fitted to
    the image, or refused with `strict_size`)."""
    notices = []
    change = np.asarray(raw, dtype=np.float32)
    if (change.shape[1], change.shape[0]) != tuple(image_size):
        mismatch = size_mismatch((change.shape[1], change.shape[0]), image_size, map_label)
        if strict_size:
            raise InputError(f"{mismatch}; give a map of the image's size or drop --strict-size")
        notices.append(f"{mismatch}: map resized to the image")
        change = fit_to_size(change, image_size)
    return shape_map(change, shaping), notices


def prepare_map(
    raw: np.ndarray,
    image_size: tuple[int, int],
    factor: int,
    *,
    multiple: int | None = None,
    invert: bool = False,
    shaping: MapShaping | None = None,
    strict_size: bool = False,
    map_label: str = "map",
) -> PreparedMap:
    """The whole image's map, padded: `factor` is pixels per latent cell, `multiple` what the image is
    padded to (factor x patch, default factor).

    `shaping` replaces `invert` when given. A map of another size is fitted to the image (a notice), or
    refused with `strict_size`.
    """
    shaping = shaping if shaping is not None else MapShaping(invert=invert)
    change, notices = shaped_map(raw, image_size, shaping, strict_size, map_label)
    pad_w, pad_h = padding_for(image_size, multiple or factor)
    pixels = np.pad(change, ((0, pad_h), (0, pad_w)), mode="edge").astype(np.float32)
    return PreparedMap(pixels=pixels, latent=to_latent_grid(pixels, factor), notices=notices)


# --- the working region (diffdiff_cli/fit.py plans it): the same crop and resize for image and map -------


def support_box(change: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels the map changes (x1, y1 exclusive); None if it changes none."""
    columns = np.flatnonzero(change.max(axis=0) > 0)
    if columns.size == 0:
        return None
    rows = np.flatnonzero(change.max(axis=1) > 0)
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def changes_nothing(raw: np.ndarray, shaping: MapShaping) -> bool:
    """True when the shaped map is 0 everywhere (the edit would return its input).

    Resizing, growing and blurring cannot make an all-zero map non-zero, so the pointwise steps decide,
    at the map's own size.
    """
    return not bool((shape_map(raw, replace(shaping, grow=0.0, blur=0.0)) > 0).any())


def _shrinks(size: tuple[int, int], target: tuple[int, int]) -> bool:
    return target[0] <= size[0] and target[1] <= size[1]


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 to (width, height): area average when shrinking, Lanczos when enlarging."""
    source = (rgb.shape[1], rgb.shape[0])
    resample = Image.Resampling.BOX if _shrinks(source, size) else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, resample), dtype=np.uint8)


def resize_change(change: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map to (width, height) with the image's geometry: area average when shrinking, bilinear when
    enlarging (no overshoot: values stay in [0, 1] and areas of 0 stay 0)."""
    source = (change.shape[1], change.shape[0])
    resample = Image.Resampling.BOX if _shrinks(source, size) else Image.Resampling.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(change, dtype=np.float32), mode="F").resize(size, resample)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def fit_image(rgb: np.ndarray, region) -> np.ndarray:
    """The region of the image at the working size: padded when only the multiple is missing, else resized."""
    x0, y0, x1, y1 = region.box
    crop = rgb[y0:y1, x0:x1]
    if not region.resampled:
        return pad_image(crop, region.multiple)
    return resize_rgb(crop, region.work_size)


def fit_map(change: np.ndarray, region, factor: int, notices: list[str] | None = None) -> PreparedMap:
    """The full-size shaped map cut to the region and brought to the working size, and its latent grid."""
    x0, y0, x1, y1 = region.box
    crop = change[y0:y1, x0:x1]
    if region.resampled:
        pixels = resize_change(crop, region.work_size)
    else:
        pad_w, pad_h = padding_for(region.size, region.multiple)
        pixels = np.pad(crop, ((0, pad_h), (0, pad_w)), mode="edge").astype(np.float32)
    return PreparedMap(pixels=pixels, latent=to_latent_grid(pixels, factor), notices=list(notices or []))


def dither_prepared(prepared: PreparedMap, thresholds, rule: str = "entry") -> PreparedMap:
    """The same map with its latent grid dithered against these thresholds (pixels, for paste-back, unchanged)."""
    return replace(prepared, latent=dither(prepared.latent, thresholds, rule))
