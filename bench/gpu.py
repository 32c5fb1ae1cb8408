"""Throughput on a GPU (issue 13): images/s at batch 1, 2, 4, 8 for real-size random-weight SD 1.5 (512 px)
and SDXL (1024 px), diffdiff vs diffusers' img2img pipeline given the same list of images, fp16 and bf16,
with and without --compile. Writes the table with the device's name to bench/results-gpu.json.

    bench/gpu.sh              # on a machine with CUDA: at most ~8 minutes (a time guard skips what is left)
    bench/gpu.sh --quick      # smoke test on the CPU: tiny built-ins, 64 px, 2 steps, every code path once

Random weights: the numbers are about speed, not pictures. Never needed by CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from run import _diffusers_list, _edit_list, real_pipeline, write_inputs  # noqa: E402


def tiny_model(name: str):
    from diffdiff_cli.models.load import Runtime, load_model
    from diffdiff_cli.models.registry import resolve_model

    return load_model(resolve_model(name), offline=True, runtime=Runtime(device="cpu", dtype="fp32"))


def timed(fn, repeats: int, sync) -> float:
    fn()  # warm-up (and, with --compile, the compilation)
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test with the tiny built-ins (no GPU needed)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; rows not started by then are skipped")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: bench/results-gpu.json (--quick: a temporary file)")
    args = parser.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from diffdiff_cli.edit import EditSettings
    from diffdiff_cli.models.load import compile_denoiser, quiet_libraries

    quiet_libraries(True)
    started = time.monotonic()
    if args.quick:
        device, device_name = "cpu", f"cpu ({platform.processor() or platform.machine()}), --quick smoke test"
        cases = [  # (model, size, steps, dtype, compile, batches, compare with diffusers)
            ("tiny-sd15", 64, 2, torch.float32, False, (1, 2), True),
            ("tiny-sdxl", 64, 2, torch.float32, False, (2,), True),
            ("tiny-sd15", 64, 2, torch.float32, True, (2,), False),
        ]
        sync = lambda: None  # noqa: E731
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/gpu.py: no CUDA device here; use --quick for the CPU smoke test")
        device, device_name = "cuda", torch.cuda.get_device_name(0)
        sync = torch.cuda.synchronize
        fp16, bf16 = torch.float16, torch.bfloat16
        cases = [
            ("sd15", 512, 20, fp16, False, (1, 2, 4, 8), True),
            ("sd15", 512, 20, bf16, False, (4,), True),
            ("sd15", 512, 20, fp16, True, (1, 4), False),
            ("sdxl", 1024, 20, fp16, False, (1, 2, 4, 8), True),
            ("sdxl", 1024, 20, bf16, False, (4,), True),
            ("sdxl", 1024, 20, fp16, True, (4,), False),
        ]
    rows, models = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, size, steps, dtype, compiled, batches, compare in cases:
            key = (name, dtype, compiled)
            if key not in models:
                models.clear()  # one model in memory at a time
                if device == "cuda":
                    torch.cuda.empty_cache()
                models[key] = tiny_model(name) if args.quick else real_pipeline(name, device, dtype)
                if compiled:
                    compile_denoiser(models[key].pipe)
            model = models[key]
            photos, gradient = write_inputs(folder, size, count=max(batches))
            settings = EditSettings(prompt="a stormy sky", steps=steps, seed=1, scheduler="euler", fit="full")
            guidance = settings.guidance_for(model.family)
            for batch in batches:
                row = {"model": name, "size": size, "steps": steps, "dtype": str(dtype).split(".")[-1], "compile": compiled,
                       "batch": batch}
                if time.monotonic() - started > args.budget:
                    rows.append({**row, "skipped": "time budget"})
                    continue
                chosen = photos[:batch]
                ours = timed(lambda: _edit_list(model, settings, chosen, gradient), args.repeats, sync)
                row.update(diffdiff_s=ours, diffdiff_images_per_s=batch / ours)
                if compare:
                    theirs = timed(lambda: _diffusers_list(model, "euler", chosen, steps, guidance), args.repeats, sync)
                    row.update(diffusers_s=theirs, diffusers_images_per_s=batch / theirs, ratio=ours / theirs)
                if device == "cuda":
                    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    torch.cuda.reset_peak_memory_stats()
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": round(time.monotonic() - started, 1), "repeats": args.repeats, "rows": rows,
        "note": "random weights; 20 steps, euler, gradient map, --fit full; diffusers given the same list of images",
    }
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "diffdiff-results-gpu-quick.json" if args.quick
                                           else HERE / "results-gpu.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows)} rows in {result['seconds']} s on {device_name}; wrote {out}")


if __name__ == "__main__":
    main()
