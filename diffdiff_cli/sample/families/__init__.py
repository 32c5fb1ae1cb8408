"""Family adapters: only what really differs between model families.

Each adapter wraps a loaded diffusers img2img pipeline and offers the engine the same small surface:
`preprocess`, `encode_prompt`, `encode_image`, `with_reference`, `initial_latent`, `denoise`, `decode`, `noising`.
"""

from __future__ import annotations


def adapter_for(family: str, pipe, guidance: float, refiner=None):
    if family == "sd":
        from diffdiff_cli.sample.families.sd import StableDiffusionAdapter

        return StableDiffusionAdapter(pipe, guidance)
    if family == "sdxl":
        from diffdiff_cli.sample.families.sdxl import StableDiffusionXLAdapter

        return StableDiffusionXLAdapter(pipe, guidance, refiner=refiner)
    if family == "sd3":
        from diffdiff_cli.sample.families.sd3 import StableDiffusion3Adapter

        return StableDiffusion3Adapter(pipe, guidance)
    if family == "flux":
        from diffdiff_cli.sample.families.flux import FluxAdapter

        return FluxAdapter(pipe, guidance)
    newer = {
        "qwen-image": ("qwen_image", "QwenImageAdapter"),
        "z-image": ("z_image", "ZImageAdapter"),
        "chroma": ("chroma", "ChromaAdapter"),
        "flux2-klein": ("flux2_klein", "Flux2KleinAdapter"),
        "kontext": ("kontext", "FluxKontextAdapter"),
    }
    if family in newer:
        import importlib

        module, name = newer[family]
        return getattr(importlib.import_module(f"diffdiff_cli.sample.families.{module}"), name)(pipe, guidance)
    raise ValueError(f"no adapter for family {family!r}")
