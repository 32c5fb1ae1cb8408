"""Chroma: one T5 encoder with its padding mask, a Flux-like transformer over 2x2-packed latents, true CFG.

Chroma has no pooled text embedding and no guidance embedding: guidance is classifier-free, with a second
transformer call on the negative prompt (empty by default), as ChromaImg2ImgPipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffdiff_cli.sample.families.base import LatentAdapter


@dataclass
class ChromaConditioning:
    embeds: torch.Tensor  # (B, L, D)
    text_ids: torch.Tensor  # (L, 3), zeros
    mask: torch.Tensor  # (B, L): the prompt's tokens and one padding token, as diffusers masks them
    negative_embeds: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


class ChromaAdapter(LatentAdapter):
    patch = 2
    shared_leaves = frozenset({"text_ids", "negative_text_ids"})  # positions, no batch dimension

    def __init__(self, pipe, guidance: float):
        super().__init__(pipe, guidance)
        self._image_ids = {}

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]) -> ChromaConditioning:
        embeds, text_ids, mask, negative, negative_ids, negative_mask = self.pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt or None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.guided,
        )
        return ChromaConditioning(embeds, text_ids, mask, negative, negative_ids, negative_mask)

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def _ids_for(self, height: int, width: int, device, dtype) -> torch.Tensor:
        key = (height, width, device, dtype)
        if key not in self._image_ids:
            self._image_ids[key] = self.pipe._prepare_latent_image_ids(height // 2, width // 2, device, dtype)
        return self._image_ids[key]

    def _call(self, packed, timestep, embeds, text_ids, text_mask, image_ids):
        batch, tokens = packed.shape[:2]
        # the text mask extended over the image tokens, as ChromaImg2ImgPipeline._prepare_attention_mask
        mask = torch.cat([text_mask.expand(batch, -1), torch.ones(batch, tokens, device=packed.device)], dim=1)
        return self.pipe.transformer(
            hidden_states=packed,
            timestep=timestep,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            attention_mask=mask.to(packed.dtype),
            return_dict=False,
        )[0]

    def denoise(self, latents: torch.Tensor, t, cond: ChromaConditioning) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents, batch, channels, height, width)
        image_ids = self._ids_for(height, width, latents.device, latents.dtype)
        timestep = t.expand(batch) / 1000
        prediction = self._call(packed, timestep, cond.embeds, cond.text_ids, cond.mask, image_ids)
        if self.guided:
            unconditional = self._call(packed, timestep, cond.negative_embeds, cond.negative_text_ids, cond.negative_mask, image_ids)
            prediction = unconditional + self.guidance * (prediction - unconditional)
        factor = self.vae_scale_factor
        return self.pipe._unpack_latents(prediction, height * factor, width * factor, factor)
