"""Finish: decoded tensor -> checked 8-bit pixels, back to the region's size, original pixels pasted back
through the full-resolution map, the input's mode, stitched into the full-size original."""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffdiff_cli.errors import RunError

DEFAULT_PASTE_FEATHER = 0.1


def to_uint8(decoded) -> np.ndarray:
    """(1, 3, H, W) tensor in [-1, 1] -> H x W x 3 uint8, rounding as diffusers' image processor does.

    Fails loudly on NaN or Inf rather than writing a black picture.
    """
    import torch

    if not bool(torch.isfinite(decoded).all()):
        raise RunError(
            "the decoded image contains NaN or Inf values (often an fp16 VAE overflow); "
            "nothing was written: try --dtype fp32 or another seed"
        )
    image = (decoded[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (image * 255).round().astype(np.uint8)


def paste_weights(change: np.ndarray, feather: float) -> np.ndarray:
    """Share of the generated pixel in the output: 0 where the map is 0, rising to 1 at change >= feather.

    The VAE round trip alters every pixel a little; this keeps untouched areas bit-identical and fades
    that drift out where the map asks for only a little change.
    """
    if feather <= 0:
        return (change > 0).astype(np.float32)
    return np.clip(change / feather, 0.0, 1.0).astype(np.float32)


def paste_back(original: np.ndarray, generated: np.ndarray, change: np.ndarray, feather: float) -> np.ndarray:
    weights = paste_weights(change, feather)[..., None]
    blended = original.astype(np.float32) + weights * (generated.astype(np.float32) - original.astype(np.float32))
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return np.where(weights == 0, original, out)


def restore_mode(rgb: np.ndarray, source: Image.Image, untouched: np.ndarray | None) -> Image.Image:
    """The result in the input's own mode; the input's alpha is carried over unchanged.

    `untouched` (H x W bool) marks pixels that must equal the input exactly (map 0 under paste-back).
    16-bit and float inputs come back as 8-bit RGB.
    """
    mode = source.mode
    result = Image.fromarray(rgb)
    if mode == "P":
        out = result.quantize(palette=source, dither=Image.Dither.NONE)
        if "transparency" in source.info:
            out.info["transparency"] = source.info["transparency"]
    elif mode in ("RGBA", "LA", "PA"):
        out = result.convert("RGBA")
        out.putalpha(source.getchannel("A"))
        out = out.convert("LA") if mode == "LA" else out
    elif mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        out = result.convert(mode)
    else:
        out = result
    if untouched is not None and untouched.any():
        original = source if source.mode == out.mode else source.convert(out.mode)
        out.paste(original, (0, 0), Image.fromarray(untouched.astype(np.uint8) * 255))
    return out


def stitch_back(source, region, generated: np.ndarray, change: np.ndarray, paste: bool, feather: float) -> Image.Image:
    """The output at the input's size and mode: the generated working image brought back to the region's
    pixel size and composited into the full-resolution original through the full-resolution map.

    `source` is the loaded input (load.SourceImage), `generated` the decoded working image (H x W x 3
    uint8), `change` the shaped map at the image's size. Pixels outside the region are the input's own;
    with `paste`, so are the pixels inside it where the map is 0.
    """
    from diffdiff_cli.prepare_map import resize_rgb

    x0, y0, x1, y1 = region.box
    width, height = region.size
    new = resize_rgb(generated, (width, height)) if region.resampled else generated[:height, :width]
    if paste:
        local_change = change[y0:y1, x0:x1]
        rgb = paste_back(source.rgb[y0:y1, x0:x1], new, local_change, feather)
        untouched = local_change == 0
    else:
        rgb, untouched = new, None
    if region.box == (0, 0, *source.image.size):
        return restore_mode(rgb, source.image, untouched)
    out = source.image.copy()
    out.paste(restore_mode(rgb, source.image.crop(region.box), untouched), (x0, y0))
    return out
