"""SD3 / 3.5: CLIP x2 + T5 (optional), an MMDiT over 2x2 patches of 16-channel latents, flow matching."""

from __future__ import annotations

import torch

from diffdiff_cli.sample.families.base import LatentAdapter, classifier_free_guidance


class StableDiffusion3Adapter(LatentAdapter):
    @property
    def patch(self) -> int:
        return self.pipe.transformer.config.patch_size

    @property
    def guided(self) -> bool:
        return self.guidance > 1.0

    def encode_prompt(self, prompt: str, negative_prompt: str | None, size: tuple[int, int]):
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt, None, None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=self.guided, negative_prompt=negative_prompt or None,
        )
        if self.guided:
            return torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        return embeds, pooled

    def initial_latent(self, scheduler, x0, noise, first_timestep):
        return scheduler.scale_noise(x0, first_timestep.repeat(x0.shape[0]), noise)

    def denoise(self, latents: torch.Tensor, t, conditioning) -> torch.Tensor:
        embeds, pooled = conditioning
        model_input = torch.cat([latents] * 2) if self.guided else latents
        prediction = self.pipe.transformer(
            hidden_states=model_input,
            timestep=t.expand(model_input.shape[0]),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return classifier_free_guidance(prediction, self.guidance) if self.guided else prediction
