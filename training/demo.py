"""Inputs and the before / map / after strip of `make demo` (the edit itself runs through the diffdiff CLI).

    python training/demo.py inputs out   # out/demo-photo.png and out/demo-map.png
    python training/demo.py strip out    # out/demo-strip.png from those and out/demo.png

The map is white on the left (change fully), a ramp in the middle (fade) and black on the right (keep:
the photo's circle stays bit for bit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402
from check import demo_photo, strip  # noqa: E402


def demo_map() -> np.ndarray:
    size = shapes.SIZE
    columns = np.clip((36 - (np.arange(size) + 0.5)) / 22, 0, 1)
    return np.tile(columns, (size, 1))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("inputs", "strip"):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if argv[0] == "inputs":
        Image.fromarray(demo_photo()).save(out / "demo-photo.png")
        Image.fromarray(np.round(demo_map() * 255).astype(np.uint8)).save(out / "demo-map.png")
    else:
        images = [np.asarray(Image.open(out / name).convert("RGB")) for name in ("demo-photo.png", "demo-map.png", "demo.png")]
        strip(images).save(out / "demo-strip.png")
        print(f"demo: wrote {out / 'demo-strip.png'} (before | map | after)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
