"""How a model family places noise levels on its time axis, noises a clean latent, and points a prediction at it.

`time_of(t)` gives T, the value the thresholds are computed on. `noised(x0, noise, sigma)` gives q(x0, sigma)
in the scheduler's own latent convention, and `prediction_towards(x0, latents, sigma)` the model output that
makes the scheduler read x0 out of `latents` (ComfyUI's `denoised = x0` at pinned pixels, written in the
model's own parameterisation). The sigma of an evaluation is always the scheduler's own
(`evaluation_sigmas`), never one recomputed from a rounded timestep.
"""

from __future__ import annotations

import copy

import torch


class DiscreteTimeNoising:
    """DDPM-family models (eps, v or sample prediction) trained on timesteps 0 .. N-1.

    sigma = sqrt((1 - alpha_bar) / alpha_bar). Euler-style (k-diffusion) schedulers keep latents as
    x0 + sigma * eps and start above sigma 1 ("variance exploding"); DDIM, PNDM, UniPC and DPM-Solver keep
    variance-preserving latents alpha * x0 + s * eps with alpha = 1 / sqrt(1 + sigma^2), s = sigma * alpha.
    """

    time_min = 0.0

    def __init__(self, scheduler):
        self.variance_exploding = float(scheduler.init_noise_sigma) > 1.0
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction type {self.prediction_type!r}")

    def time_of(self, timestep: float) -> float:
        return float(timestep)

    @staticmethod
    def _alpha_s(sigma: float) -> tuple[float, float]:
        alpha = (1.0 + sigma * sigma) ** -0.5
        return alpha, sigma * alpha

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.variance_exploding:
            return x0 + noise * sigma
        alpha, s = self._alpha_s(sigma)
        return x0 * alpha + noise * s

    def prediction_towards(self, x0: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.prediction_type == "sample":
            return x0.expand_as(latents)
        alpha, s = self._alpha_s(sigma)
        variance_preserving = latents * alpha if self.variance_exploding else latents
        eps = (variance_preserving - x0 * alpha) / s
        if self.prediction_type == "epsilon":
            return eps
        return eps * alpha - x0 * s  # v = alpha * eps - s * x0


class FlowNoising:
    """Flow-matching models (SD3, Flux, ...): the time axis is sigma and q(x0, s) = (1 - s) x0 + s noise.

    The smallest trained level is the scheduler's own sigma_min; timesteps are sigma x num_train_timesteps.
    The model predicts the velocity v = noise - x0, so x0 = x - sigma v.
    """

    def __init__(self, scheduler):
        self.time_min = float(scheduler.sigma_min)
        self._per_timestep = 1.0 / scheduler.config.num_train_timesteps

    def time_of(self, timestep: float) -> float:
        return float(timestep) * self._per_timestep

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return x0 * (1.0 - sigma) + noise * sigma

    def prediction_towards(self, x0: torch.Tensor, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        return (latents - x0) / sigma


def noising_for(scheduler):
    """The forward-noising rule that matches this scheduler's latents."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FlowNoising(scheduler)
    return DiscreteTimeNoising(scheduler)


def current_sigma(scheduler, timestep) -> float:
    """The noise level the scheduler assigns to the evaluation it is at, read as its own `scale_model_input`
    and `step` read it (interleaved sigmas of Heun, KDPM2's interpolated and DPM++ SDE's midpoint sigmas at
    their second evaluations); schedulers without sigmas (DDIM, PNDM) use the training schedule at t."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:
        alpha_bar = float(scheduler.alphas_cumprod[int(round(float(timestep)))])
        return ((1.0 - alpha_bar) / alpha_bar) ** 0.5
    index = scheduler.step_index
    if index is None:
        index = scheduler.begin_index if scheduler.begin_index is not None else scheduler.index_for_timestep(timestep)
    if not getattr(scheduler, "state_in_first_order", True):
        if getattr(scheduler, "sigmas_interpol", None) is not None:  # KDPM2
            return float(scheduler.sigmas_interpol[index])
        if getattr(scheduler, "mid_point_sigma", None) is not None:  # DPM++ SDE
            return float(scheduler.mid_point_sigma)
    return float(sigmas[index])


def evaluation_sigmas(scheduler, timesteps, step_kwargs: dict | None = None) -> list[float]:
    """The scheduler's own sigma at each evaluation, read off a copy stepped with a zero model output.

    Needs no weights; the copy leaves `scheduler` untouched, so a run set up alike sees the same levels.
    """
    replay = copy.deepcopy(scheduler)
    sample = torch.zeros(1, 1, 2, 2)
    sigmas = []
    for t in timesteps:
        model_input = replay.scale_model_input(sample, t) if hasattr(replay, "scale_model_input") else sample
        sigmas.append(current_sigma(replay, t))
        sample = replay.step(torch.zeros_like(model_input), t, sample, **(step_kwargs or {}), return_dict=False)[0]
    return sigmas

