"""The mask engine: one denoising loop over diffusers' scheduler API, for every model family.

At every model evaluation the pixels whose change is below the evaluation's threshold are pinned to the
clean latent noised to the current level, q(x0, T); the rest follow the sampler. The loop never asks
which network it runs: the family adapter encodes, noises, calls the denoiser and decodes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from diffdiff_cli.plan import Evaluation, Plan


def keep_weights(change: torch.Tensor, threshold: float, hardness: float) -> torch.Tensor:
    """How much of the sampler's latent each pixel keeps at one evaluation (1 = free, 0 = pinned).

    hardness 1 gives the binary mask (change >= threshold, change 0 never free); hardness 0 the map
    itself as a soft mask; values in between mix the two (ComfyUI's later `strength` input).
    """
    binary = ((change >= threshold) & (change > 0)).to(change.dtype)
    if hardness >= 1.0:
        return binary
    return hardness * binary + (1.0 - hardness) * change


@dataclass
class SampleRequest:
    x0: torch.Tensor  # clean latent, unpacked (B, C, h, w), already scaled as the denoiser expects
    noise: torch.Tensor  # the run's one noise tensor: the initial latent and every pinned copy use it
    change: torch.Tensor  # (1, 1, h, w) map on the latent grid, in [0, 1]
    conditioning: object  # whatever the adapter's encode_prompt returned
    hardness: float = 1.0


def step_kwargs(scheduler, generator: torch.Generator | None, eta: float = 0.0) -> dict:
    """The optional arguments this scheduler's `step` takes, as diffusers' pipelines pass them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def sample(
    adapter,
    scheduler,
    timesteps: torch.Tensor,
    plan: Plan,
    request: SampleRequest,
    generator: torch.Generator | None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> torch.Tensor:
    """Run the masked denoising loop; return the final latent with pinned pixels restored to x0 exactly."""
    x0, noise, change = request.x0, request.noise, request.change.to(request.x0.dtype)
    latents = adapter.initial_latent(scheduler, x0, noise, timesteps[:1])
    extra = step_kwargs(scheduler, generator)
    keep = torch.ones_like(change)
    for evaluation, t in zip(plan.evaluations, timesteps):
        keep = keep_weights(change, evaluation.threshold, request.hardness)
        if not bool((keep == 1).all()):
            pinned = adapter.noising.noised(x0, noise, evaluation.time)
            latents = torch.lerp(pinned, latents, keep)  # exact at keep 0 and keep 1
        model_input = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        model_output = adapter.denoise(model_input, t, request.conditioning)
        latents = scheduler.step(model_output, t, latents, **extra, return_dict=False)[0]
        if on_evaluation is not None:
            on_evaluation(evaluation)
    # Pixels pinned at the last evaluation end on the clean latent itself, not on a noised copy.
    return torch.lerp(x0, latents, keep)
