"""Flux: CLIP (pooled) + T5, a transformer over 2x2-packed latents, guidance as an embedding (dev).

The engine keeps latents unpacked (B, C, h, w) so the map lines up cell for cell; packing happens around
the transformer call only. Flux's scheduler step is elementwise, so stepping unpacked latents is exact.
Conditioning is (embeds, pooled, text_ids), plus (reference tokens, their ids) for Kontext (kontext.py).
"""

from __future__ import annotations

import torch

from diffdiff_cli.prompts import parse_weighted
from diffdiff_cli.sample.families.base import LatentAdapter
from diffdiff_cli.sample.families.text import ClipReader, clip_chunks, encode_chunks, encode_t5

T5_TOKENS = 512  # diffusers' max_sequence_length for Flux


class FluxAdapter(LatentAdapter):
    patch = 2
    shared_leaves = frozenset({2, 4})  # text ids and reference ids: positions, no batch dimension

    def __init__(self, pipe, guidance: float):
        super().__init__(pipe, guidance)
        self._image_ids = {}

    def _ids_for(self, latents: torch.Tensor) -> torch.Tensor:
        """Position ids of the packed tokens; the same at every evaluation of a run, so made once."""
        batch, _, height, width = latents.shape
        key = (batch, height, width, latents.device, latents.dtype)
        if key not in self._image_ids:
            self._image_ids[key] = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
        return self._image_ids[key]

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]):
        pipe = self.pipe
        # CLIP gives only the pooled vector (its first 75 tokens); T5 carries the prompt
        reader = ClipReader(pipe.tokenizer, pipe.text_encoder, 1, final_norm=True)
        _, pooled = encode_chunks(reader, clip_chunks(pipe, pipe.tokenizer, parse_weighted(prompt))[:1], self.device)
        embeds = encode_t5(pipe.tokenizer_2, pipe.text_encoder_2, prompt, T5_TOKENS, self.device, self.prompt_options.warn, "prompt")
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=pipe.text_encoder.dtype)
        return embeds, pooled.to(pipe.text_encoder.dtype), text_ids

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def denoise(self, latents: torch.Tensor, t, conditioning) -> torch.Tensor:
        embeds, pooled, text_ids, *reference = conditioning
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents, batch, channels, height, width)
        tokens = packed.shape[1]
        image_ids = self._ids_for(latents)
        if reference:  # reference tokens join the sequence; their predictions are dropped
            reference_tokens, reference_ids = reference
            packed = torch.cat([packed, reference_tokens.to(packed.dtype)], dim=1)
            image_ids = torch.cat([image_ids, reference_ids], dim=0)
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full([batch], self.guidance, device=latents.device, dtype=torch.float32)
        prediction = self.pipe.transformer(
            hidden_states=packed,
            timestep=t.expand(batch).to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0][:, :tokens]
        return self.pipe._unpack_latents(prediction, height * self.vae_scale_factor, width * self.vae_scale_factor, self.vae_scale_factor)
