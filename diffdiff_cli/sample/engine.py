"""The mask engine: one denoising loop over diffusers' scheduler API, for every model family.

At every model evaluation the pixels whose change is below the evaluation's threshold are pinned: their
latent is set to the clean latent noised to the evaluation's sigma, q(x0, sigma), before the model sees
it, and (default `timestep` schedule) the model's prediction there is replaced by the one that points at
x0, as ComfyUI's KSamplerX0Inpaint blends both. A deterministic sampler then carries a pinned pixel
exactly along q(x0, .), and a pixel freed at evaluation k enters at q(x0, sigma_k). The `steps` schedule
(the paper's code) resets the input only. The loop never asks which network it runs: the family adapter
encodes, calls the denoiser and decodes; the noising rule knows the parameterisation.
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
    change: torch.Tensor  # (B or 1, 1, h, w) map on the latent grid, in [0, 1]
    conditioning: object  # whatever the adapter's encode_prompt returned (stacked over the batch)
    hardness: float = 1.0
    change_min: float | None = None  # the smallest map value, known on the host (None: read it off `change`)


def step_kwargs(scheduler, generator: torch.Generator | None, eta: float = 0.0) -> dict:
    """The optional arguments this scheduler's `step` takes, as diffusers' pipelines pass them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def pins_anything(change_min: float, threshold: float, hardness: float) -> bool:
    """Whether any pixel keeps less than all of the sampler's latent at this evaluation (decided on the host)."""
    if change_min >= 1.0:
        return False
    return hardness < 1.0 or change_min < threshold or change_min <= 0.0


def sample(
    adapter,
    scheduler,
    timesteps: torch.Tensor,
    plan: Plan,
    request: SampleRequest,
    generator: torch.Generator | None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    on_model_input: Callable[[Evaluation, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the masked denoising loop; return the final latent with pinned pixels restored to x0 exactly.

    The batch is the first dimension of every tensor: each image has its own map, noise and prompt (the
    adapter stacked the conditionings), all share the plan. `generator` is one CPU generator per image (a
    list) or one for a single image; stochastic samplers draw each image's noise from its own, so an
    image's result does not depend on its batch. Nothing in the loop waits on the device: which
    evaluations pin at all is decided on the host from the plan and `change_min`, and the timesteps go to
    the device once. `on_model_input(evaluation, latents)` sees the (unscaled) latent each evaluation hands
    the model.
    """
    x0, noise, change = request.x0, request.noise, request.change.to(request.x0.dtype)
    noising = adapter.noising
    change_min = request.change_min if request.change_min is not None else float(change.min())
    timesteps = timesteps.to(x0.device)
    latents = adapter.initial_latent(scheduler, x0, noise, timesteps[:1])
    extra = step_kwargs(scheduler, generator)
    keep = torch.ones_like(change)
    for evaluation, t in zip(plan.evaluations, timesteps):
        adapter.evaluation = evaluation  # what the adapter may ask on the host (SDXL: base or refiner)
        keep = keep_weights(change, evaluation.threshold, request.hardness)
        pinning = pins_anything(change_min, evaluation.threshold, request.hardness)
        if pinning:
            pinned = noising.noised(x0, noise, evaluation.sigma)
            latents = torch.lerp(pinned, latents, keep)  # exact at keep 0 and keep 1
        if on_model_input is not None:
            on_model_input(evaluation, latents)
        model_input = scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        model_output = adapter.denoise(model_input, t, request.conditioning)
        if pinning and plan.blends_prediction:
            towards_x0 = noising.prediction_towards(x0, latents, evaluation.sigma).to(model_output.dtype)
            model_output = torch.lerp(towards_x0, model_output, keep.to(model_output.dtype))
        latents = scheduler.step(model_output, t, latents, **extra, return_dict=False)[0]
        if on_evaluation is not None:
            on_evaluation(evaluation)
    # Pixels pinned at the last evaluation end on the clean latent itself, not on a noised copy.
    return torch.lerp(x0, latents, keep)
