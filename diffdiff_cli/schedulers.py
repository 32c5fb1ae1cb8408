"""Sampler names users know, mapped to diffusers scheduler classes (names only: no diffusers import here)."""

from __future__ import annotations

import inspect

from diffdiff_cli.errors import InputError

# name -> (diffusers class name, config overrides, name A1111 writes in its "Sampler:" field)
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}, "DPM++ SDE"),
    "kdpm2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
}

# The same names for flow-matching models (SD3, Flux).
FLOW_SCHEDULERS: dict[str, str] = {
    "euler": "FlowMatchEulerDiscreteScheduler",
    "heun": "FlowMatchHeunDiscreteScheduler",
}

# Keys a scheduler config may carry from another class that would change the new class's behaviour.
_FOREIGN_KEYS = ("use_karras_sigmas", "algorithm_type", "solver_order", "skip_prk_steps")


def check_scheduler_name(name: str | None) -> None:
    if name is not None and name not in SCHEDULERS:
        raise InputError(f"--scheduler: unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


def sampler_label(name: str | None, scheduler_class: str) -> str:
    """The A1111-style sampler label for metadata."""
    if scheduler_class.startswith("FlowMatch"):
        return "Euler" if name in (None, "euler") else "Heun"
    if name is not None:
        return SCHEDULERS[name][2]
    for _, (cls, overrides, label) in SCHEDULERS.items():
        if cls == scheduler_class and not overrides.get("use_karras_sigmas"):
            return label
    return scheduler_class


def make_scheduler(config: dict, name: str | None, seed: int | None = None):
    """A fresh scheduler: the model's own (name None) or the named one, built from the model's config.

    Schedulers with their own noise sampler (DPM++ SDE) take the run's seed, so --seed reproduces them.
    """
    import diffusers

    if name is None:
        cls, base, overrides = getattr(diffusers, config["_class_name"]), dict(config), {}
    elif config["_class_name"].startswith("FlowMatch"):
        cls, base, overrides = getattr(diffusers, FLOW_SCHEDULERS[name]), dict(config), {}
    else:
        class_name, overrides, _ = SCHEDULERS[name]
        cls = getattr(diffusers, class_name)
        base = {k: v for k, v in config.items() if k not in _FOREIGN_KEYS}
    if seed is not None and "noise_sampler_seed" in inspect.signature(cls.__init__).parameters:
        overrides = {**overrides, "noise_sampler_seed": seed}
    return cls.from_config(base, **overrides)
