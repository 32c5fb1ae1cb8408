"""FLUX.2 [klein]: a Qwen3 text encoder (three hidden layers stacked), 32-channel VAE latents patchified
2x2 to 128 channels and normalised by the VAE's batch-norm statistics, a transformer over those cells.

The normalisation needs the patchified layout, so the engine grid is that grid: one cell is 16x16 pixels
(`latent_patch` 2) and each cell is one token (`patch` 1). As Flux2KleinInpaintPipeline does, the image
is encoded with the posterior's mode and its latent also joins the sequence as reference tokens (time
index 10); with an all-white mask at strength 1 that pipeline is exactly what map 1 reproduces.
Guidance is classifier-free against the negative prompt (empty by default) for the base models; the
step-distilled models (`is_distilled`) run unguided.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from diffdiff_cli.sample.families.base import LatentAdapter


@dataclass
class KleinConditioning:
    embeds: torch.Tensor  # (B, L, D)
    text_ids: torch.Tensor  # (B, L, 4)
    negative_embeds: torch.Tensor | None = None
    negative_text_ids: torch.Tensor | None = None
    reference: torch.Tensor | None = None  # (B, tokens, 128): the input image's latent
    reference_ids: torch.Tensor | None = None  # (B, tokens, 4)


class Flux2KleinAdapter(LatentAdapter):
    patch = 1
    latent_patch = 2
    posterior_mode = True

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and not self.pipe.config.is_distilled

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]) -> KleinConditioning:
        embeds, text_ids = self.pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1)
        if not self.guided:
            return KleinConditioning(embeds, text_ids)
        negative, negative_ids = self.pipe.encode_prompt(negative_prompt or "", device=self.device, num_images_per_prompt=1)
        return KleinConditioning(embeds, text_ids, negative, negative_ids)

    def _batch_norm(self, latents: torch.Tensor):
        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device, latents.dtype)
        return mean, std

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist.mode()
        latents = self.pipe._patchify_latents(latents)
        mean, std = self._batch_norm(latents)
        return ((latents - mean) / std).to(self.dtype)

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        mean, std = self._batch_norm(latents)
        latents = self.pipe._unpatchify_latents(latents * std + mean)
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]

    def with_reference(self, conditioning: KleinConditioning, x0: torch.Tensor) -> KleinConditioning:
        ids = self.pipe._prepare_image_ids([x0], x0.shape[0]).to(x0.device)
        return replace(conditioning, reference=self.pipe._pack_latents(x0), reference_ids=ids)

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def denoise(self, latents: torch.Tensor, t, cond: KleinConditioning) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        packed = self.pipe._pack_latents(latents)
        image_ids = self.pipe._prepare_latent_ids(latents).to(latents.device)
        if cond.reference is not None:
            packed = torch.cat([packed, cond.reference.expand(batch, -1, -1)], dim=1)
            image_ids = torch.cat([image_ids, cond.reference_ids.expand(batch, -1, -1)], dim=1)
        packed = packed.to(self.dtype)
        timestep = t.expand(batch).to(latents.dtype) / 1000
        tokens = height * width

        def call(embeds, text_ids):
            return self.pipe.transformer(
                hidden_states=packed, timestep=timestep, guidance=None, encoder_hidden_states=embeds,
                txt_ids=text_ids, img_ids=image_ids, return_dict=False,
            )[0][:, :tokens]

        prediction = call(cond.embeds, cond.text_ids)
        if self.guided:
            negative = call(cond.negative_embeds, cond.negative_text_ids)
            prediction = negative + self.guidance * (prediction - negative)
        return prediction.permute(0, 2, 1).reshape(batch, channels, height, width)
