"""Fit: which part of the image the model works on, and at what size, as pure functions of numbers.

`--fit auto` (the default) works on the bounding box of the pixels the map changes, grown by some
context, scaled so that its area is the model's native area (512² for SD 1.x, 1024² for SDXL ...), its
sides on the model's pixel multiple: a 12 MP photo is not run at 12 MP, and a small web image is not run
far below the size the model was trained at. The result is stitched back into the full-size original
(finish.stitch_back). `--fit full` runs the whole image at its own size (padded up to the multiple).
`--work-size WxH` forces the size in either mode. No numpy here: the map's support box comes in as numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffdiff_cli.errors import InputError

FIT_MODES = ("auto", "full")
# Default context: a quarter of the support's longer side on every side, so the changed area fills about
# two thirds of the model's frame whatever the photo's resolution (a fixed padding is a sliver at 12 MP and
# most of the frame on a web image); at least 32 px, the "only masked" padding A1111 uses.
CONTEXT_SHARE = 0.25
CONTEXT_FLOOR = 32
MAX_CONTEXT = 16384
# Where the image allows, the region is at least native / MAX_UPSCALE on a side (a speck of a map is not
# magnified beyond 4x, so the model sees recognisable surroundings) and at most MAX_ASPECT elongated (a
# thin strip becomes a frame the model was trained on; SDXL's buckets end near 4:1).
MAX_UPSCALE = 4
MAX_ASPECT = 4
OVERSIZE = 2.0  # --fit full warns when the image's area is more than this many native areas
MAX_WORK_SIDE = 16384

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels; x1 and y1 exclusive


@dataclass(frozen=True)
class Region:
    """The working region of one edit: a box of the image and the size the model runs it at."""

    box: Box
    work_size: tuple[int, int]  # (W, H) the model sees: multiples of `multiple`
    native_size: tuple[int, int]  # the model's own resolution, what "native area" means for it
    fit: str
    multiple: int

    @property
    def size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return x1 - x0, y1 - y0

    @property
    def resampled(self) -> bool:
        """False when the box only needs padding up to the multiple (no resampling: exact pixels)."""
        return self.work_size != padded_size(self.size, self.multiple)

    def to_json(self) -> dict:
        return {"fit": self.fit, "region": list(self.box), "work_size": list(self.work_size), "native_size": list(self.native_size)}

    def describe(self) -> str:
        x0, y0, x1, y1 = self.box
        w, h = self.size
        return f"region {x0},{y0},{x1},{y1} ({w}x{h}) at {self.work_size[0]}x{self.work_size[1]}"


def padded_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    return tuple(-(-side // multiple) * multiple for side in size)


def auto_context(support: Box) -> int:
    x0, y0, x1, y1 = support
    return max(CONTEXT_FLOOR, round(CONTEXT_SHARE * max(x1 - x0, y1 - y0)))


def widen(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """The span [lo, hi) widened to `length` about its centre (never narrowed), kept inside [0, limit)."""
    length = min(max(length, hi - lo), limit)
    start = min(max((lo + hi - length) // 2, 0), limit - length)
    return start, start + length


def working_box(support: Box, image_size: tuple[int, int], context: int, min_side: int) -> Box:
    """The support grown by `context` on every side, then to `min_side` and MAX_ASPECT, clipped to the image."""
    width, height = image_size
    x0, y0, x1, y1 = support
    x0, y0, x1, y1 = max(0, x0 - context), max(0, y0 - context), min(width, x1 + context), min(height, y1 + context)
    x0, x1 = widen(x0, x1, min_side, width)
    y0, y1 = widen(y0, y1, min_side, height)
    w, h = x1 - x0, y1 - y0
    if w > MAX_ASPECT * h:
        y0, y1 = widen(y0, y1, math.ceil(w / MAX_ASPECT), height)
    elif h > MAX_ASPECT * w:
        x0, x1 = widen(x0, x1, math.ceil(h / MAX_ASPECT), width)
    return x0, y0, x1, y1


def native_work_size(size: tuple[int, int], native_area: int, multiple: int) -> tuple[int, int]:
    """`size` scaled (aspect kept) to about `native_area`, each side rounded to the nearest multiple."""
    scale = math.sqrt(native_area / (size[0] * size[1]))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in size)


def round_work_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    return tuple(max(multiple, round(side / multiple) * multiple) for side in size)


def plan_region(
    support: Box | None,
    image_size: tuple[int, int],
    native_side: int,
    multiple: int,
    fit: str = "auto",
    context: int | None = None,
    work_size: tuple[int, int] | None = None,
) -> Region:
    """The region and working size of an edit. `support` is the box of map > 0 (None: nothing changes,
    and the whole image is taken); `work_size` forces the size (rounded to the multiple)."""
    if fit not in FIT_MODES:
        raise InputError(f"--fit {fit}: choose one of: {', '.join(FIT_MODES)}")
    width, height = image_size
    if fit == "full" or support is None:
        box = (0, 0, width, height)
    else:
        chosen = auto_context(support) if context is None else context
        box = working_box(support, image_size, chosen, math.ceil(native_side / MAX_UPSCALE))
    size = (box[2] - box[0], box[3] - box[1])
    if work_size is not None:
        target = round_work_size(work_size, multiple)
    elif fit == "full":
        target = padded_size(size, multiple)
    else:
        target = native_work_size(size, native_side * native_side, multiple)
    return Region(box, target, (native_side, native_side), fit, multiple)


def oversize_warning(region: Region, forced: bool) -> str | None:
    """A warning for `--fit full` far above the model's native area (slow, memory-hungry, repeated subjects)."""
    native_area = region.native_size[0] * region.native_size[1]
    area = region.work_size[0] * region.work_size[1]
    if region.fit != "full" or forced or area <= OVERSIZE * native_area:
        return None
    w, h = region.work_size
    return (
        f"--fit full runs the model at {w}x{h}, {area / native_area:.1f}x its native area "
        f"({region.native_size[0]}x{region.native_size[1]}): slow, memory-hungry and prone to repeated subjects; "
        f"--fit auto works on the map's region at the native size"
    )


def parse_work_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H) in whole pixels; None stays None."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(1 <= v <= MAX_WORK_SIDE for v in values):
        raise InputError(f"--work-size {text}: expected WIDTHxHEIGHT in pixels (1 .. {MAX_WORK_SIDE}), e.g. 1024x768")
    return values


def check_fit_settings(fit: str, context: int | None, work_size: str | None) -> None:
    if fit not in FIT_MODES:
        raise InputError(f"--fit {fit}: choose one of: {', '.join(FIT_MODES)}")
    if context is not None and not 0 <= context <= MAX_CONTEXT:
        raise InputError(f"--context {context}: must be 0 .. {MAX_CONTEXT} pixels (leave it out for the automatic amount)")
    parse_work_size(work_size)
