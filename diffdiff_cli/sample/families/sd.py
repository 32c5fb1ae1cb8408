"""Stable Diffusion 1.x / 2.x: one CLIP encoder, a UNet with classifier-free guidance."""

from __future__ import annotations

import torch

from diffdiff_cli.sample.families.base import LatentAdapter, classifier_free_guidance
from diffdiff_cli.sample.families.text import ClipReader, encode_clip_prompts


class StableDiffusionAdapter(LatentAdapter):
    cfg_in_batch = True

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int] | None = None):
        # A1111's clip skip: layer N from the end, then the final layer norm (N = 1 is the usual output)
        reader = ClipReader(self.pipe.tokenizer, self.pipe.text_encoder, self.prompt_options.clip_skip or 1, final_norm=True)
        prompts = [negative_prompt or "", prompt] if self.guided else [prompt]
        return torch.cat([embeds for embeds, _ in encode_clip_prompts(self.pipe, [reader], prompts, self.device)])

    def denoise(self, latents: torch.Tensor, t, embeddings) -> torch.Tensor:
        model_input = torch.cat([latents] * 2) if self.guided else latents
        prediction = self.pipe.unet(model_input, t, encoder_hidden_states=embeddings, return_dict=False)[0]
        return classifier_free_guidance(prediction, self.guidance) if self.guided else prediction

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(self._to_vae_latents(latents).to(vae.dtype), return_dict=False, generator=generator)[0]
