"""Qwen-Image: a Qwen2.5-VL text encoder, a 3-D (video) VAE with per-channel mean/std, an MMDiT over
2x2-packed latents, and true classifier-free guidance with norm rescaling.

The VAE works on (B, C, T, H, W) with T = 1: the adapter adds and drops the time axis around it, so the
engine sees (B, 16, h, w). Guidance follows QwenImageImg2ImgPipeline's `true_cfg_scale`: the combined
prediction is rescaled per token to the conditional prediction's norm, so it is done on packed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffdiff_cli.sample.families.base import LatentAdapter

DEFAULT_NEGATIVE = " "  # what Qwen-Image's examples pass to switch guidance on without a negative prompt


@dataclass
class QwenConditioning:
    embeds: torch.Tensor  # (B, L, D)
    mask: torch.Tensor | None  # (B, L), None when every token counts
    negative_embeds: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None


class QwenImageAdapter(LatentAdapter):
    patch = 2

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and not self.pipe.transformer.config.guidance_embeds

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]) -> QwenConditioning:
        embeds, mask = self.pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1, max_sequence_length=512)
        if not self.guided:
            return QwenConditioning(embeds, mask)
        negative, negative_mask = self.pipe.encode_prompt(
            negative_prompt or DEFAULT_NEGATIVE, device=self.device, num_images_per_prompt=1, max_sequence_length=512
        )
        return QwenConditioning(embeds, mask, negative, negative_mask)

    def _stats(self, latents: torch.Tensor):
        """(mean, 1 / std) per channel, shaped for (B, C, T, H, W), written as the pipeline writes them."""
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(latents.device, latents.dtype)
        return mean, inverse_std

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(device=self.device, dtype=vae.dtype).unsqueeze(2)).latent_dist
        latents = posterior.sample(generator)
        mean, inverse_std = self._stats(latents)
        return ((latents - mean) * inverse_std)[:, :, 0].to(self.dtype)

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        video = latents.unsqueeze(2).to(vae.dtype)
        mean, inverse_std = self._stats(video)
        return vae.decode(video / inverse_std + mean, return_dict=False)[0][:, :, 0]

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def _call(self, packed, timestep, embeds, mask, img_shapes, guidance):
        return self.pipe.transformer(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=img_shapes,
            return_dict=False,
        )[0]

    def denoise(self, latents: torch.Tensor, t, cond: QwenConditioning) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents, batch, channels, height, width)
        img_shapes = [[(1, height // 2, width // 2)]] * batch
        timestep = t.expand(batch).to(latents.dtype) / 1000
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:  # guidance-distilled variants take the scale as input
            guidance = torch.full([batch], self.guidance, device=latents.device, dtype=torch.float32)
        prediction = self._call(packed, timestep, cond.embeds, cond.mask, img_shapes, guidance)
        if self.guided:
            negative = self._call(packed, timestep, cond.negative_embeds, cond.negative_mask, img_shapes, guidance)
            combined = negative + self.guidance * (prediction - negative)
            prediction = combined * (torch.norm(prediction, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
        factor = self.vae_scale_factor
        return self.pipe._unpack_latents(prediction, height * factor, width * factor, factor)[:, :, 0]
