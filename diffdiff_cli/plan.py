"""Plan a run: which model evaluations happen, at which timesteps, and the change threshold of each.

The threshold rules are pure functions of numbers (no weights, no torch): `timestep_thresholds` is the
seed's normalised-timestep rule, `step_thresholds` the paper's step-index rule. `plan_run` reads the
evaluation list off a diffusers scheduler exactly as the img2img pipelines cut it for `strength`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from diffdiff_cli.errors import InputError

SCHEDULES = ("timestep", "steps")


@dataclass(frozen=True)
class Evaluation:
    """One call of the denoiser."""

    index: int  # position among the run's model evaluations
    step: int  # sampler step it belongs to (order-2 samplers make two evaluations a step)
    timestep: float  # what the denoiser is handed
    time: float  # position on the denoiser's own time axis: the timestep (DDPM family) or sigma (flow)
    sigma: float | None
    threshold: float  # pixels with change >= threshold (and > 0) are free at this evaluation


@dataclass(frozen=True)
class Plan:
    schedule: str
    steps: int  # sampler steps actually run
    time_from: float
    time_to: float
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([e.threshold for e in self.evaluations], dtype=np.float64)

    def distinct_levels(self) -> int:
        """How many different amounts of change a pixel can receive under binary masks.

        A pixel's outcome is fixed by the first evaluation that frees it; pixels never freed are kept.
        """
        return len({round(float(t), 9) for t in self.thresholds}) + 1

    def to_json(self, change_latent: np.ndarray | None = None) -> dict:
        rows = []
        for e in self.evaluations:
            row = asdict(e)
            row["free_share"] = None if change_latent is None else free_share(change_latent, e.threshold)
            rows.append(row)
        return {
            "schedule": self.schedule,
            "steps": self.steps,
            "model_evaluations": len(self.evaluations),
            "time_from": self.time_from,
            "time_to": self.time_to,
            "distinct_levels": self.distinct_levels(),
            "evaluations": rows,
        }


def timestep_thresholds(times, time_from: float, time_to: float) -> np.ndarray:
    """The seed's rule: tau(T) = (T - T_to) / (T_from - T_to), read at every model evaluation."""
    times = np.asarray(times, dtype=np.float64)
    span = time_from - time_to
    if span <= 0:  # a run that starts at its own end: nothing left to ramp
        return np.zeros_like(times)
    return (times - time_to) / span


def step_indices(order: int, n_evaluations: int) -> np.ndarray:
    """Sampler step of each evaluation. Order-2 samplers evaluate twice a step, the last step once."""
    return np.arange(n_evaluations) // max(order, 1)


def step_thresholds(steps_of_evaluations, n_steps: int) -> np.ndarray:
    """The paper's rule: at step i of M, a pixel is pinned iff (1 - c) > i / M, i.e. free iff c >= 1 - i / M."""
    return 1.0 - np.asarray(steps_of_evaluations, dtype=np.float64) / n_steps


def free_mask(change: np.ndarray, threshold: float) -> np.ndarray:
    """Free pixels: change >= threshold (>=, so white is free from the first call). Change 0 is never free."""
    return (change >= threshold) & (change > 0)


def free_share(change: np.ndarray, threshold: float) -> float:
    return float(free_mask(change, threshold).mean())


def strength_cut(n_steps: int, strength: float) -> int:
    """Index of the first step kept, as diffusers' img2img `get_timesteps` computes it."""
    kept = min(int(n_steps * strength), n_steps)
    if kept < 1:
        raise InputError(
            f"--strength {strength:g} with --steps {n_steps} runs no step at all; "
            f"raise --steps to at least {math.ceil(1 / strength)} or raise --strength"
        )
    return n_steps - kept


def prepare_scheduler(scheduler, n_steps: int, strength: float):
    """Set the scheduler up as diffusers' img2img pipelines do; return the timesteps that will be evaluated."""
    scheduler.set_timesteps(n_steps)
    start = strength_cut(n_steps, strength) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps


def plan_run(timesteps, order: int, noising, schedule: str = "timestep", time_end: float | None = None) -> Plan:
    """The plan for these timesteps. `noising` maps timesteps to the denoiser's time axis and sigma.

    `time_end` is where the run stops on that axis when it stops early (a hand-over to a refiner);
    a full run ends below the smallest level the model was trained on.
    """
    if schedule not in SCHEDULES:
        raise InputError(f"--schedule: unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    ts = [float(t) for t in timesteps]
    times = [noising.time_of(t) for t in ts]
    time_from = times[0]
    time_to = noising.time_min if time_end is None else max(noising.time_min, time_end)
    steps_of = step_indices(order, len(ts))
    n_steps = int(steps_of[-1]) + 1
    if schedule == "timestep":
        thresholds = timestep_thresholds(times, time_from, time_to)
    else:
        thresholds = step_thresholds(steps_of, n_steps)
    evaluations = [
        Evaluation(
            index=i,
            step=int(steps_of[i]),
            timestep=ts[i],
            time=times[i],
            sigma=noising.sigma_of(times[i]),
            threshold=float(thresholds[i]),
        )
        for i in range(len(ts))
    ]
    return Plan(schedule=schedule, steps=n_steps, time_from=time_from, time_to=time_to, evaluations=evaluations)


def banding_warning(plan: Plan, change_latent: np.ndarray) -> str | None:
    """A notice when the steps give fewer strength levels than the map's grey levels need."""
    greys = np.unique(np.round(change_latent[(change_latent > 0) & (change_latent < 1)], 3))
    levels = plan.distinct_levels()
    if len(greys) > levels and levels < 16:
        return (
            f"the map has {len(greys)} grey levels but {plan.steps} steps give only {levels} distinct "
            f"strengths: gradients will band; use more --steps"
        )
    return None
