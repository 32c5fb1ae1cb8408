"""A run's schedule in numpy alone: what `plan.schedule_run` reads off a diffusers scheduler, without torch.

`plan` and `map preview` need numbers only: the evaluated timesteps (the scheduler's `timesteps[start:]`),
its `order`, its time axis and its own sigma at every evaluation (as `sample.noising.evaluation_sigmas`
reads them). This module computes them from the scheduler config with the formulas of the diffusers 0.42.1
scheduler classes, rounded where diffusers rounds: float32 where it works in float32, torch's float32
`linspace` reproduced exactly, cumulative products accumulated in float64 as torch does on the CPU. torch's
float32 sqrt, log and exp are not correctly rounded on every build (MKL here); they are rounded once here,
so sigmas agree to a unit or two in the last place, and the settings where that last bit would decide an
integer timestep are left to diffusers.

Coverage is decided in one place, `resolve`: a (class, config) is computed here only when every setting
that changes the schedule is one implemented here. Anything else (an unknown class, family or setting)
gives None, and the caller builds the diffusers scheduler as before.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

F32 = np.float32

# --- what the diffusers classes accept -------------------------------------------------------------------
# Every __init__ parameter of each class with its default (diffusers 0.42.1; a test compares these with the
# installed classes' signatures), so a config is read exactly as `from_config` reads it.

_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "trained_betas": None}
_K_BETAS = {**_BETAS, "beta_start": 0.00085, "beta_end": 0.012}
_SIGMA_KINDS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_SPACING = {"timestep_spacing": "linspace", "steps_offset": 0}
_THRESHOLDING = {"thresholding": False, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0}

DEFAULTS: dict[str, dict] = {
    "EulerDiscreteScheduler": {
        **_BETAS, "prediction_type": "epsilon", "interpolation_type": "linear", **_SIGMA_KINDS, "sigma_min": None,
        "sigma_max": None, **_SPACING, "timestep_type": "discrete", "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
    "EulerAncestralDiscreteScheduler": {**_BETAS, "prediction_type": "epsilon", **_SPACING, "rescale_betas_zero_snr": False},
    "HeunDiscreteScheduler": {
        **_K_BETAS, "prediction_type": "epsilon", **_SIGMA_KINDS, "clip_sample": False, "clip_sample_range": 1.0, **_SPACING,
    },
    "LMSDiscreteScheduler": {**_BETAS, **_SIGMA_KINDS, "prediction_type": "epsilon", **_SPACING},
    "DDIMScheduler": {
        **_BETAS, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
        **_THRESHOLDING, "clip_sample_range": 1.0, "timestep_spacing": "leading", "rescale_betas_zero_snr": False,
    },
    "PNDMScheduler": {
        **_BETAS, "skip_prk_steps": False, "set_alpha_to_one": False, "prediction_type": "epsilon",
        "timestep_spacing": "leading", "steps_offset": 0,
    },
    "UniPCMultistepScheduler": {
        **_BETAS, "solver_order": 2, "prediction_type": "epsilon", **_THRESHOLDING, "predict_x0": True, "solver_type": "bh2",
        "lower_order_final": True, "disable_corrector": [], "solver_p": None, **_SIGMA_KINDS, "use_flow_sigmas": False,
        "flow_shift": 1.0, **_SPACING, "final_sigmas_type": "zero", "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False, "time_shift_type": "exponential", "sigma_min": None, "sigma_max": None,
        "shift_terminal": None,
    },
    "DPMSolverMultistepScheduler": {
        **_BETAS, "solver_order": 2, "prediction_type": "epsilon", **_THRESHOLDING, "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, **_SIGMA_KINDS,
        "use_lu_lambdas": False, "use_flow_sigmas": False, "flow_shift": 1.0, "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"), "variance_type": None, **_SPACING, "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False, "time_shift_type": "exponential",
    },
    "DPMSolverSDEScheduler": {
        **_K_BETAS, "prediction_type": "epsilon", **_SIGMA_KINDS, "noise_sampler_seed": None, **_SPACING,
    },
    "KDPM2DiscreteScheduler": {**_K_BETAS, **_SIGMA_KINDS, "prediction_type": "epsilon", **_SPACING},
    "FlowMatchEulerDiscreteScheduler": {
        "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15,
        "base_image_seq_len": 256, "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None,
        **_SIGMA_KINDS, "time_shift_type": "exponential", "stochastic_sampling": False,
    },
    "FlowMatchHeunDiscreteScheduler": {"num_train_timesteps": 1000, "shift": 1.0},
}

ORDER = {"HeunDiscreteScheduler": 2, "DPMSolverSDEScheduler": 2, "KDPM2DiscreteScheduler": 2, "FlowMatchHeunDiscreteScheduler": 2}

# Settings this module does not compute: any of them away from its default sends the class to diffusers.
_NOT_HERE = {
    "use_beta_sigmas",  # scipy's beta quantiles
    # Zero terminal SNR rescales through torch's float32 sqrt, which is not correctly rounded on every build
    # (MKL): the cancellation near the last step turns its last-place errors into ~2e-6 relative sigma errors.
    "rescale_betas_zero_snr",
    "use_flow_sigmas", "use_dynamic_shifting", "solver_p", "shift_terminal",  # flow variants of UniPC / DPM-Solver
    "invert_sigmas",
}
_FLOW_NOT_HERE = {"use_beta_sigmas", "invert_sigmas"}  # FlowMatchEuler implements its shifts, not these

# Values implemented for the settings that choose a formula.
_CHOICES = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "interpolation_type": ("linear", "log_linear"),
    "timestep_type": ("discrete", "continuous"),
    "final_sigmas_type": ("zero", "sigma_min"),
    "time_shift_type": ("exponential", "linear"),
    "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
}
_SOLVER_TYPES = {"UniPCMultistepScheduler": ("bh1", "bh2"), "DPMSolverMultistepScheduler": ("midpoint", "heun")}

# The families whose img2img set-up (`plan.prepare_scheduler`) is reproduced here, and the Family fields it reads.
KNOWN_FAMILIES = ("sd", "sdxl", "sd3", "flux", "qwen-image", "z-image", "chroma", "flux2-klein", "kontext")
_FAMILY_FIELDS = {
    "name", "label", "img2img_pipeline", "pipelines", "flow", "patch", "schedulers", "default_guidance",
    "default_size", "fractional_strength", "sigmas", "mu", "negative_prompts", "latent_patch", "bf16", "bf16_components",
}


@dataclass(frozen=True)
class SchedulerSetup:
    """A scheduler as `schedulers.make_scheduler` + diffusers' `from_config` would build it."""

    class_name: str
    params: dict  # every __init__ parameter, as from_config sets it
    extra: dict  # other config keys: diffusers keeps them as config attributes, and some classes read them

    def attr(self, key: str):
        """`scheduler.config.<key>` where it exists, else None (as `hasattr(self.config, key)` tests it)."""
        return self.params[key] if key in self.params else self.extra.get(key)


@dataclass(frozen=True)
class Schedule:
    """What a plan needs from a scheduler set up for a run; also the time axis `plan.plan_run` reads."""

    timesteps: np.ndarray  # the evaluated timesteps, in diffusers' dtype
    order: int
    sigmas: np.ndarray  # the scheduler's own sigma at each evaluation
    time_min: float  # 0 for DDPM-family models, the scheduler's sigma_min for flow matching
    per_timestep: float  # the time axis: timestep (1.0) or sigma (1 / num_train_timesteps)
    num_train_timesteps: int

    def time_of(self, timestep: float) -> float:
        return float(timestep) * self.per_timestep


# --- coverage --------------------------------------------------------------------------------------------


def scheduler_setup(config: dict, name: str | None) -> SchedulerSetup | None:
    """The class and parameters `make_scheduler(config, name)` builds (None: a class not known here)."""
    from diffdiff_cli.schedulers import _FOREIGN_KEYS, FLOW_SCHEDULERS, SCHEDULERS

    own = config.get("_class_name")
    if name is None:
        class_name, base, overrides = own, dict(config), {}
    elif isinstance(own, str) and own.startswith("FlowMatch"):
        if name not in FLOW_SCHEDULERS:
            return None
        class_name, base, overrides = FLOW_SCHEDULERS[name], dict(config), {}
    else:
        if name not in SCHEDULERS:
            return None
        class_name, overrides, _ = SCHEDULERS[name]
        base = {k: v for k, v in config.items() if k not in _FOREIGN_KEYS}
    if class_name not in DEFAULTS:
        return None
    defaults = DEFAULTS[class_name]
    used_defaults = base.get("_use_default_values", [])  # from_config drops these keys: the class default wins
    base = {k: v for k, v in base.items() if k not in used_defaults and k != "_use_default_values"}
    params = {**defaults, **{k: v for k, v in base.items() if k in defaults}, **overrides}
    extra = {k: v for k, v in base.items() if k not in defaults}
    return SchedulerSetup(class_name, params, extra)


def unsupported(setup: SchedulerSetup, family) -> str | None:
    """Why this scheduler set-up for this family is left to diffusers, or None when it is computed here."""
    if family.name not in KNOWN_FAMILIES:
        return f"family {family.name!r}"
    for f in dataclasses.fields(family):
        if f.name not in _FAMILY_FIELDS and (f.default is dataclasses.MISSING or getattr(family, f.name) != f.default):
            return f"family option {f.name}"
    cls, p = setup.class_name, setup.params
    defaults = DEFAULTS[cls]
    flow = cls.startswith("FlowMatch")
    for key in _FLOW_NOT_HERE if flow else _NOT_HERE:
        if key in p and p[key] != defaults[key]:
            return f"{key}={p[key]!r}"
    for key, choices in _CHOICES.items():
        if key in p and p[key] not in choices and not (key == "beta_schedule" and cls == "HeunDiscreteScheduler" and p[key] == "exp"):
            return f"{key}={p[key]!r}"
    if cls in _SOLVER_TYPES and p["solver_type"] not in _SOLVER_TYPES[cls]:
        return f"solver_type={p['solver_type']!r}"
    if sum(bool(p.get(k)) for k in _SIGMA_KINDS) > 1:
        return "more than one sigma kind"  # diffusers refuses it
    if p.get("prediction_type") == "sample" and cls in ("DPMSolverSDEScheduler", "KDPM2DiscreteScheduler"):
        return "prediction_type='sample'"  # their step() refuses it
    if cls in ("UniPCMultistepScheduler", "DPMSolverMultistepScheduler") and (
        p["use_exponential_sigmas"] or (p["beta_schedule"] == "squaredcos_cap_v2" and (p["use_karras_sigmas"] or p.get("use_lu_lambdas")))
    ):
        # continuous timesteps truncated to integers: whether the first is 999 or 998 hangs on the last bit of
        # torch's float32 sqrt of the training sigmas, which is not correctly rounded on every build
        return "timesteps truncated to integers"
    if setup.attr("use_dynamic_shifting") and cls != "FlowMatchEulerDiscreteScheduler":
        return "use_dynamic_shifting on a class without it"  # prepare_scheduler would hand it a mu it refuses
    if _custom_sigmas(family, 1) is not None and cls != "FlowMatchEulerDiscreteScheduler":
        return "custom sigmas on a class without them"
    return None


def _custom_sigmas(family, n_steps: int):
    """The sigmas `plan.pipeline_sigmas` hands `set_timesteps` for this family, or None (the scheduler's own)."""
    if family.sigmas == "linspace":
        return np.linspace(1.0, 1 / n_steps, n_steps)
    if family.sigmas == "linspace_f32":
        return torch_linspace_f32(1.0, 1 / n_steps, n_steps).astype(np.float64)
    if family.sigmas == "scheduler":
        return None
    raise ValueError(f"unknown sigma rule {family.sigmas!r}")


def resolve(family, config: dict, name: str | None) -> SchedulerSetup | None:
    """The one coverage decision: the set-up to compute here, or None to use the diffusers scheduler."""
    setup = scheduler_setup(config, name)
    if setup is None or unsupported(setup, family) is not None:
        return None
    return setup


# --- numerics shared by the discrete-time classes --------------------------------------------------------


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)` bit for bit: a float32 step, the first half
    counted up from start and the second down from end, each value rounded once (fused multiply-add)."""
    if steps == 1:
        return np.array([start], dtype=F32)
    first, last = F32(start), F32(end)
    step = np.float64(F32((last - first) / F32(steps - 1)))
    i = np.arange(steps, dtype=np.float64)
    up = np.float64(first) + step * i
    down = np.float64(last) - step * (steps - 1 - i)
    return np.where(i < steps // 2, up, down).astype(F32)


def _alpha_bar_betas(n: int, transform: str) -> np.ndarray:
    if transform == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    else:  # "exp"
        def alpha_bar(t):
            return math.exp(t * -12.0)
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=np.float64).astype(F32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    return np.cumprod(x.astype(np.float64)).astype(F32)  # torch's CPU cumprod accumulates float32 in double


def alphas_cumprod(p: dict) -> np.ndarray:
    """The training schedule's cumulative alphas (float32), as the classes build them in torch."""
    n = p["num_train_timesteps"]
    if p["trained_betas"] is not None:
        betas = np.asarray(p["trained_betas"], dtype=np.float64).astype(F32)
    elif p["beta_schedule"] == "linear":
        betas = torch_linspace_f32(p["beta_start"], p["beta_end"], n)
    elif p["beta_schedule"] == "scaled_linear":
        betas = torch_linspace_f32(p["beta_start"] ** 0.5, p["beta_end"] ** 0.5, n) ** 2
    else:
        betas = _alpha_bar_betas(n, "cosine" if p["beta_schedule"] == "squaredcos_cap_v2" else "exp")
    return _cumprod_f32(F32(1.0) - betas)


def _train_sigmas(cumprod: np.ndarray) -> np.ndarray:
    return np.sqrt((F32(1.0) - cumprod) / cumprod)


def _log_f32(x: np.ndarray) -> np.ndarray:
    """Float32 log rounded once (torch's scalar kernels); vectorised torch may differ by one unit in the last place."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(F32)


def _exp_f32(x: np.ndarray) -> np.ndarray:
    return np.exp(np.asarray(x, dtype=np.float64)).astype(F32)


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (continuous) training timestep of each sigma: linear interpolation in log sigma."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return (1 - w) * low_idx + w * high_idx


def _sigma_to_t_f32(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """`sigma_to_t` as KDPM2 runs it on torch float32 tensors (every step in float32)."""
    with np.errstate(invalid="ignore"):
        log_sigma = np.log(np.maximum(sigmas.astype(F32), F32(1e-10)))
        dists = log_sigma[None, :] - log_sigmas[:, None]
        low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = np.clip((low - log_sigma) / (low - high), F32(0), F32(1))
        return (F32(1) - w) * low_idx.astype(F32) + w * high_idx.astype(F32)


def _karras(in_sigmas, n: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    """Karras et al. (2022) rho-7 noise levels between the schedule's ends (or the configured ones)."""
    sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()
    sigma_max = sigma_max if sigma_max is not None else in_sigmas[0].item()
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def _exponential(in_sigmas, n: int, sigma_min=None, sigma_max=None) -> np.ndarray:
    sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()
    sigma_max = sigma_max if sigma_max is not None else in_sigmas[0].item()
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _configured_ends(setup: SchedulerSetup) -> tuple:
    return setup.attr("sigma_min"), setup.attr("sigma_max")


def _k_spacing(p: dict, n: int, dtype=F32) -> np.ndarray:
    """Timesteps of the k-diffusion-style classes (Euler, Heun, LMS, KDPM2, DPM++ SDE): float, descending."""
    total, spacing = p["num_train_timesteps"], p["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, total - 1, n, dtype=dtype)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        timesteps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(dtype)
        timesteps += p["steps_offset"]
        return timesteps
    ratio = total / n
    timesteps = np.arange(total, 0, -ratio).round().copy().astype(dtype)
    timesteps -= 1
    return timesteps


def _multistep_spacing(p: dict, n: int, last: int) -> np.ndarray:
    """Timesteps of UniPC and DPM-Solver (n + 1 points, the last dropped): int64, descending."""
    spacing = p["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        timesteps += p["steps_offset"]
        return timesteps
    ratio = p["num_train_timesteps"] / n
    timesteps = np.arange(last, 0, -ratio).round().copy().astype(np.int64)
    timesteps -= 1
    return timesteps


def _interleave(values: np.ndarray, head: int = 1, tail: int = 1) -> np.ndarray:
    """Second-order layout: the first `head` once, the middle twice each, the last `tail` once."""
    middle = values[head : len(values) - tail] if tail else values[head:]
    parts = [values[:head], np.repeat(middle, 2)]
    if tail:
        parts.append(values[len(values) - tail :])
    return np.concatenate(parts)


def _sigma_last(setup: SchedulerSetup, cumprod: np.ndarray, sigmas_min_end=None):
    kind = setup.params["final_sigmas_type"]
    if kind == "zero":
        return 0
    if sigmas_min_end is not None:
        return sigmas_min_end
    return np.sqrt((F32(1.0) - cumprod[0]) / cumprod[0])


# --- the classes ----------------------------------------------------------------------------------------
# Each returns (timesteps, sigmas per position) for the whole schedule, laid out as the scheduler lays out
# `timesteps` and `sigmas`; `_evaluation_sigmas` then reads the evaluated positions as the scheduler does.


def _euler(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    cumprod = alphas_cumprod(p)
    timesteps = _k_spacing(p, n)
    train = _train_sigmas(cumprod)
    log_sigmas = np.log(train)
    if p["interpolation_type"] == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    else:
        sigmas = _exp_f32(torch_linspace_f32(float(np.log(train[-1])), float(np.log(train[0])), n + 1))
    if p["use_karras_sigmas"]:
        sigmas = _karras(sigmas, n, *_configured_ends(setup))
        timesteps = sigma_to_t(sigmas, log_sigmas)
    elif p["use_exponential_sigmas"]:
        sigmas = _exponential(sigmas, n, *_configured_ends(setup))
        timesteps = sigma_to_t(sigmas, log_sigmas)
    sigmas = np.concatenate([sigmas, [_sigma_last(setup, cumprod)]]).astype(F32)
    if p["timestep_type"] == "continuous" and p["prediction_type"] == "v_prediction":
        timesteps = _log_f32(sigmas[:-1]) * F32(0.25)
    return timesteps.astype(F32), sigmas


def _euler_ancestral(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    train = _train_sigmas(alphas_cumprod(p))
    timesteps = _k_spacing(p, n)
    sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    return timesteps, np.concatenate([sigmas, [0.0]]).astype(F32)


def _k_sigmas(setup: SchedulerSetup, n: int, karras_reads_config: bool):
    """Timesteps and sigmas (before the final 0) of Heun, LMS, KDPM2 and DPM++ SDE."""
    p = setup.params
    train = _train_sigmas(alphas_cumprod(p))
    log_sigmas = np.log(train)
    timesteps = _k_spacing(p, n, np.float64 if setup.class_name == "DPMSolverSDEScheduler" else F32)
    sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    if p["use_karras_sigmas"]:
        sigmas = _karras(sigmas, n, *(_configured_ends(setup) if karras_reads_config else (None, None)))
        timesteps = sigma_to_t(sigmas, log_sigmas)
    elif p["use_exponential_sigmas"]:
        sigmas = _exponential(sigmas, n, *_configured_ends(setup))
        timesteps = sigma_to_t(sigmas, log_sigmas)
    return timesteps, sigmas, log_sigmas


def _heun(setup: SchedulerSetup, n: int, **_):
    timesteps, sigmas, _ = _k_sigmas(setup, n, karras_reads_config=True)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
    return _interleave(timesteps, tail=0).astype(F32), _interleave(sigmas)


def _lms(setup: SchedulerSetup, n: int, **_):
    timesteps, sigmas, _ = _k_sigmas(setup, n, karras_reads_config=False)
    return timesteps.astype(F32), np.concatenate([sigmas, [0.0]]).astype(F32)


def _dpm_sde(setup: SchedulerSetup, n: int, **_):
    timesteps, sigmas, log_sigmas = _k_sigmas(setup, n, karras_reads_config=False)
    t = -np.log(sigmas)
    midpoints = sigma_to_t(np.exp(-(t[:-1] + np.diff(t) * 0.5)), log_sigmas)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
    timesteps = _interleave(timesteps, tail=0)
    timesteps[1::2] = midpoints
    return timesteps, _interleave(sigmas)


def _dpm_sde_midpoint(sigma: np.float32, sigma_next: np.float32) -> np.float32:
    """The midpoint sigma DPM++ SDE evaluates at (float32, as its step computes it)."""
    t, t_next = -_log_f32(sigma), -_log_f32(sigma_next)
    return _exp_f32(-(t + (t_next - t) * F32(0.5)))


def _kdpm2(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    timesteps, sigmas, log_sigmas = _k_sigmas(setup, n, karras_reads_config=True)
    if p["use_karras_sigmas"]:
        timesteps = timesteps.round()
    sigmas = np.concatenate([sigmas, [0.0]]).astype(F32)
    logs = _log_f32(sigmas)
    rolled = np.roll(logs, 1)
    with np.errstate(invalid="ignore"):
        interpolated = _exp_f32(rolled - (rolled - logs) * F32(0.5))  # torch.lerp(logs, rolled, 0.5)
    between = _sigma_to_t_f32(interpolated, log_sigmas).astype(timesteps.dtype)
    layout = np.stack([between[1:-1], timesteps[1:]], axis=-1).ravel()
    timesteps = np.concatenate([timesteps[:1], layout])
    sigmas_il = np.concatenate([sigmas[:1], np.repeat(sigmas[1:], 2), sigmas[-1:]])
    interpolated_il = np.concatenate([interpolated[:1], np.repeat(interpolated[1:], 2), interpolated[-1:]])
    return timesteps, (sigmas_il, interpolated_il)


def _ddim(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    total, spacing = p["num_train_timesteps"], p["timestep_spacing"]
    if spacing == "linspace":
        timesteps = np.linspace(0, total - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = total // n
        timesteps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        timesteps += p["steps_offset"]
    else:
        ratio = total / n
        timesteps = np.round(np.arange(total, 0, -ratio)).astype(np.int64)
        timesteps -= 1
    return timesteps, alphas_cumprod(p)


def _pndm(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    total, spacing = p["num_train_timesteps"], p["timestep_spacing"]
    if spacing == "linspace":
        ascending = np.linspace(0, total - 1, n).round().astype(np.int64)
    elif spacing == "leading":
        ratio = total // n
        ascending = (np.arange(0, n) * ratio).round()
        ascending += p["steps_offset"]
    else:
        ratio = total / n
        ascending = np.round(np.arange(total, 0, -ratio))[::-1].astype(np.int64)
        ascending -= 1
    if p["skip_prk_steps"]:
        prk = np.array([])
        plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
    else:
        order = 4
        prk = np.array(ascending[-order:]).repeat(2) + np.tile(np.array([0, total // n // 2]), order)
        prk = prk[:-1].repeat(2)[1:-1][::-1].copy()
        plms = ascending[:-3][::-1].copy()
    return np.concatenate([prk, plms]).astype(np.int64), alphas_cumprod(p)


def _unipc(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    cumprod = alphas_cumprod(p)
    timesteps = _multistep_spacing(p, n, p["num_train_timesteps"])
    train = _train_sigmas(cumprod)
    if p["use_karras_sigmas"]:
        sigmas = _karras(np.flip(train).copy(), n, *_configured_ends(setup))
        timesteps = sigma_to_t(sigmas, np.log(train)).round()
        last = _sigma_last(setup, cumprod, sigmas[-1])
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
        last = _sigma_last(setup, cumprod)
    return timesteps.astype(np.int64), np.concatenate([sigmas, [last]]).astype(F32)


def _dpm_multistep(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    cumprod = alphas_cumprod(p)
    total = p["num_train_timesteps"]
    last_timestep = total
    if p["lambda_min_clipped"] != -float("inf"):
        root = np.sqrt(cumprod)
        lambdas = _log_f32(root) - _log_f32(np.sqrt(F32(1.0) - cumprod))
        last_timestep = total - int(np.searchsorted(np.flip(lambdas), F32(p["lambda_min_clipped"]), side="left"))
    timesteps = _multistep_spacing(p, n, last_timestep)
    train = _train_sigmas(cumprod)
    log_sigmas = np.log(train)
    if p["use_karras_sigmas"]:  # (squaredcos_cap_v2 would skip the rounding: left to diffusers, see `unsupported`)
        sigmas = _karras(np.flip(train).copy(), n, *_configured_ends(setup))
        timesteps = sigma_to_t(sigmas, log_sigmas).round()
    elif p["use_lu_lambdas"]:  # Lu et al.'s uniform log-SNR steps
        lambdas = np.flip(log_sigmas.copy())
        lambda_min, lambda_max = lambdas[-1].item(), lambdas[0].item()
        sigmas = np.exp(lambda_max + np.linspace(0, 1, n) * (lambda_min - lambda_max))
        timesteps = sigma_to_t(sigmas, log_sigmas).round()
    else:
        sigmas = np.interp(timesteps, np.arange(0, len(train)), train)
    sigmas = np.concatenate([sigmas, [_sigma_last(setup, cumprod)]]).astype(F32)
    return timesteps.astype(np.int64), sigmas


def flow_train_sigmas(p: dict) -> np.ndarray:
    """The flow classes' training sigmas (float32, shifted unless the shift is dynamic)."""
    total = p["num_train_timesteps"]
    sigmas = np.linspace(1, total, total, dtype=F32)[::-1].copy() / total
    if not p.get("use_dynamic_shifting", False):
        shift = p["shift"]
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas


def _time_shift(p: dict, mu: float, t: np.ndarray) -> np.ndarray:
    if p["time_shift_type"] == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)
    return mu / (mu + (1 / t - 1) ** 1.0)


def _flow_euler(setup: SchedulerSetup, n: int, custom_sigmas=None, mu=None):
    p = setup.params
    total = p["num_train_timesteps"]
    train = flow_train_sigmas(p)
    sigma_min, sigma_max = train[-1].item(), train[0].item()
    if custom_sigmas is None:
        sigmas = np.linspace(sigma_max * total, sigma_min * total, n) / total
    else:
        sigmas = np.array(custom_sigmas).astype(F32)
    if p["use_dynamic_shifting"]:
        sigmas = _time_shift(p, mu, sigmas)
    else:
        sigmas = p["shift"] * sigmas / (1 + (p["shift"] - 1) * sigmas)
    if p["shift_terminal"]:
        one_minus_z = 1 - sigmas
        scale_factor = one_minus_z[-1] / (1 - p["shift_terminal"])
        sigmas = 1 - one_minus_z / scale_factor
    if p["use_karras_sigmas"]:
        sigmas = _karras(sigmas, n, *_configured_ends(setup))
    elif p["use_exponential_sigmas"]:
        sigmas = _exponential(sigmas, n, *_configured_ends(setup))
    sigmas = np.asarray(sigmas).astype(F32)
    timesteps = sigmas * F32(total)
    return timesteps, np.concatenate([sigmas, np.zeros(1, F32)])


def _flow_heun(setup: SchedulerSetup, n: int, **_):
    p = setup.params
    total, shift = p["num_train_timesteps"], p["shift"]
    train = flow_train_sigmas(p)
    sigma_min, sigma_max = train[-1].item(), train[0].item()
    sigmas = np.linspace(sigma_max * total, sigma_min * total, n) / total
    sigmas = (shift * sigmas / (1 + (shift - 1) * sigmas)).astype(F32)
    timesteps = sigmas * F32(total)
    return _interleave(timesteps, tail=0), _interleave(np.concatenate([sigmas, np.zeros(1, F32)]))


_BUILD = {
    "EulerDiscreteScheduler": _euler,
    "EulerAncestralDiscreteScheduler": _euler_ancestral,
    "HeunDiscreteScheduler": _heun,
    "LMSDiscreteScheduler": _lms,
    "DDIMScheduler": _ddim,
    "PNDMScheduler": _pndm,
    "UniPCMultistepScheduler": _unipc,
    "DPMSolverMultistepScheduler": _dpm_multistep,
    "DPMSolverSDEScheduler": _dpm_sde,
    "KDPM2DiscreteScheduler": _kdpm2,
    "FlowMatchEulerDiscreteScheduler": _flow_euler,
    "FlowMatchHeunDiscreteScheduler": _flow_heun,
}


def _evaluation_sigmas(class_name: str, timesteps: np.ndarray, laid_out, start: int) -> np.ndarray:
    """The sigma the scheduler holds at each evaluated position (`noising.current_sigma`)."""
    count = len(timesteps) - start
    positions = np.arange(start, start + count)
    if class_name in ("DDIMScheduler", "PNDMScheduler"):  # no sigmas: the training schedule at t
        alpha_bar = np.array([float(laid_out[int(round(float(t)))]) for t in timesteps[start:]], dtype=np.float64)
        return ((1.0 - alpha_bar) / alpha_bar) ** 0.5
    if class_name == "KDPM2DiscreteScheduler":  # second evaluations sit at the interpolated sigma
        sigmas, interpolated = laid_out
        second = (positions - start) % 2 == 1
        return np.where(second, interpolated[positions], sigmas[positions]).astype(np.float64)
    if class_name == "DPMSolverSDEScheduler":  # second evaluations sit at the midpoint of the step
        values = laid_out[positions].astype(np.float64)
        for k in range(1, count, 2):
            p = start + k
            values[k] = float(_dpm_sde_midpoint(laid_out[p - 1], laid_out[p]))
        return values
    return laid_out[positions].astype(np.float64)


def numpy_schedule(family, config: dict, name: str | None, n_steps: int, strength: float, image_seq_len: int) -> Schedule | None:
    """The run's schedule as `plan.prepare_scheduler` sets the diffusers scheduler up, or None where `resolve`
    leaves it to diffusers."""
    from diffdiff_cli.plan import dynamic_shift, empirical_shift, strength_cut

    setup = resolve(family, config, name)
    if setup is None:
        return None
    cls, p = setup.class_name, setup.params
    if cls == "DDIMScheduler" and n_steps > p["num_train_timesteps"]:
        return None  # diffusers refuses it with its own message
    if cls == "PNDMScheduler" and not p["skip_prk_steps"] and n_steps < 4:
        return None  # too few steps for its Runge-Kutta warm-up: diffusers fails, and so should this
    custom = _custom_sigmas(family, n_steps)
    mu = None
    if setup.attr("use_dynamic_shifting"):
        empirical = family.mu == "empirical"
        mu = empirical_shift(image_seq_len, n_steps) if empirical else dynamic_shift({**setup.extra, **p}, image_seq_len)
    timesteps, laid_out = _BUILD[cls](setup, n_steps, custom_sigmas=custom, mu=mu)
    order = ORDER.get(cls, 1)
    start = strength_cut(n_steps, strength, family.fractional_strength) * order
    flow = cls.startswith("FlowMatch")
    total = p["num_train_timesteps"]
    return Schedule(
        timesteps=timesteps[start:],
        order=order,
        sigmas=_evaluation_sigmas(cls, timesteps, laid_out, start),
        time_min=flow_train_sigmas(p)[-1].item() if flow else 0.0,
        per_timestep=1.0 / total if flow else 1.0,
        num_train_timesteps=total,
    )
