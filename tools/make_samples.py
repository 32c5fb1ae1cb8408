"""Regenerate demo/photo.png and the maps in sample_masks/ (deterministic; run from the repo root).

The demo photo is synthetic (a landscape drawn here), so it carries no third-party licence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 384, 256


def demo_photo() -> Image.Image:
    rs = np.random.RandomState(2023)
    y = np.linspace(0, 1, HEIGHT)[:, None, None]
    sky = (1 - y) * np.array([70, 130, 210]) + y * np.array([235, 200, 170])
    image = np.broadcast_to(sky, (HEIGHT, WIDTH, 3)).copy()
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((270, 40, 320, 90), fill=(255, 230, 150))  # sun
    x = np.arange(WIDTH)
    far = 150 + 18 * np.sin(x / 37.0) + 9 * np.sin(x / 13.0 + 1)
    near = 185 + 14 * np.sin(x / 53.0 + 2) + 6 * np.sin(x / 9.0)
    draw.polygon([(0, HEIGHT)] + [(int(i), int(v)) for i, v in zip(x, far)] + [(WIDTH, HEIGHT)], fill=(90, 110, 140))
    draw.polygon([(0, HEIGHT)] + [(int(i), int(v)) for i, v in zip(x, near)] + [(WIDTH, HEIGHT)], fill=(60, 120, 60))
    draw.rectangle((0, 225, WIDTH, HEIGHT), fill=(50, 90, 150))  # lake
    for _ in range(14):  # trees
        cx, base = rs.randint(10, WIDTH - 10), rs.randint(195, 222)
        draw.polygon([(cx, base - 28), (cx - 9, base), (cx + 9, base)], fill=(30, 80, 40))
    grain = rs.normal(0, 4, (HEIGHT, WIDTH, 3))
    photo = np.clip(np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float64) + grain, 0, 255)
    return Image.fromarray(photo.astype(np.uint8))


def save16(values: np.ndarray, name: str) -> None:
    """Maps are written as 16-bit grayscale PNG so gradients keep their precision."""
    Image.fromarray(np.round(np.clip(values, 0, 1) * 65535).astype(np.uint16)).save(ROOT / "sample_masks" / name)


def main() -> None:
    (ROOT / "sample_masks").mkdir(exist_ok=True)
    demo_photo().save(ROOT / "demo" / "photo.png")
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    save16(np.clip(1 - yy / (HEIGHT * 0.6), 0, 1), "sky-top-down.png")  # sky white, ground black
    save16(xx / (WIDTH - 1), "gradient-left-right.png")
    r = np.hypot((xx - WIDTH / 2) / (WIDTH / 2), (yy - HEIGHT / 2) / (HEIGHT / 2))
    save16(np.clip(1 - r, 0, 1), "radial-center.png")
    save16((xx < WIDTH / 2).astype(np.float64), "left-half.png")
    save16(np.floor(xx / WIDTH * 5) / 4, "bands-5.png")


if __name__ == "__main__":
    main()
