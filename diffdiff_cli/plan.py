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
    sigma: float  # the scheduler's own noise level at this evaluation: pinned pixels are noised to it
    threshold: float  # pixels with change >= threshold (and > 0) are free at this evaluation
    denoiser: str = "base"  # "refiner" for the evaluations an SDXL refiner takes over


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

    @property
    def blends_prediction(self) -> bool:
        """The node's rule (timestep schedule) also points pinned pixels' predictions at x0; the paper's
        code (steps schedule) resets the input only."""
        return self.schedule == "timestep"

    @property
    def level_rule(self) -> str:
        """How a pixel's strength follows from the evaluations that pin it (see dither.py)."""
        return "entry" if self.blends_prediction else "last_reset"

    def distinct_levels(self) -> int:
        """How many different amounts of change a pixel can receive under binary masks (kept included).

        Timestep schedule: a pixel enters at q(x0, sigma_k) of the first evaluation that frees it, so
        every distinct threshold is a level, plus "kept". Steps schedule: a pinned pixel still steps
        with the model's prediction, so being pinned at the first evaluation changes nothing and the
        first two thresholds give the same level.
        """
        from diffdiff_cli.dither import strength_levels

        return len(strength_levels(self.thresholds, self.level_rule))

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


def strength_cut(n_steps: int, strength: float, fractional: bool = False) -> int:
    """Index of the first step kept, as the family's diffusers img2img pipeline computes it.

    SD 1.x/2.x and SDXL keep int(N * s) steps; SD3, Flux and the newer flow families start at int(N - N * s).
    """
    start = int(max(n_steps - n_steps * strength, 0)) if fractional else n_steps - min(int(n_steps * strength), n_steps)
    if n_steps - start < 1:
        raise InputError(
            f"--strength {strength:g} with --steps {n_steps} runs no step at all; "
            f"raise --steps to at least {math.ceil(1 / strength)} or raise --strength"
        )
    return start


def dynamic_shift(config, image_seq_len: int) -> float:
    """Flux's resolution-dependent shift mu: linear in the token count between two configured points."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


def empirical_shift(image_seq_len: int, n_steps: int) -> float:
    """FLUX.2's shift mu, fitted to token count and step count (diffusers' `compute_empirical_mu`).

    Above 4300 tokens it is linear in the tokens alone; below, it interpolates in the step count
    between fits made at 10 and 200 steps. Constants as BFL published them.
    """
    at_200 = 0.00016927 * image_seq_len + 0.45666666
    if image_seq_len > 4300:
        return float(at_200)
    at_10 = 8.73809524e-05 * image_seq_len + 1.89833333
    slope = (at_200 - at_10) / 190.0
    intercept = at_200 - 200.0 * slope
    return float(slope * n_steps + intercept)


def pipeline_sigmas(rule: str, n_steps: int):
    """The sigmas a family's pipeline hands to `set_timesteps` (None: the scheduler's own spacing).

    "linspace": numpy's linspace(1, 1/N, N) (Flux, Chroma, Qwen-Image, FLUX.2, Kontext); "linspace_f32":
    the same made by torch in float32 (Z-Image), which differs in the last bit at most N.
    """
    if rule == "scheduler":
        return None
    if rule == "linspace":
        return np.linspace(1.0, 1 / n_steps, n_steps)
    if rule == "linspace_f32":
        import torch

        return torch.linspace(1.0, 1 / n_steps, n_steps).tolist()
    raise ValueError(f"unknown sigma rule {rule!r}")


def prepare_scheduler(scheduler, n_steps: int, strength: float, family=None, image_seq_len: int = 4096):
    """Set the scheduler up as the family's diffusers img2img pipeline does; return the timesteps to evaluate."""
    kwargs = {}
    sigmas = pipeline_sigmas(family.sigmas, n_steps) if family is not None else None
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    if scheduler.config.get("use_dynamic_shifting"):
        empirical = family is not None and family.mu == "empirical"
        kwargs["mu"] = empirical_shift(image_seq_len, n_steps) if empirical else dynamic_shift(scheduler.config, image_seq_len)
    scheduler.set_timesteps(n_steps, **kwargs)
    fractional = family is not None and family.fractional_strength
    start = strength_cut(n_steps, strength, fractional) * scheduler.order
    timesteps = scheduler.timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps


def refiner_cutoff(num_train_timesteps: int, refiner_start: float) -> float:
    """Timesteps below this go to the refiner: diffusers' `denoising_start` hand-over point."""
    return round(num_train_timesteps - refiner_start * num_train_timesteps)


def schedule_run(family, scheduler_config: dict, scheduler_name: str | None, n_steps: int, strength: float,
                 schedule: str, latent_shape: tuple[int, int], seed: int | None = None, refiner_start: float | None = None):
    """The scheduler for one run, set up as the family's img2img pipeline would, its timesteps and the plan.

    `latent_shape` (h, w) matters to resolution-dependent shifts (Flux); `refiner_start` marks the
    evaluations an SDXL refiner takes over.
    """
    from diffdiff_cli.families import check_scheduler_for
    from diffdiff_cli.schedulers import make_scheduler

    check_scheduler_for(family, scheduler_name)
    scheduler = make_scheduler(scheduler_config, scheduler_name, seed)
    tokens = (latent_shape[0] // family.patch) * (latent_shape[1] // family.patch)
    timesteps = prepare_scheduler(scheduler, n_steps, strength, family, tokens)
    cutoff = None
    if refiner_start is not None:
        cutoff = refiner_cutoff(scheduler.config.num_train_timesteps, refiner_start)
    return scheduler, timesteps, plan_for_scheduler(scheduler, timesteps, schedule, refiner_cutoff=cutoff)


def plan_schedule(family, scheduler_config: dict, scheduler_name: str | None, n_steps: int, strength: float,
                  schedule: str, latent_shape: tuple[int, int], seed: int | None = None, refiner_start: float | None = None) -> Plan:
    """The plan alone, as `schedule_run` would give it (for `plan` and `map preview`, which step no scheduler).

    Computed in numpy, without torch or diffusers, where `schedule_np.resolve` covers the scheduler and its
    settings; read off the diffusers scheduler otherwise.
    """
    from diffdiff_cli.families import check_scheduler_for
    from diffdiff_cli.schedule_np import numpy_schedule

    check_scheduler_for(family, scheduler_name)
    tokens = (latent_shape[0] // family.patch) * (latent_shape[1] // family.patch)
    computed = numpy_schedule(family, scheduler_config, scheduler_name, n_steps, strength, tokens)
    if computed is None:
        return schedule_run(family, scheduler_config, scheduler_name, n_steps, strength, schedule, latent_shape, seed,
                            refiner_start=refiner_start)[2]
    cutoff = None if refiner_start is None else refiner_cutoff(computed.num_train_timesteps, refiner_start)
    return plan_run(computed.timesteps, computed.order, computed, schedule, refiner_cutoff=cutoff, sigmas=computed.sigmas)


def plan_for_scheduler(scheduler, timesteps, schedule: str = "timestep", refiner_cutoff: float | None = None) -> Plan:
    """The plan of a scheduler already set up for a run: its time axis, and its own sigma at every evaluation."""
    from diffdiff_cli.sample.noising import evaluation_sigmas, noising_for

    return plan_run(timesteps, scheduler.order, noising_for(scheduler), schedule, refiner_cutoff=refiner_cutoff,
                    sigmas=evaluation_sigmas(scheduler, timesteps))


def plan_run(
    timesteps, order: int, noising, schedule: str = "timestep", time_end: float | None = None,
    refiner_cutoff: float | None = None, *, sigmas,
) -> Plan:
    """The plan for these timesteps. `noising` maps timesteps to the denoiser's time axis; `sigmas` are the
    scheduler's own noise levels of the evaluations (`sample.noising.evaluation_sigmas`).

    `time_end` is where the run stops on that axis when it stops early; a full run ends below the
    smallest level the model was trained on. With a refiner the run is one schedule: evaluations at
    timesteps below `refiner_cutoff` are the refiner's, and the threshold ramp continues across them.
    """
    if schedule not in SCHEDULES:
        raise InputError(f"--schedule: unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    ts = [float(t) for t in timesteps]
    if len(sigmas) != len(ts):
        raise ValueError(f"plan_run: {len(sigmas)} sigmas for {len(ts)} evaluations")
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
            sigma=float(sigmas[i]),
            threshold=float(thresholds[i]),
            denoiser="refiner" if refiner_cutoff is not None and ts[i] < refiner_cutoff else "base",
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
            f"strengths: gradients will band; use more --steps or --dither"
        )
    return None
