"""Stable Diffusion 1.x / 2.x: CLIP prompt encoding, the UNet call with classifier-free guidance, the VAE.

Everything here leans on the diffusers pipeline object for its components and prompt encoding.
"""

from __future__ import annotations

import torch

from diffdiff_cli.sample.noising import DiscreteTimeNoising


class StableDiffusionFamily:
    name = "sd"

    def __init__(self, pipe, guidance: float):
        self.pipe = pipe
        self.guidance = guidance
        self.vae_scale_factor = pipe.vae_scale_factor
        self.noising = DiscreteTimeNoising(pipe.scheduler)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def use_scheduler(self, scheduler) -> None:
        self.pipe.scheduler = scheduler
        self.noising = DiscreteTimeNoising(scheduler)

    def encode_prompt(self, prompt: str, negative_prompt: str | None):
        positive, negative = self.pipe.encode_prompt(
            prompt, self.device, 1, self.guided, negative_prompt=negative_prompt or None
        )
        return torch.cat([negative, positive]) if self.guided else positive

    def encode_image(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """pixels: (1, 3, H, W) in [-1, 1]. The posterior is sampled with the run's generator, as diffusers does."""
        vae = self.pipe.vae
        posterior = vae.encode(pixels.to(device=self.device, dtype=self.dtype)).latent_dist
        return posterior.sample(generator) * vae.config.scaling_factor

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.add_noise(x0, noise, first_timestep.repeat(x0.shape[0]))

    def denoise(self, latents: torch.Tensor, t, embeddings) -> torch.Tensor:
        model_input = torch.cat([latents] * 2) if self.guided else latents
        prediction = self.pipe.unet(model_input, t, encoder_hidden_states=embeddings, return_dict=False)[0]
        if not self.guided:
            return prediction
        unconditional, conditional = prediction.chunk(2)
        return unconditional + self.guidance * (conditional - unconditional)

    def decode(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Back to pixels in [-1, 1] (unclamped), (B, 3, H, W)."""
        vae = self.pipe.vae
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False, generator=generator)[0]
