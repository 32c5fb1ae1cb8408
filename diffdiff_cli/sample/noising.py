"""How a model family places noise levels on its time axis and noises a clean latent to a level.

`time_of(t)` gives T, the value the thresholds are computed on; `noised(x0, noise, T)` gives q(x0, T) in the
scheduler's own latent convention.
"""

from __future__ import annotations

import numpy as np
import torch


class DiscreteTimeNoising:
    """DDPM-family models (eps or v prediction) trained on timesteps 0 .. N-1.

    The noise level is read off the training schedule at T, not off the scheduler's step counter:
    diffusers' `add_noise` indexes sigmas by step and so returns the step's end level at the midpoint
    evaluations of KDPM2 and DPM++ SDE. Continuous T (Karras schedules) interpolates log-sigma, the
    inverse of diffusers' `_sigma_to_t`.
    """

    time_min = 0.0

    def __init__(self, scheduler):
        alphas_cumprod = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
        self._log_sigmas = np.log(np.sqrt((1 - alphas_cumprod) / alphas_cumprod))
        # Euler-style (k-diffusion) schedulers keep latents as x0 + sigma * eps and start above sigma 1;
        # DDIM, PNDM, UniPC and DPM-Solver keep variance-preserving latents and start at 1.
        self.variance_exploding = float(scheduler.init_noise_sigma) > 1.0

    def time_of(self, timestep: float) -> float:
        return float(timestep)

    def sigma_of(self, time: float) -> float:
        return float(np.exp(np.interp(time, np.arange(len(self._log_sigmas)), self._log_sigmas)))

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, time: float) -> torch.Tensor:
        sigma = self.sigma_of(time)
        if self.variance_exploding:
            return x0 + noise * sigma
        alpha_bar = 1.0 / (1.0 + sigma * sigma)
        return x0 * alpha_bar**0.5 + noise * (1.0 - alpha_bar) ** 0.5


class FlowNoising:
    """Flow-matching models (SD3, Flux): the time axis is sigma itself and q(x0, s) = (1 - s) x0 + s noise.

    The smallest trained level is the scheduler's own sigma_min; timesteps are sigma x num_train_timesteps.
    """

    def __init__(self, scheduler):
        self.time_min = float(scheduler.sigma_min)
        self._per_timestep = 1.0 / scheduler.config.num_train_timesteps

    def time_of(self, timestep: float) -> float:
        return float(timestep) * self._per_timestep

    def sigma_of(self, time: float) -> float:
        return float(time)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, time: float) -> torch.Tensor:
        return x0 * (1.0 - time) + noise * time


def noising_for(scheduler):
    """The forward-noising rule that matches this scheduler's latents."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return FlowNoising(scheduler)
    return DiscreteTimeNoising(scheduler)
