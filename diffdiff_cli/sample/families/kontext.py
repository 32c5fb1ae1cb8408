"""Flux.1 Kontext: Flux with the input image's latent tokens appended to the sequence as a reference.

The input is both what the model is conditioned on and the start latent: the map sets how much of the
instruction applies per pixel. diffusers' Kontext pipelines encode the image with the posterior's mode
(no generator draw) and give the reference tokens time index 1; the same is done here.
"""

from __future__ import annotations

import torch

from diffdiff_cli.sample.families.flux import FluxAdapter


class FluxKontextAdapter(FluxAdapter):
    posterior_mode = True

    def with_reference(self, conditioning, x0: torch.Tensor):
        batch, channels, height, width = x0.shape
        tokens = self.pipe._pack_latents(x0, batch, channels, height, width)
        ids = self.pipe._prepare_latent_image_ids(batch, height // 2, width // 2, x0.device, x0.dtype)
        ids[..., 0] = 1
        return (*conditioning[:3], tokens, ids)
