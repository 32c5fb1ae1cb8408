"""Measure what the `demo` model does, with image statistics (nearest-palette colour classification).

    python training/check.py                    # the full check (make demo-check); exit 1 if a threshold fails
    python training/check.py --model ./folder   # another diffusers folder of the same kind

Settings: 20 steps of the model's own scheduler, guidance 3 (--guidance, --steps change them).

1. text to image: for each colour word, "a <colour> circle on a <other> background" with 10 seeds through
   diffusers' own StableDiffusionPipeline; a hit when the dominant colour of the foreground (pixels not of
   the background's colour, read from the border) is the colour named. Pass: >= 80 % hits per colour.
2. differential edit (diffdiff's own edit path): the demo photo (a yellow circle on the right of a blue
   background), map white on the left half, black on the right, prompt "a <new colour> background",
   negative prompt "a blue background" (the photo's own); a hit when the dominant colour of the left half
   is the new colour. Pass: >= 80 % of 10 seeds, and the right half bit-identical to the input in every
   seed.
3. gradient map (black left, white right) on the photo's background alone, same prompts: the share of the
   new colour per 8-pixel column band, averaged over the seeds. Pass: it rises (each band at least the one before, less 0.05, and the
   last at least 0.5 above the first). Reported, not counted: whether the black edge stays <= 0.2 and the
   white edge reaches >= 0.8 (a stricter proportionality).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import shapes  # noqa: E402

PASS_SHARE = 0.8
SEEDS = list(range(10))
STEPS = 20
GUIDANCE = 3.0  # a small model over-saturates at SD's usual 7.5
# background for each colour word's circle: a contrasting palette colour
T2I_BACKGROUND = {c: shapes.COLOURS[(i + 4) % len(shapes.COLOURS)] for i, c in enumerate(shapes.COLOURS)}
PHOTO = ("blue", "yellow")  # the demo photo: a yellow circle on the right of a blue background
EDIT_COLOURS = ["green", "red", "white"]  # new background colours named by the edit prompts


def demo_photo() -> np.ndarray:
    """The demo photo: a yellow circle on the right of a blue background (64 px, deterministic)."""
    bg, fg = PHOTO
    return shapes.draw(bg, fg, "circle", 48, 32, 11, np.random.RandomState(7))


def plain_photo() -> np.ndarray:
    """The gradient check's photo: the demo photo's blue background alone."""
    return shapes.draw(PHOTO[0], None, None, 0, 0, 0, np.random.RandomState(7))


def edit_prompt(colour: str) -> str:
    """What the free part should become: a background of the new colour."""
    return f"{shapes.article(colour)} background"


def edit_negative() -> str:
    """The negative prompt of the edits: the photo's own background colour (what should go)."""
    return f"{shapes.article(PHOTO[0])} background"


def maps() -> dict[str, np.ndarray]:
    size = shapes.SIZE
    left = np.zeros((size, size))
    left[:, : size // 2] = 1.0
    return {"left-half": left, "gradient": np.tile(np.linspace(0, 1, size), (size, 1))}


def write_inputs(folder: Path) -> dict[str, str]:
    """The demo photo and the two maps as files (what diffdiff reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"photo": str(folder / "demo-photo.png"), "plain": str(folder / "plain-photo.png")}
    Image.fromarray(demo_photo()).save(paths["photo"])
    Image.fromarray(plain_photo()).save(paths["plain"])
    for name, values in maps().items():
        paths[name] = str(folder / f"map-{name}.png")
        Image.fromarray(np.round(values * 255).astype(np.uint8)).save(paths[name])
    return paths


def load(model: str):
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    return load_model(resolve_model(model), offline=True)


def text_to_image(loaded, colour: str, seeds=SEEDS, steps=None, guidance=None) -> list[np.ndarray]:
    """Images for "a <colour> circle on a <bg> background", one per seed, from diffusers' own txt2img pipeline."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**loaded.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    prompt = f"{shapes.article(colour)} circle on {shapes.article(T2I_BACKGROUND[colour])} background"
    steps, guidance = steps or STEPS, GUIDANCE if guidance is None else guidance
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.inference_mode():
        out = pipe([prompt] * len(seeds), num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                   height=shapes.SIZE, width=shapes.SIZE, output_type="np")
    return [np.round(im * 255).astype(np.uint8) for im in out.images]


def edit(loaded, paths: dict, map_name: str, colour: str, seed: int, photo: str = "photo", steps=None,
         guidance=None) -> np.ndarray:
    """diffdiff's edit of a photo (in memory), as HxWx3 uint8."""
    from diffdiff_cli.edit import EditSettings, compute_edit

    steps, guidance = steps or STEPS, GUIDANCE if guidance is None else guidance
    settings = EditSettings(prompt=edit_prompt(colour), negative_prompt=edit_negative(), model=loaded.label, steps=steps, guidance=guidance,
                            seed=seed)
    return np.asarray(compute_edit(loaded, settings, paths[photo], paths[map_name]).image.convert("RGB"))


@dataclass
class Report:
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def add(self, name: str, value, passed: bool, detail: str = "", counted: bool = True) -> None:
        self.rows.append({"check": name, "value": value, "pass": passed, "counted": counted, "detail": detail})
        if counted and not passed:
            self.failures.append(name)
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        word = ("PASS" if passed else "FAIL") if counted else ("info" if passed else "INFO")
        print(f"{word}  {name:<40} {shown:>9}  {detail}", flush=True)


def check_text_to_image(loaded, report: Report, colours, seeds=SEEDS) -> None:
    for colour in colours:
        found = [shapes.foreground_colour(im) for im in text_to_image(loaded, colour, seeds)]
        share = sum(f == colour for f in found) / len(found)
        report.add(f"t2i {colour} circle", share, share >= PASS_SHARE, "foreground: " + ",".join(str(f) for f in found))


def left_right_stats(photo: np.ndarray, result: np.ndarray) -> tuple[str, bool]:
    half = shapes.SIZE // 2
    return shapes.dominant(result[:, :half]), bool(np.array_equal(result[:, half:], photo[:, half:]))


def check_left_half(loaded, paths, report: Report, colour: str, seeds=SEEDS) -> list[np.ndarray]:
    photo = np.asarray(Image.open(paths["photo"]).convert("RGB"))
    results = [edit(loaded, paths, "left-half", colour, s) for s in seeds]
    stats = [left_right_stats(photo, r) for r in results]
    share = sum(d == colour for d, _ in stats) / len(stats)
    report.add(f"edit left half -> {colour}", share, share >= PASS_SHARE, "left: " + ",".join(d for d, _ in stats))
    identical = sum(same for _, same in stats)
    report.add(f"edit right half bit-identical ({colour})", f"{identical}/{len(stats)}", identical == len(stats))
    return results


def rises(bands: np.ndarray) -> bool:
    """Each band at least the one before (less 0.05), and the last at least 0.5 above the first."""
    return bool(np.all(np.diff(bands) >= -0.05) and bands[-1] - bands[0] >= 0.5)


def band_shares(results: list[np.ndarray], colour: str, band: int = 8) -> np.ndarray:
    target = shapes.COLOURS.index(colour)
    per_column = np.mean([(shapes.classify(r) == target).mean(axis=0) for r in results], axis=0)
    return per_column.reshape(-1, band).mean(axis=1)


def check_gradient(loaded, paths, report: Report, colour: str, seeds=SEEDS) -> np.ndarray:
    results = [edit(loaded, paths, "gradient", colour, s, photo="plain") for s in seeds]
    bands = band_shares(results, colour)
    report.add(f"gradient: share of {colour} rises", float(bands[-1] - bands[0]), rises(bands),
               "bands: " + " ".join(f"{b:.2f}" for b in bands))
    # stricter, not part of the contract: the black edge stays (nearly) unchanged, the white edge
    # changes (nearly) fully
    report.add(f"gradient: {colour} edges (info)", f"{bands[0]:.2f}/{bands[-1]:.2f}", bool(bands[0] <= 0.2 and bands[-1] >= 0.8),
               "left band <= 0.2, right band >= 0.8", counted=False)
    return bands


def strip(images: list[np.ndarray], scale: int = 4, gap: int = 4) -> Image.Image:
    """Images side by side, enlarged (nearest) so 64 px pictures are visible."""
    big = [Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.Resampling.NEAREST) for im in images]
    width = sum(b.width for b in big) + gap * (len(big) - 1)
    canvas = Image.new("RGB", (width, big[0].height), (255, 255, 255))
    x = 0
    for b in big:
        canvas.paste(b.convert("RGB"), (x, 0))
        x += b.width + gap
    return canvas


def main(argv=None) -> int:
    global GUIDANCE, STEPS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--out", default="out/demo-check")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--guidance", type=float, default=GUIDANCE)
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args(argv)
    GUIDANCE, STEPS = args.guidance, args.steps
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    loaded = load(args.model)
    out = Path(args.out)
    paths = write_inputs(out)
    report = Report()
    print(f"model {args.model}: {len(SEEDS)} seeds, {STEPS} steps, guidance {GUIDANCE}", flush=True)
    check_text_to_image(loaded, report, shapes.COLOURS)
    photo = np.asarray(Image.open(paths["photo"]))
    for colour in EDIT_COLOURS:
        results = check_left_half(loaded, paths, report, colour)
        strip([photo, np.asarray(Image.open(paths["left-half"]).convert("RGB"))] + results[:4]).save(out / f"left-half-{colour}.png")
    for colour in EDIT_COLOURS:
        check_gradient(loaded, paths, report, colour)
    (out / "report.json").write_text(json.dumps({"model": args.model, "seeds": SEEDS, "steps": STEPS, "guidance": GUIDANCE,
                                                   "rows": report.rows}, indent=1) + "\n")
    counted = sum(r["counted"] for r in report.rows)
    print(f"{counted - len(report.failures)}/{counted} checks passed in "
          f"{time.monotonic() - started:.0f} s; report in {out / 'report.json'}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
