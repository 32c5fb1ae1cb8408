"""SDXL: two CLIP encoders, pooled text embeddings and size/crop time ids; an optional refiner.

The refiner continues the same run with the same scheduler: the base denoises the evaluations above the
hand-over timestep and the refiner the rest, so the threshold ramp runs once across both.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from diffdiff_cli.plan import refiner_cutoff
from diffdiff_cli.sample.families.base import LatentAdapter, classifier_free_guidance
from diffdiff_cli.sample.families.text import ClipReader, PromptOptions, encode_clip_prompts

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # diffusers' defaults, used by refiners


@dataclass
class XLConditioning:
    embeddings: torch.Tensor
    text_embeds: torch.Tensor
    time_ids: torch.Tensor


def _xl_conditioning(
    pipe, prompt: str, negative_prompt: str | None, size: tuple[int, int], guided: bool, device, options: PromptOptions
) -> XLConditioning:
    # SDXL reads the penultimate layer of both encoders without the final norm: that is clip skip 2 here
    layer = options.clip_skip or 2
    readers = [
        ClipReader(tokenizer, encoder, layer, final_norm=False)
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
        if encoder is not None
    ]
    zero_negative = guided and not negative_prompt and pipe.config.force_zeros_for_empty_prompt
    prompts = [prompt] + ([negative_prompt or ""] if guided and not zero_negative else [])
    encoded = encode_clip_prompts(pipe, readers, prompts, device)
    embeds, pooled = encoded[0][0], encoded[0][1][-1]
    if zero_negative:
        negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    elif guided:
        negative, negative_pooled = encoded[1][0], encoded[1][1][-1]
    width, height = size
    projection_dim = (
        int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
    )
    time_ids, negative_time_ids = pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE,
        (height, width), (0, 0), (height, width), dtype=embeds.dtype, text_encoder_projection_dim=projection_dim,
    )
    if guided:
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([negative_time_ids, time_ids])
    return XLConditioning(embeds.to(device), pooled.to(device), time_ids.to(device))


@dataclass
class Refiner:
    pipe: object
    start: float  # share of the schedule (by training timestep) the base denoises, as diffusers' denoising_start

    @property
    def cutoff(self) -> float:
        """Evaluations at timesteps below this go to the refiner."""
        return refiner_cutoff(self.pipe.scheduler.config.num_train_timesteps, self.start)


class StableDiffusionXLAdapter(LatentAdapter):
    cfg_in_batch = True
    prompt_depends_on_size = True

    def __init__(self, pipe, guidance: float, refiner: Refiner | None = None):
        super().__init__(pipe, guidance)
        self.refiner = refiner

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    @contextmanager
    def _vae_in_fp32(self):
        """SDXL's VAE overflows in fp16 (`force_upcast`): held in fp16, it runs in fp32 around each encode and
        decode and goes back after, as diffusers' SDXL pipelines do."""
        vae = self.pipe.vae
        if vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
            yield
            return
        vae.to(torch.float32)
        try:
            yield
        finally:
            vae.to(torch.float16)

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with self._vae_in_fp32():
            return super().encode_image(pixels.float(), generator)

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with self._vae_in_fp32():
            return super().decode(latents, generator)

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]):
        options = self.prompt_options
        base = _xl_conditioning(self.pipe, prompt, negative_prompt, size, self.guided, self.device, options)
        if self.refiner is None:
            return base, None
        return base, _xl_conditioning(self.refiner.pipe, prompt, negative_prompt, size, self.guided, self.device, options)

    def denoise(self, latents: torch.Tensor, t, conditioning) -> torch.Tensor:
        base, refined = conditioning
        if self.refiner is None:
            use_refiner = False
        elif self.evaluation is not None:  # decided on the host, from the plan (no device sync)
            use_refiner = self.evaluation.denoiser == "refiner"
        else:
            use_refiner = float(t) < self.refiner.cutoff
        unet, cond = (self.refiner.pipe.unet, refined) if use_refiner else (self.pipe.unet, base)
        model_input = torch.cat([latents] * 2) if self.guided else latents
        prediction = unet(
            model_input,
            t,
            encoder_hidden_states=cond.embeddings,
            added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids},
            return_dict=False,
        )[0]
        return classifier_free_guidance(prediction, self.guidance) if self.guided else prediction
