"""Prepare the map: invert, fit it to the image, pad to the model's multiple, resample to the latent grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class PreparedMap:
    pixels: np.ndarray  # change in [0, 1] at the padded working size (H, W), float32
    latent: np.ndarray  # the same on the latent grid (H / factor, W / factor): the engine's mask source
    notices: list[str] = field(default_factory=list)


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


def prepare_map(raw: np.ndarray, image_size: tuple[int, int], factor: int, *, invert: bool = False, map_label: str = "map") -> PreparedMap:
    notices = []
    change = 1.0 - raw if invert else raw
    if (change.shape[1], change.shape[0]) != image_size:
        notices.append(
            f"{map_label} is {change.shape[1]}x{change.shape[0]}, the image {image_size[0]}x{image_size[1]}: "
            f"map resized to the image"
        )
        change = fit_to_size(change, image_size)
    pad_w, pad_h = padding_for(image_size, factor)
    pixels = np.pad(change, ((0, pad_h), (0, pad_w)), mode="edge").astype(np.float32)
    return PreparedMap(pixels=pixels, latent=to_latent_grid(pixels, factor), notices=notices)
