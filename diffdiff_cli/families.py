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
    patch: int  # engine latent cells per token side (SD3 patches, Flux packs 2x2): sides are multiples of factor x patch
    schedulers: tuple[str, ...]  # --scheduler names that work with it
    default_guidance: float  # the family's usual classifier-free guidance (Flux: its guidance embedding)
    default_size: int  # the resolution it was trained at (for `plan` without a map)
    fractional_strength: bool = False  # img2img cut int(N - N s) (SD3, Flux) instead of N - int(N s)
    sigmas: str = "scheduler"  # what the pipeline passes to set_timesteps: see plan.pipeline_sigmas
    mu: str = "config"  # dynamic shift: "config" (linear in tokens, Flux) or "empirical" (FLUX.2: tokens and steps)
    negative_prompts: bool = True  # Flux (guidance-distilled) has no unconditional branch to steer with
    latent_patch: int = 1  # VAE latent cells per engine cell side: FLUX.2 normalises 2x2-patchified latents
    bf16: bool = False  # trained and shipped in bfloat16: fp16 overflows, so GPUs run it in bf16
    bf16_components: tuple[str, ...] = ()  # components that overflow fp16 in an otherwise fp16 model (SD3's T5)


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
        fractional_strength=True, bf16_components=("text_encoder_3",),
    ),
    "flux": Family(
        "flux", "Flux", "FluxImg2ImgPipeline", ("FluxPipeline", "FluxImg2ImgPipeline"), True, 2, ("euler",), 3.5, 1024,
        fractional_strength=True, sigmas="linspace", negative_prompts=False, bf16=True,
    ),
    "qwen-image": Family(
        "qwen-image", "Qwen-Image", "QwenImageImg2ImgPipeline", ("QwenImagePipeline", "QwenImageImg2ImgPipeline"),
        True, 2, ("euler",), 4.0, 1328, fractional_strength=True, sigmas="linspace", bf16=True,
    ),
    "z-image": Family(
        "z-image", "Z-Image", "ZImageImg2ImgPipeline", ("ZImagePipeline", "ZImageImg2ImgPipeline"),
        True, 2, ("euler",), 5.0, 1024, fractional_strength=True, sigmas="linspace_f32", bf16=True,
    ),
    "chroma": Family(
        "chroma", "Chroma", "ChromaImg2ImgPipeline", ("ChromaPipeline", "ChromaImg2ImgPipeline"),
        True, 2, ("euler",), 5.0, 1024, fractional_strength=True, sigmas="linspace", bf16=True,
    ),
    "flux2-klein": Family(
        "flux2-klein", "FLUX.2 [klein]", "Flux2KleinInpaintPipeline",
        ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline", "Flux2KleinKVPipeline"),
        True, 1, ("euler",), 4.0, 1024, fractional_strength=True, sigmas="linspace", mu="empirical", latent_patch=2, bf16=True,
    ),
    "kontext": Family(
        "kontext", "Flux.1 Kontext", "FluxKontextPipeline", ("FluxKontextPipeline", "FluxKontextInpaintPipeline"),
        True, 2, ("euler",), 2.5, 1024, fractional_strength=True, sigmas="linspace", negative_prompts=False, bf16=True,
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
