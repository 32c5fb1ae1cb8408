"""The model families diffdiff runs, as plain facts (no torch): what tells them apart outside the engine."""

from __future__ import annotations

from dataclasses import dataclass

from diffdiff_cli.errors import InputError


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    img2img_pipeline: str  # the diffusers pipeline class diffdiff loads and mirrors
    pipelines: tuple[str, ...]  # model_index.json class names that belong to this family
    flow: bool  # flow matching: the time axis is sigma and q(x0, s) = (1 - s) x0 + s noise
    patch: int  # latent cells per token side (SD3 patches, Flux packs 2x2): image sides are multiples of 8 x patch
    schedulers: tuple[str, ...]  # --scheduler names that work with it
    default_guidance: float  # the family's usual classifier-free guidance (Flux: its guidance embedding)
    default_size: int  # the resolution it was trained at (for `plan` without a map)
    fractional_strength: bool = False  # img2img cut int(N - N s) (SD3, Flux) instead of N - int(N s)
    linspace_sigmas: bool = False  # Flux's pipelines pass sigmas = linspace(1, 1/N, N)
    negative_prompts: bool = True  # Flux (guidance-distilled) has no unconditional branch to steer with


_DISCRETE = ("euler", "euler_a", "heun", "lms", "ddim", "pndm", "unipc", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde", "kdpm2")

FAMILIES: dict[str, Family] = {
    "sd": Family(
        "sd", "Stable Diffusion 1.x/2.x", "StableDiffusionImg2ImgPipeline",
        ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), False, 1, _DISCRETE, 7.5, 512,
    ),
    "sdxl": Family(
        "sdxl", "Stable Diffusion XL", "StableDiffusionXLImg2ImgPipeline",
        ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"), False, 1, _DISCRETE, 5.0, 1024,
    ),
    "sd3": Family(
        "sd3", "Stable Diffusion 3 / 3.5", "StableDiffusion3Img2ImgPipeline",
        ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"), True, 2, ("euler", "heun"), 7.0, 1024,
        fractional_strength=True,
    ),
    "flux": Family(
        "flux", "Flux", "FluxImg2ImgPipeline", ("FluxPipeline", "FluxImg2ImgPipeline"), True, 2, ("euler",), 3.5, 1024,
        fractional_strength=True, linspace_sigmas=True, negative_prompts=False,
    ),
}

SUPPORTED = ", ".join(f.label for f in FAMILIES.values())


def family_of_pipeline(class_name: str, label: str) -> Family:
    for family in FAMILIES.values():
        if class_name in family.pipelines:
            return family
    raise InputError(f"--model {label}: is a {class_name}; diffdiff runs {SUPPORTED} (text-to-image or img2img models)")


def check_scheduler_for(family: Family, scheduler: str | None) -> None:
    if scheduler is not None and scheduler not in family.schedulers:
        raise InputError(
            f"--scheduler {scheduler}: not available for {family.label} models; choose one of: {', '.join(family.schedulers)}"
        )
