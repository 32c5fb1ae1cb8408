"""diffdiff benchmarks: engine overhead, start-up, batch amortisation, memory, a 12 MP photo (--fit), and a per-step profile.

Run with `make bench`. Prints a table and writes bench/results.json. Every comparison is measured
side by side in one run, alternating A and B, as the median of several repeats after a warm-up.
Not part of the tests: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DIFFDIFF = str(BIN / "diffdiff")


def write_inputs(folder: Path, size: int, count: int = 1) -> tuple[list[str], str]:
    photos = []
    for i in range(count):
        rs = np.random.RandomState(i)
        image = Image.fromarray((rs.rand(size // 8, size // 8, 3) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"photo{size}-{i}.png"
        image.save(path)
        photos.append(str(path))
    gradient = folder / f"gradient{size}.png"
    Image.fromarray(np.tile(np.linspace(0, 255, size), (size, 1)).astype(np.uint8)).save(gradient)
    return photos, str(gradient)


def alternate(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """Time a() and b() alternately after one warm-up of each, in ABBA order (whichever runs second in a
    pair tends to run a few per cent slower on a warm CPU; swapping the order every round cancels it)."""
    a(), b()
    times_a, times_b = [], []
    for round_ in range(repeats):
        pairs = ((a, times_a), (b, times_b))
        for fn, sink in pairs if round_ % 2 == 0 else pairs[::-1]:
            started = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - started)
    return times_a, times_b


def family_pipeline_kwargs(model, size: int, guidance: float) -> tuple[object, dict]:
    """The family's own diffusers pipeline and the call arguments that make it the map-1 equivalent of an edit.

    Qwen-Image's guidance is true CFG against the negative " "; FLUX.2 [klein]'s reference is its inpaint
    pipeline with an all-white mask; Kontext's is FluxKontextPipeline (no strength: it starts from noise),
    kept at the input's size. The others are their img2img pipelines.
    """
    from diffusers import FluxKontextPipeline

    pipe, family = model.pipe, model.family.name
    kwargs = {"strength": 1.0}
    if model.family.flow:  # flow pipelines otherwise resize the image to their default size
        kwargs.update(height=size, width=size)
    if family == "qwen-image":
        kwargs.update(true_cfg_scale=guidance, negative_prompt=" ")
    elif family == "flux2-klein":
        kwargs.update(guidance_scale=guidance, mask_image=Image.new("L", (size, size), 255))
    elif family == "kontext":
        pipe = FluxKontextPipeline(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
        kwargs.pop("strength")
        kwargs.update(guidance_scale=guidance, max_area=size * size, _auto_resize=False)
    else:
        kwargs.update(guidance_scale=guidance)
    return pipe, kwargs


OVERHEAD_CASES = (
    ("tiny-sd15", (64, 512)), ("tiny-sdxl", (64, 512)), ("tiny-sd3", (64,)), ("tiny-flux", (64,)),
    ("tiny-qwen-image", (64,)), ("tiny-z-image", (64,)), ("tiny-chroma", (64,)), ("tiny-flux2-klein", (64,)), ("tiny-kontext", (64,)),
)


def engine_overhead(folder: Path, repeats: int, models: list[str] | None = None) -> list[dict]:
    """diffdiff's edit (gradient map: masks active every step) vs the family's own diffusers pipeline, same weights.

    SD 1.x and SDXL at 64 and 512 px (the goal), the flow families at 64 px (reported).
    """
    import torch

    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.schedulers import make_scheduler

    rows = []
    for name, sizes in OVERHEAD_CASES:
        if models and name not in models:
            continue
        model = load_model(resolve_model(name), offline=True)
        scheduler = None if model.family.flow else "euler"
        for size in sizes:
            (photo,), gradient = write_inputs(folder, size)
            settings = EditSettings(prompt="a stormy sky", steps=20, seed=1, scheduler=scheduler, fit="full")
            pipe, kwargs = family_pipeline_kwargs(model, size, settings.guidance_for(model.family))

            def ours():
                compute_edit(model, settings, photo, gradient)

            def theirs():
                pipe.scheduler = make_scheduler(model.scheduler_config, scheduler, 1)
                source = Image.open(photo).convert("RGB")  # both sides start from the file, as a command does
                pipe(prompt="a stormy sky", image=source, num_inference_steps=20, generator=torch.Generator().manual_seed(1), **kwargs)

            a, b = alternate(ours, theirs, repeats)
            ratio = statistics.median(a) / statistics.median(b)
            graded = not model.family.flow
            rows.append({"measure": "engine overhead", "case": f"{name} {size}px 20 steps", "diffdiff_s": statistics.median(a),
                         "diffusers_s": statistics.median(b), "ratio": ratio, "goal": "<= 1.01" if graded else "(reported)",
                         "met": ratio <= 1.01 if graded else None})
    return rows


def wall(command: list[str], repeats: int, env=None) -> float:
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def startup(folder: Path, repeats: int) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    (_,), gradient = write_inputs(folder, 64)
    help_s = wall([DIFFDIFF, "--help"], repeats, env)
    plan_command = [DIFFDIFF, "plan", "--map", gradient, "--steps", "20", "--scheduler", "euler", "--json"]
    plans, imports = alternate(lambda: subprocess.run(plan_command, capture_output=True, check=True, env=env),
                               lambda: subprocess.run([sys.executable, "-c", "import diffusers"], capture_output=True, check=True, env=env),
                               repeats)
    plan_s, import_s = statistics.median(plans), statistics.median(imports)
    ratio = help_s / import_s
    return [
        {"measure": "start-up", "case": "diffdiff --help", "seconds": help_s, "import_diffusers_s": import_s, "ratio": ratio,
         "goal": "<= 0.3 s and <= 0.1x import", "met": help_s <= 0.3 and ratio <= 0.1},
        {"measure": "start-up", "case": "diffdiff plan (no weights)", "seconds": plan_s, "import_diffusers_s": import_s,
         "ratio": plan_s / import_s, "goal": "<= 0.5x import", "met": plan_s / import_s <= 0.5},
    ]


def batch(folder: Path, repeats: int) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    photos, gradient = write_inputs(folder, 64, count=8)
    out = folder / "batch-out"
    out.mkdir(exist_ok=True)
    common = ["--map", gradient, "-p", "autumn", "--steps", "20", "--seed", "1", "-q", "--fit", "full"]
    one_call = [DIFFDIFF, "edit", *photos, "--out-dir", str(out), *common]

    def separate():
        for i, photo in enumerate(photos):
            subprocess.run([DIFFDIFF, "edit", photo, "-o", str(out / f"s{i}.png"), *common], capture_output=True, check=True, env=env)

    def together():
        subprocess.run(one_call, capture_output=True, check=True, env=env)

    a, b = alternate(together, separate, max(2, repeats // 2))
    ratio = statistics.median(a) / statistics.median(b)
    return [{"measure": "batch", "case": "8 images x 64px: one call vs 8 calls", "one_call_s": statistics.median(a),
             "separate_calls_s": statistics.median(b), "ratio": ratio, "goal": "<= 0.35", "met": ratio <= 0.35}]


_MEMORY_CHILD = """
import resource, sys
from diffdiff_cli.edit import EditSettings, compute_edit
from diffdiff_cli.models.load import load_model
from diffdiff_cli.models.registry import resolve_model
model = load_model(resolve_model("tiny-sd15"), offline=True)
compute_edit(model, EditSettings(prompt="x", steps=int(sys.argv[3]), seed=1, scheduler="euler", fit="full"), sys.argv[1], sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(folder: Path, repeats: int) -> list[dict]:
    """Peak RSS of a whole 512 px edit at 100 vs 10 steps (no per-step copies of the latent are kept)."""
    (photo,), gradient = write_inputs(folder, 512)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    peaks = {}
    for steps in (10, 100):
        runs = [int(subprocess.run([sys.executable, "-c", _MEMORY_CHILD, photo, gradient, str(steps)], capture_output=True,
                                   text=True, check=True, env=env).stdout.split()[-1]) for _ in range(max(1, repeats // 3))]
        peaks[steps] = statistics.median(runs) / 1024  # MiB (ru_maxrss is KiB on Linux)
    ratio = peaks[100] / peaks[10]
    return [{"measure": "memory", "case": "peak RSS, 512px, 100 vs 10 steps", "rss_10_steps_mib": peaks[10],
             "rss_100_steps_mib": peaks[100], "ratio": ratio, "goal": "<= 1.02", "met": ratio <= 1.02}]


_PHOTO_CHILD = """
import resource, sys, tempfile, time
from diffdiff_cli.edit import EditSettings, compute_edit, recorded_settings
from diffdiff_cli.models.load import load_model
from diffdiff_cli.models.registry import resolve_model
from diffdiff_cli.write import save_atomically
model = load_model(resolve_model("tiny-sd15"), offline=True)
settings = EditSettings(prompt="x", steps=20, seed=1, scheduler="euler")
result = compute_edit(model, settings, sys.argv[1], sys.argv[2])
edit_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    started = time.perf_counter()
    save_atomically(result.image, folder + "/out.png", recorded_settings(model, settings, result, sys.argv[1], sys.argv[2]))
    write_s = time.perf_counter() - started
print(edit_rss, write_s)
"""


def photo(folder: Path, repeats: int) -> list[dict]:
    """--fit auto on a 4000 x 3000 camera photo (JPEG) whose map changes a 600 x 400 blob, against an edit
    of a 512 x 512 photo (the native size, its own region): both run tiny-sd15 at about 512 x 512 for 20
    steps, so the difference is the photo's decode, the crop and the paste-back. Time: in one process,
    alternating; peak RSS (and the time to write the output PNG): each edit in a process of its own."""
    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    rs = np.random.RandomState(0)
    big = str(folder / "IMG_4032.jpg")
    Image.fromarray((rs.rand(30, 40, 3) * 255).astype(np.uint8)).resize((4000, 3000), Image.Resampling.BICUBIC).save(big, quality=90)
    y, x = np.ogrid[:3000, :4000]
    blob = str(folder / "blob.png")
    Image.fromarray((((x - 2000) / 300.0) ** 2 + ((y - 1500) / 200.0) ** 2 <= 1).astype(np.uint8) * 255).save(blob)
    (native,), gradient = write_inputs(folder, 512)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def child(photo_path, map_path):
        out = subprocess.run([sys.executable, "-c", _PHOTO_CHILD, photo_path, map_path], capture_output=True, text=True,
                             check=True, env=env).stdout.split()
        return int(out[0]) / 1024, float(out[1])

    # The processes first: on Linux a child reports its parent's peak RSS at the fork if that was higher.
    runs = {"photo": [], "native": []}
    for round_ in range(max(2, repeats // 2)):
        order = (("photo", (big, blob)), ("native", (native, gradient)))
        for name, args in order if round_ % 2 == 0 else order[::-1]:
            runs[name].append(child(*args))
    (p_rss, p_write), (n_rss, n_write) = ([statistics.median(r[i] for r in runs[name]) for i in range(2)] for name in ("photo", "native"))

    model = load_model(resolve_model("tiny-sd15"), offline=True)
    settings = EditSettings(prompt="x", steps=20, seed=1, scheduler="euler")
    work = "x".join(map(str, compute_edit(model, settings, big, blob).region.work_size))
    a, b = alternate(lambda: compute_edit(model, settings, big, blob), lambda: compute_edit(model, settings, native, gradient), repeats)
    p_edit, n_edit = statistics.median(a), statistics.median(b)
    return [
        {"measure": "photo (--fit auto)", "case": f"4000x3000 JPEG, 600x400 blob (at {work}) vs 512x512: edit time, tiny-sd15 20 steps",
         "photo_s": p_edit, "native_s": n_edit, "ratio": p_edit / n_edit, "goal": "<= 1.3", "met": p_edit / n_edit <= 1.3},
        {"measure": "photo (--fit auto)", "case": "the same: peak RSS (MiB)", "photo_rss_mib": p_rss, "native_rss_mib": n_rss,
         "ratio": p_rss / n_rss, "goal": "<= 1.5", "met": p_rss / n_rss <= 1.5},
        {"measure": "photo (--fit auto)", "case": "the same: writing the output PNG (s)", "photo_write_s": p_write,
         "native_write_s": n_write, "ratio": p_write / n_write, "goal": "(reported)", "met": None},
    ]


def profile(folder: Path) -> list[dict]:
    """Where one edit's time goes, per step: the model call, the mask and blend, the scheduler step."""
    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.sample import engine

    model = load_model(resolve_model("tiny-sd15"), offline=True)
    (photo,), gradient = write_inputs(folder, 512)
    spent = {"model call": 0.0, "mask and blend": 0.0, "scheduler step": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started
        return wrapper

    original_keep = engine.keep_weights
    from diffdiff_cli.sample.families.sd import StableDiffusionAdapter

    original_denoise = StableDiffusionAdapter.denoise
    StableDiffusionAdapter.denoise = timed(original_denoise, "model call")
    engine.keep_weights = timed(original_keep, "mask and blend")
    from diffdiff_cli.sample import noising

    original_noised = noising.DiscreteTimeNoising.noised
    noising.DiscreteTimeNoising.noised = timed(original_noised, "mask and blend")
    import diffusers

    original_step = diffusers.EulerDiscreteScheduler.step
    diffusers.EulerDiscreteScheduler.step = timed(original_step, "scheduler step")
    try:
        settings = EditSettings(prompt="x", steps=20, seed=1, scheduler="euler", fit="full")
        compute_edit(model, settings, photo, gradient)  # warm-up
        for key in spent:
            spent[key] = 0.0
        started = time.perf_counter()
        compute_edit(model, settings, photo, gradient)
        total = time.perf_counter() - started
    finally:
        StableDiffusionAdapter.denoise = original_denoise
        engine.keep_weights = original_keep
        noising.DiscreteTimeNoising.noised = original_noised
        diffusers.EulerDiscreteScheduler.step = original_step
    rows = [{"measure": "profile", "case": f"tiny-sd15 512px 20 steps: {key}", "seconds": value, "per_step_ms": value / 20 * 1000,
             "share": value / total} for key, value in spent.items()]
    rest = total - sum(spent.values())
    rows.append({"measure": "profile", "case": "tiny-sd15 512px 20 steps: encode, decode, I/O", "seconds": rest, "per_step_ms": None,
                 "share": rest / total})
    return rows


def band_response(folder: Path, repeats: int) -> list[dict]:
    """Mean |latent change| per band of a 16-band map (0, 1/15, ..., 1) at 10 steps: how much each grey level
    changes. With the node's prediction blend a pinned pixel stays exactly on q(x0, .), so low greys change
    little; without it (before issue 10) every grey behaved about one strength level higher."""
    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.maps import linear_gradient
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    size, bands = 256, 16
    (photo,), _ = write_inputs(folder, size)
    band_map = folder / "bands16.png"
    Image.fromarray(np.round(linear_gradient(size, size, bands=bands) * 255).astype(np.uint8)).save(band_map)
    rows = []
    for name, scheduler in (("demo", "euler"), ("tiny-sd15", "euler"), ("tiny-sd15", "dpmpp_2m")):
        model = load_model(resolve_model(name), offline=True)
        settings = EditSettings(prompt="a green background", steps=10, seed=1, scheduler=scheduler, guidance=3.0, fit="full")
        result = compute_edit(model, settings, photo, str(band_map))
        per_column = (result.latents - result.x0).abs().float().mean(dim=(0, 1, 2)).numpy()
        per_band = per_column.reshape(bands, -1).mean(axis=1)
        rows.append({"measure": "band response", "case": f"{name} {scheduler} 10 steps, 16-band map, mean |dlatent| per band",
                     "bands": [round(float(v), 4) for v in per_band], "map_values": [round(b / (bands - 1), 3) for b in range(bands)]})
    return rows


def _attention_lora(pipe, rank: int = 16) -> dict:
    """A LoRA (diffusers layout) on every attention projection of the UNet and the CLIP text encoders."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = {}
    for prefix, targets in (("unet", ("to_q", "to_k", "to_v", "to_out.0")), ("text_encoder", ("q_proj", "k_proj", "v_proj", "out_proj")),
                            ("text_encoder_2", ("q_proj", "k_proj", "v_proj", "out_proj"))):
        module = getattr(pipe, prefix, None)
        for name, layer in (module.named_modules() if module is not None else ()):
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
                state[f"{prefix}.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
                state[f"{prefix}.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.05
    return state


def lora(folder: Path, repeats: int) -> list[dict]:
    """A LoRA merged into the weights once (--fuse-lora, the default) vs kept as separate peft layers: the
    time of one model evaluation at 512 px, and how far a whole edit's outputs differ."""
    import torch
    from safetensors.torch import save_file

    from diffdiff_cli.edit import EditSettings, compute_edit
    from diffdiff_cli.models.extras import Extras
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model
    from diffdiff_cli.sample.families import adapter_for

    rows = []
    (photo,), gradient = write_inputs(folder, 64)
    settings = EditSettings(prompt="a stormy sky", steps=20, seed=1, scheduler="euler", fit="full")
    for name in ("tiny-sd15", "tiny-sdxl"):
        path = folder / f"{name}-lora.safetensors"
        save_file(_attention_lora(load_model(resolve_model(name), offline=True).pipe), str(path))
        models = {fuse: load_model(resolve_model(name), offline=True, extras=Extras.from_options([str(path)], fuse=fuse))
                  for fuse in (True, False)}
        calls = {}
        with torch.inference_mode():
            for fuse, model in models.items():
                adapter = adapter_for(model.family.name, model.pipe, settings.guidance_for(model.family))
                conditioning = adapter.encode_prompt(settings.prompt, "", (512, 512))
                latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
                calls[fuse] = lambda a=adapter, c=conditioning, x=latents: [a.denoise(x, torch.tensor(500.0), c) for _ in range(3)]
            a, b = alternate(calls[True], calls[False], repeats)
        edits = {fuse: compute_edit(model, settings, photo, gradient) for fuse, model in models.items()}
        pixels = np.abs(np.asarray(edits[True].image).astype(int) - np.asarray(edits[False].image).astype(int))
        fused, unfused = statistics.median(a) / 3, statistics.median(b) / 3
        rows.append({"measure": "lora", "case": f"{name}: one evaluation at 512px, rank-16 LoRA on all attention, fused vs unfused",
                     "fused_s": fused, "unfused_s": unfused, "ratio": fused / unfused,
                     "max_latent_difference": float((edits[True].latents - edits[False].latents).abs().max()),
                     "max_pixel_difference_64px_20_steps": int(pixels.max()), "goal": "fused <= unfused", "met": fused <= unfused})
    return rows


def _edit_list(model, settings, photos, gradient, caches=None):
    """diffdiff on a list of images as one batch (edit.prepare_edit, then edit.denoise_edits), nothing written."""
    from diffdiff_cli.caches import RunCaches
    from diffdiff_cli.edit import denoise_edits, prepare_edit

    caches = caches or RunCaches()
    items = [prepare_edit(model, settings, photo, gradient, caches=caches) for photo in photos]
    results = denoise_edits(model, items, caches=caches)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise failed[0]
    return results


def _diffusers_list(model, scheduler, photos, steps, guidance, seed=1):
    """diffusers' own img2img pipeline given the same list of images (one generator per image)."""
    import torch

    from diffdiff_cli.schedulers import make_scheduler

    pipe = model.pipe
    pipe.scheduler = make_scheduler(model.scheduler_config, scheduler, seed)
    images = [Image.open(photo).convert("RGB") for photo in photos]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(photos))]
    return pipe(prompt=["a stormy sky"] * len(photos), image=images, strength=1.0, num_inference_steps=steps,
                guidance_scale=guidance, generator=generators, output_type="np")


def throughput(folder: Path, repeats: int, batches=(1, 2, 4, 8)) -> list[dict]:
    """Images per second at batch 1, 2, 4, 8 (tiny-sd15, 64 px, 20 steps, gradient map) against diffusers'
    img2img pipeline given the same list of images, and batch B against B runs of one."""
    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    model = load_model(resolve_model("tiny-sd15"), offline=True)
    photos, gradient = write_inputs(folder, 64, count=max(batches))
    rows = []
    for size in batches:
        chosen = photos[:size]
        settings = EditSettings(prompt="a stormy sky", steps=20, seed=1, scheduler="euler", fit="full")
        guidance = settings.guidance_for(model.family)
        a, b = alternate(lambda: _edit_list(model, settings, chosen, gradient),
                         lambda: _diffusers_list(model, "euler", chosen, 20, guidance), repeats)
        ours, theirs = statistics.median(a), statistics.median(b)
        goal = {"goal": "<= 1.05", "met": ours / theirs <= 1.05} if size == 4 else {"goal": "(reported)", "met": None}
        rows.append({"measure": "throughput", "case": f"tiny-sd15 64px 20 steps, batch {size} vs diffusers given the list",
                     "diffdiff_s": ours, "diffusers_s": theirs, "ratio": ours / theirs, "images_per_s": size / ours,
                     "diffusers_images_per_s": size / theirs, **goal})
    one, four = alternate(lambda: [_edit_list(model, EditSettings(prompt="a stormy sky", steps=20, seed=1, scheduler="euler",
                                                                   fit="full"), [p], gradient) for p in photos[:4]],
                          lambda: _edit_list(model, EditSettings(prompt="a stormy sky", steps=20, seed=1, scheduler="euler",
                                                                  fit="full"), photos[:4], gradient), repeats)
    rows.append({"measure": "throughput", "case": "tiny-sd15 64px 20 steps: 4 images at batch 4 vs 4 at batch 1",
                 "diffdiff_s": statistics.median(four), "diffusers_s": statistics.median(one),
                 "ratio": statistics.median(four) / statistics.median(one), "goal": "(reported)", "met": None})
    return rows


def real_pipeline(kind: str, device: str, dtype):
    """A real-size pipeline with random weights from the shipped configs (no download), on `device` in `dtype`:
    sd15 (UNet 860M, CLIP-L) or sdxl (UNet 2.6B, CLIP-L + OpenCLIP-bigG). Tokenizers are the built-ins' (the
    real CLIP vocabulary). Weights are initialised on the device itself (seconds, not minutes)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffdiff_cli.families import FAMILIES
    from diffdiff_cli.models.builtin import builtin_folder
    from diffdiff_cli.models.load import LoadedModel
    from diffdiff_cli.schedulers import make_scheduler

    configs = ROOT / "diffdiff_cli" / "models" / "configs" / kind
    scheduler_config = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
        text_2 = None
        if kind == "sdxl":
            text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(configs / "text_encoder_2"))
    common = dict(vae=vae, text_encoder=text, unet=unet, scheduler=make_scheduler(scheduler_config, None))
    if kind == "sd15":
        tiny = StableDiffusionImg2ImgPipeline.from_pretrained(builtin_folder("tiny-sd15"), local_files_only=True)
        pipe = StableDiffusionImg2ImgPipeline(tokenizer=tiny.tokenizer, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False, **common)
        family = FAMILIES["sd"]
    else:
        tiny = StableDiffusionXLImg2ImgPipeline.from_pretrained(builtin_folder("tiny-sdxl"), local_files_only=True)
        pipe = StableDiffusionXLImg2ImgPipeline(tokenizer=tiny.tokenizer, tokenizer_2=tiny.tokenizer_2, text_encoder_2=text_2,
                                                requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, **common)
        family = FAMILIES["sdxl"]
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(f"real-size {kind} (random weights)", family, pipe, dict(pipe.scheduler.config))


def throughput_real(folder: Path, repeats: int) -> list[dict]:
    """Opt-in (`make bench-real`): a real-size random-weight SD 1.5 at 512 px, 3 steps, batch 1 and 4, per
    image, and diffusers given the list of 4. Minutes on a CPU."""
    from diffdiff_cli.edit import EditSettings

    import torch

    model = real_pipeline("sd15", "cpu", torch.float32)
    photos, gradient = write_inputs(folder, 512, count=4)
    settings = EditSettings(prompt="a stormy sky", steps=3, seed=1, scheduler="euler", fit="full")
    repeats = max(1, min(repeats, 2))
    one, four = alternate(lambda: [_edit_list(model, settings, [p], gradient) for p in photos],
                          lambda: _edit_list(model, settings, photos, gradient), repeats)
    _, theirs = alternate(lambda: None, lambda: _diffusers_list(model, "euler", photos, 3, 7.5), repeats)
    per_one, per_four = statistics.median(one) / 4, statistics.median(four) / 4
    return [
        {"measure": "throughput (real size)", "case": "SD 1.5 UNet (random weights) 512px 3 steps: batch 4 vs batch 1, per image",
         "diffdiff_s": per_four, "diffusers_s": per_one, "ratio": per_four / per_one, "goal": "(reported)", "met": None},
        {"measure": "throughput (real size)", "case": "SD 1.5 512px 3 steps: 4 images at batch 4 vs diffusers given the list of 4",
         "diffdiff_s": statistics.median(four), "diffusers_s": statistics.median(theirs),
         "ratio": statistics.median(four) / statistics.median(theirs), "goal": "<= 1.05", "met": statistics.median(four) / statistics.median(theirs) <= 1.05},
    ]


def precision(folder: Path, repeats: int) -> list[dict]:
    """Component dtypes after `--dtype fp16` and what `--dtype auto` would pick on a GPU, against the dtypes
    diffusers' own pipelines run with (SD 1.5: VAE fp16; SDXL: VAE fp16 at rest, fp32 around encode/decode)."""
    import torch

    from diffdiff_cli.families import FAMILIES
    from diffdiff_cli.models.load import Runtime, component_dtypes, half_precision_for, load_model
    from diffdiff_cli.models.registry import resolve_model

    rows = []
    for name in ("tiny-sd15", "tiny-sdxl"):
        model = load_model(resolve_model(name), offline=True, runtime=Runtime(device="cpu", dtype="fp16"))
        pipe = model.pipe
        dtypes = {c: str(getattr(pipe, c).dtype).replace("torch.", "") for c in ("unet", "vae", "text_encoder")}
        rows.append({"measure": "precision", "case": f"{name} --dtype fp16: component dtypes after load", **dtypes,
                     "goal": "vae float16 (as diffusers)", "met": dtypes["vae"] == "float16"})
    for family in FAMILIES.values():
        dtype = half_precision_for(family, Runtime(), torch.float16)
        extra = {k: str(v).replace("torch.", "") for k, v in component_dtypes(family, Runtime(), dtype).items()}
        rows.append({"measure": "precision", "case": f"--dtype auto on a GPU: {family.label}",
                     "dtype": str(dtype).replace("torch.", ""), "components": extra, "goal": "(reported)", "met": None})
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("measure", "case", "A", "B", "ratio", "goal", "met", title="diffdiff benchmarks")
    for row in rows:
        a = next((row[k] for k in ("diffdiff_s", "one_call_s", "rss_100_steps_mib", "photo_s", "photo_rss_mib", "photo_write_s",
                                   "seconds", "fused_s") if k in row), None)
        b = next((row[k] for k in ("diffusers_s", "separate_calls_s", "rss_10_steps_mib", "native_s", "native_rss_mib",
                                   "native_write_s", "import_diffusers_s", "unfused_s") if k in row), None)
        ratio = row.get("ratio", row.get("share"))
        met = {True: "yes", False: "NO", None: "-"}[row.get("met")]
        table.add_row(row["measure"], row["case"], "-" if a is None else f"{a:.4g}", "-" if b is None else f"{b:.4g}",
                      "-" if ratio is None else f"{ratio:.3f}", row.get("goal", "-"), met)
    Console(width=160).print(table)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=["overhead", "startup", "batch", "memory", "photo", "profile", "bands", "lora",
                                                      "throughput", "precision", "throughput-real"])
    parser.add_argument("--models", nargs="*", help="engine overhead: only these built-ins (rows not measured keep their last values)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chosen = args.only or ["overhead", "startup", "batch", "memory", "photo", "profile", "bands", "lora", "throughput", "precision"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, fn in (("startup", startup), ("batch", batch), ("memory", memory), ("photo", photo), ("bands", band_response),
                         ("lora", lora), ("throughput", throughput), ("precision", precision), ("throughput-real", throughput_real)):
            if name in chosen:
                rows += fn(folder, args.repeats)
        if "overhead" in chosen:
            rows += engine_overhead(folder, args.repeats, args.models)
        if "profile" in chosen:
            rows += profile(folder)
    import torch

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d")}
    out = ROOT / "bench" / "results.json"
    if args.only or args.models:  # a partial run updates its rows and keeps the others from the last run
        measured = {(row["measure"], row["case"]) for row in rows}
        previous = json.loads(out.read_text())["results"] if out.is_file() else []
        rows = [row for row in previous if (row["measure"], row["case"]) not in measured] + rows
    print_table(rows)
    out.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "results": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
