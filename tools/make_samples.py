"""Regenerate demo/photo.png, the maps in sample_masks/ and their README (deterministic; run from anywhere).

The demo photo is synthetic (a landscape drawn here), so it carries no third-party licence. Every sample
map is made by `diffdiff map ...` itself; the command lines are listed in sample_masks/README.md.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
MASKS = ROOT / "sample_masks"
WIDTH, HEIGHT = 384, 256
SIZE = f"{WIDTH}x{HEIGHT}"

# name -> (what it does, the diffdiff commands that make it; "{tmp}" is a scratch folder, "{out}" the file)
SAMPLES: dict[str, tuple[str, list[str]]] = {
    "gradient-left-right.png": ("keep the left edge, change more towards the right",
                                [f"map gradient --size {SIZE} --angle 0 -o {{out}}"]),
    "gradient-right-left.png": ("keep the right edge, change more towards the left",
                                [f"map gradient --size {SIZE} --angle 180 -o {{out}}"]),
    "gradient-bottom-up.png": ("keep the bottom, change more towards the top",
                               [f"map gradient --size {SIZE} --angle 90 -o {{out}}"]),
    "gradient-top-down.png": ("keep the top, change more towards the bottom",
                              [f"map gradient --size {SIZE} --angle 270 -o {{out}}"]),
    "sky-top-down.png": ("change the sky fully, fading out to keep the lower 40 % (the demo photo's ground)",
                         [f"map gradient --size {SIZE} --angle 90 -o {{tmp}}/ramp.png",
                          "map levels {tmp}/ramp.png --levels 0.4:1 -o {out}"]),
    "radial-center.png": ("change the middle most, fading to keep the edges",
                          [f"map radial --size {SIZE} --radius 192,128 --falloff linear -o {{out}}"]),
    "vignette.png": ("keep the middle, change more towards the corners",
                     [f"map radial --size {SIZE} --radius 230,153 --from 0 --to 1 -o {{out}}"]),
    "bands-5.png": ("five constant strengths, 0, 0.25, 0.5, 0.75, 1 from left to right: what each level does",
                    [f"map gradient --size {SIZE} --bands 5 -o {{out}}"]),
    "soft-ellipse.png": ("change an ellipse fully, with a soft edge; keep the rest",
                         [f"map radial --size {SIZE} --radius 150,100 --falloff linear -o {{tmp}}/cone.png",
                          "map levels {tmp}/cone.png --levels 0:0.4 -o {out}"]),
    "left-half.png": ("change the left half fully, keep the right half exactly (hard edge)",
                      [f"map gradient --size {SIZE} --bands 2 --from 1 --to 0 -o {{out}}"]),
    "left-half-feathered.png": ("the same with a 32 px soft edge reaching into the kept half (`map feather`)",
                                [f"map gradient --size {SIZE} --bands 2 --from 1 --to 0 -o {{tmp}}/half.png",
                                 "map feather {tmp}/half.png --radius 32 -o {out}"]),
}


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


def diffdiff(command: str) -> None:
    subprocess.run([sys.executable, "-m", "diffdiff_cli", *shlex.split(command)], check=True, cwd=ROOT, capture_output=True)


def readme() -> str:
    lines = [
        "# Sample change maps",
        "",
        f"White = change fully, black = keep exactly, grey = in between. All are {WIDTH}x{HEIGHT} 16-bit grayscale",
        "PNG (the size of `demo/photo.png`; `diffdiff edit` resizes a map to any image, with a notice). Each was",
        "made by the `diffdiff map` commands shown; `python tools/make_samples.py` regenerates them and this file.",
        "",
        "| map | file | what it does | made with |",
        "|---|---|---|---|",
    ]
    for name, (what, commands) in SAMPLES.items():
        shown = " ; ".join(f"`diffdiff {c.format(tmp='/tmp', out=name)}`" for c in commands)
        lines.append(f'| <img src="{name}" width="96" alt="{name}"> | `{name}` | {what} | {shown} |')
    lines += [
        "",
        "See what a map will do with a given number of steps before running an edit:",
        "`diffdiff map preview ../demo/photo.png bands-5.png --steps 20 -o preview.png`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    MASKS.mkdir(exist_ok=True)
    demo_photo().save(ROOT / "demo" / "photo.png")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, commands) in SAMPLES.items():
            for command in commands:
                diffdiff(command.format(tmp=tmp, out=MASKS / name))
    (MASKS / "README.md").write_text(readme())


if __name__ == "__main__":
    main()
