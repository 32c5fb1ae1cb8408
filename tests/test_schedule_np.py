"""The numpy schedule (`schedule_np`) gives the plan diffusers' own schedulers give, and `plan` imports no torch.

Every comparison is against `plan.schedule_run`, the path `edit` samples with: the same evaluated timesteps
(exactly where diffusers holds integers, to float32 rounding where it computes in float32), the same sigma
at every evaluation (rel 1e-6), the same thresholds, order and time axis.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffdiff_cli
from diffdiff_cli.families import FAMILIES, Family
from diffdiff_cli.models.builtin import FLUX_SCHEDULER, SD3_SCHEDULER, SD15_SCHEDULER, SDXL_SCHEDULER
from diffdiff_cli.plan import plan_schedule, schedule_run
from diffdiff_cli.schedule_np import DEFAULTS, alphas_cumprod, numpy_schedule, resolve, scheduler_setup, torch_linspace_f32
from diffdiff_cli.schedulers import SCHEDULERS

MODELS = Path(diffdiff_cli.__file__).parent / "models"
SHIPPED = {
    **{name: json.loads((MODELS / "configs" / name / "scheduler" / "scheduler_config.json").read_text())
       for name in ("sd15", "sd21", "sdxl", "sdxl-refiner")},
    "demo": json.loads((MODELS / "demo" / "scheduler" / "scheduler_config.json").read_text()),
}
DISCRETE_CONFIGS = {"builtin-sd15": SD15_SCHEDULER, "builtin-sdxl": SDXL_SCHEDULER, **SHIPPED}
NAMES = [None, *SCHEDULERS]
FLOAT32_ROUNDING = 2.5e-7  # two units in the last place of a float32
# Continuous timesteps interpolate between float32 log-sigmas, and torch's float32 sqrt and log are not
# correctly rounded on every build (MKL here): one unit in the last place of a training sigma moves an
# interpolated timestep by up to ~2e-5. Allow two float32 units at t = 1000 (1.2e-4, 1.2e-7 of the axis).
TIMESTEP_ATOL = 1.25e-4


@pytest.fixture(autouse=True)
def reuse_built_schedulers(monkeypatch):
    """Building some diffusers schedulers costs ~0.5 s (KDPM2 sets up 1000 steps in its constructor): hand
    `schedule_run` a fresh deep copy of one built per (config, name, seed) instead."""
    import diffdiff_cli.schedulers as schedulers

    build = schedulers.make_scheduler

    def cached(config, name, seed=None):
        key = (json.dumps(config, sort_keys=True), name, seed)
        if key not in _BUILT:
            _BUILT[key] = build(config, name, seed)
        return copy.deepcopy(_BUILT[key])

    monkeypatch.setattr(schedulers, "make_scheduler", cached)


_BUILT: dict = {}


def assert_same_plan(family, config, name, steps, strength, latent=(8, 8), refiner_start=None):
    tokens = (latent[0] // family.patch) * (latent[1] // family.patch)
    computed = numpy_schedule(family, config, name, steps, strength, tokens)
    assert computed is not None, "expected the numpy path"
    scheduler, timesteps, want = schedule_run(family, config, name, steps, strength, "timestep", latent, seed=1, refiner_start=refiner_start)
    got = plan_schedule(family, config, name, steps, strength, "timestep", latent, seed=1, refiner_start=refiner_start)
    label = f"{config.get('_class_name')} {name} steps={steps} strength={strength}"
    assert computed.order == scheduler.order and len(got.evaluations) == len(want.evaluations), label
    assert got.steps == want.steps, label
    column = lambda plan, key: np.array([getattr(e, key) for e in plan.evaluations], dtype=np.float64)  # noqa: E731
    atol = 0.0 if family.flow or not timesteps.is_floating_point() else TIMESTEP_ATOL  # flow: sigma x 1000, no interpolation
    if timesteps.is_floating_point():
        np.testing.assert_allclose(column(got, "timestep"), column(want, "timestep"), rtol=FLOAT32_ROUNDING, atol=atol, err_msg=label)
        np.testing.assert_allclose(column(got, "time"), column(want, "time"), rtol=FLOAT32_ROUNDING, atol=atol, err_msg=label)
    else:
        assert column(got, "timestep").tolist() == column(want, "timestep").tolist(), label
        assert column(got, "time").tolist() == column(want, "time").tolist(), label
    np.testing.assert_allclose(column(got, "sigma"), column(want, "sigma"), rtol=1e-6, atol=0, err_msg=label)
    np.testing.assert_allclose(got.thresholds, want.thresholds, rtol=0, atol=1e-6, err_msg=label)
    assert [e.step for e in got.evaluations] == [e.step for e in want.evaluations], label
    assert [e.denoiser for e in got.evaluations] == [e.denoiser for e in want.evaluations], label
    np.testing.assert_allclose(got.time_from, want.time_from, rtol=FLOAT32_ROUNDING, atol=atol, err_msg=label)
    assert got.time_to == want.time_to, label
    assert got.distinct_levels() == want.distinct_levels(), label


# --- the foundations, bit for bit -----------------------------------------------------------------------


@pytest.mark.parametrize("start, end, steps", [(0.0001, 0.02, 1000), (0.00085**0.5, 0.012**0.5, 1000), (0.3, 7.0, 33), (1.0, 0.02, 50), (0.1, 0.5, 17), (2.0, 3.0, 1)])
def test_torch_linspace_is_reproduced_bit_for_bit(start, end, steps):
    import torch

    assert np.array_equal(torch_linspace_f32(start, end, steps), torch.linspace(start, end, steps, dtype=torch.float32).numpy())


@pytest.mark.parametrize("settings", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": list(np.linspace(0.0001, 0.03, 500))},
])
def test_training_schedule_is_reproduced_bit_for_bit(settings):
    import diffusers

    config = {"_class_name": "DDIMScheduler", **settings}
    got = alphas_cumprod(scheduler_setup(config, None).params)
    assert np.array_equal(got, diffusers.DDIMScheduler.from_config(config).alphas_cumprod.numpy())


def test_parameter_tables_match_the_installed_diffusers():
    """Every parameter a class takes is known here with its default, so configs are read as from_config reads them."""
    import diffusers

    for class_name, defaults in DEFAULTS.items():
        parameters = inspect.signature(getattr(diffusers, class_name).__init__).parameters
        theirs = {k: p.default for k, p in parameters.items() if k != "self"}
        assert theirs == defaults, class_name


# --- parity: every scheduler name x the built-in and shipped configs ---------------------------------------


@pytest.mark.parametrize("config_name", list(DISCRETE_CONFIGS))
@pytest.mark.parametrize("name", NAMES)
def test_discrete_schedules_match_diffusers(config_name, name):
    config = DISCRETE_CONFIGS[config_name]
    # the shipped sd15 / sdxl folders differ from the built-ins only in keys no schedule reads: one point each
    points = ((20, 0.6),) if config_name in ("sd15", "sdxl", "sdxl-refiner") else ((4, 1.0), (20, 0.6), (1, 1.0))
    for steps, strength in points:
        assert_same_plan(FAMILIES["sd"], config, name, steps, strength)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", list(DISCRETE_CONFIGS))
@pytest.mark.parametrize("name", NAMES)
def test_discrete_schedules_match_diffusers_at_every_steps_and_strength(config_name, name):
    config = DISCRETE_CONFIGS[config_name]
    for steps in (1, 4, 20, 50):
        for strength in (1.0, 0.6, 0.3):
            if steps - min(int(steps * strength), steps) < steps:  # a step is left to run
                assert_same_plan(FAMILIES["sd"], config, name, steps, strength)


@pytest.mark.parametrize("name", [None, "euler", "heun"])
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_sd3_schedules_match_diffusers(name, steps):
    for strength in (1.0, 0.6, 0.3):
        if int(steps * strength) >= 1:
            assert_same_plan(FAMILIES["sd3"], SD3_SCHEDULER, name, steps, strength, latent=(16, 16))


@pytest.mark.parametrize("latent", [(8, 8), (64, 64), (96, 160), (128, 128)])
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_flux_schedules_match_diffusers_at_every_size(latent, steps):
    for name in (None, "euler"):
        for strength in (1.0, 0.6, 0.3):
            if int(steps * strength) >= 1:
                assert_same_plan(FAMILIES["flux"], FLUX_SCHEDULER, name, steps, strength, latent=latent)


@pytest.mark.parametrize("name", ["tiny-qwen-image", "tiny-z-image", "tiny-chroma", "tiny-flux2-klein", "tiny-kontext"])
@pytest.mark.parametrize("steps", [1, 4, 9, 28])
def test_the_2025_families_schedules_match_diffusers(name, steps):
    """Their pipelines' sigmas (numpy or float32 linspace), shifts (config or FLUX.2's empirical mu) and cuts."""
    from diffdiff_cli.models.builtin import builtin_configs

    family, config, _ = builtin_configs(name)
    for latent in ((8, 8), (64, 96), (128, 128)):
        for strength in (1.0, 0.6, 0.3):
            if int(steps - steps * strength) < steps:
                assert_same_plan(FAMILIES[family], config, None, steps, strength, latent=latent)


def test_refiner_evaluations_are_marked_alike():
    assert_same_plan(FAMILIES["sdxl"], SDXL_SCHEDULER, "heun", 20, 0.6, refiner_start=0.8)
    assert_same_plan(FAMILIES["sdxl"], SDXL_SCHEDULER, None, 30, 1.0, refiner_start=0.7)


# Settings a model's own scheduler config may carry (name None keeps them: a named scheduler drops some).
_SD = {k: SD15_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset")}
VARIANTS = [
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "leading"}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True}),
    ("EulerDiscreteScheduler", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"trained_betas": list(np.linspace(0.0001, 0.02, 1000) ** 1.1)}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "_use_default_values": ["timestep_spacing"]}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.1}),  # a key Heun keeps and reads
    ("HeunDiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "leading"}),
    ("HeunDiscreteScheduler", {"beta_schedule": "exp"}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "sigma_max": 3.0}),  # LMS ignores a configured end
    ("LMSDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("PNDMScheduler", {"skip_prk_steps": False}),
    ("PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "linspace"}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"timestep_spacing": "leading", "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"timestep_spacing": "trailing", "solver_type": "bh1"}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True, "final_sigmas_type": "sigma_min"}),
    ("DPMSolverMultistepScheduler", {"lambda_min_clipped": -5.1, "timestep_spacing": "leading"}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing", "solver_order": 3, "solver_type": "heun"}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverSDEScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "leading"}),
    ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    ("KDPM2DiscreteScheduler", {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
]


@pytest.mark.parametrize("class_name, settings", VARIANTS, ids=[f"{c}-{'-'.join(s)}" for c, s in VARIANTS])
def test_config_variants_match_diffusers(class_name, settings):
    config = {"_class_name": class_name, **_SD, **settings}
    for steps, strength in ((4, 1.0), (25, 0.6)):
        assert_same_plan(FAMILIES["sd"], config, None, steps, strength)


FLOW_VARIANTS = [
    ("sd3", {**SD3_SCHEDULER, "shift_terminal": 0.02}),
    ("sd3", {**SD3_SCHEDULER, "use_karras_sigmas": True}),
    ("sd3", {**SD3_SCHEDULER, "use_exponential_sigmas": True}),
    ("sd3", {**SD3_SCHEDULER, "use_dynamic_shifting": True, "time_shift_type": "linear"}),
    ("sd3", {**SD3_SCHEDULER, "use_dynamic_shifting": True, "base_image_seq_len": 64, "max_image_seq_len": 1024}),
    ("flux", {**FLUX_SCHEDULER, "shift_terminal": 0.1}),
    ("flux", {**FLUX_SCHEDULER, "time_shift_type": "linear"}),
    ("flux", {**FLUX_SCHEDULER, "use_dynamic_shifting": False}),
    ("flux", {**FLUX_SCHEDULER, "use_karras_sigmas": True}),
]


@pytest.mark.parametrize("family, config", FLOW_VARIANTS)
def test_flow_config_variants_match_diffusers(family, config):
    for steps, strength in ((4, 1.0), (28, 0.6)):
        assert_same_plan(FAMILIES[family], config, None, steps, strength, latent=(64, 48))


# --- the coverage rule --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShiftedFamily(Family):
    sigma_shift: float = 1.0  # a family option schedule_np does not know


FALLBACKS = [
    ("sd", {"_class_name": "EulerDiscreteScheduler", **_SD, "use_beta_sigmas": True}, None, "beta sigmas"),
    ("sd", {"_class_name": "DDIMScheduler", **_SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, None, "zero SNR DDIM"),
    ("sd", {"_class_name": "EulerDiscreteScheduler", **_SD, "rescale_betas_zero_snr": True}, None, "zero SNR Euler"),
    ("sd", {"_class_name": "DEISMultistepScheduler", **_SD}, None, "a class not implemented here"),
    ("sd", {"_class_name": "DPMSolverMultistepScheduler", **_SD, "use_exponential_sigmas": True}, None, "truncated exponential timesteps"),
    ("sd", {"_class_name": "UniPCMultistepScheduler", **_SD, "use_exponential_sigmas": True}, None, "truncated UniPC timesteps"),
    ("sd", {"_class_name": "DPMSolverMultistepScheduler", **_SD, "use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, None,
     "truncated cosine karras timesteps"),
    ("sd", {"_class_name": "UniPCMultistepScheduler", **_SD, "use_flow_sigmas": True, "prediction_type": "flow_prediction"}, None, "flow UniPC"),
    ("sd", {"_class_name": "EulerDiscreteScheduler", **_SD, "timestep_spacing": "sideways"}, None, "an unknown spacing"),
    ("sd", {"_class_name": "DPMSolverMultistepScheduler", **_SD, "algorithm_type": "dpmsolver"}, None, "a deprecated algorithm"),
    ("sd3", {**SD3_SCHEDULER, "invert_sigmas": True}, None, "inverted sigmas"),
]


@pytest.mark.parametrize("family, config, name, why", FALLBACKS, ids=[f[3] for f in FALLBACKS])
def test_settings_not_implemented_fall_back_to_diffusers(family, config, name, why):
    assert resolve(FAMILIES[family], config, name) is None
    try:
        _, _, want = schedule_run(FAMILIES[family], config, name, 10, 0.6, "timestep", (16, 16), seed=1)
    except Exception as error:  # diffusers refuses it: so does the plan, with the same error
        with pytest.raises(type(error)):
            plan_schedule(FAMILIES[family], config, name, 10, 0.6, "timestep", (16, 16), seed=1)
        return
    got = plan_schedule(FAMILIES[family], config, name, 10, 0.6, "timestep", (16, 16), seed=1)
    assert got == want  # the very same plan: it came from the same diffusers scheduler


def test_families_and_family_options_not_known_here_fall_back():
    sd = FAMILIES["sd"]
    assert resolve(sd, SD15_SCHEDULER, "euler") is not None
    assert resolve(dataclasses.replace(sd, name="a-future-family"), SD15_SCHEDULER, "euler") is None
    assert resolve(ShiftedFamily(**dataclasses.asdict(sd)), SD15_SCHEDULER, "euler") is not None  # option at its default
    assert resolve(ShiftedFamily(**dataclasses.asdict(sd), sigma_shift=3.0), SD15_SCHEDULER, "euler") is None


def test_named_schedulers_drop_the_foreign_keys_as_make_scheduler_does():
    karras_config = {**SD15_SCHEDULER, "_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}
    assert scheduler_setup(karras_config, None).params["use_karras_sigmas"] is True
    assert scheduler_setup(karras_config, "euler").params["use_karras_sigmas"] is False
    assert_same_plan(FAMILIES["sd"], karras_config, "euler", 12, 1.0)
    assert_same_plan(FAMILIES["sd"], karras_config, None, 12, 1.0)


# --- plan and map preview import neither torch nor diffusers --------------------------------------------------

_PLAN_CHILD = """
import json, sys
from diffdiff_cli.cli import main
reports = []
for args in {runs!r}:
    try:
        main(args)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
heavy = [m for m in ("torch", "diffusers", "transformers", "torchsde", "scipy") if m in sys.modules]
print("HEAVY", heavy, file=sys.stderr)
"""


def test_plan_and_map_preview_import_neither_torch_nor_diffusers(tmp_path):
    from PIL import Image

    gradient = tmp_path / "gradient.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))).save(gradient)
    runs = [
        ["plan", "--map", str(gradient), "--steps", "16", "--strength", "0.625", "--scheduler", "dpmpp_2m_karras", "--json"],
        ["plan", "--model", "tiny-flux", "--map", str(gradient), "--steps", "8", "--json"],
        ["plan", "--model", "tiny-sdxl", "--scheduler", "kdpm2", "--refiner", "tiny-sdxl-refiner", "--steps", "10", "--json"],
        ["map", "preview", str(gradient), str(gradient), "-o", str(tmp_path / "preview.png"), "--scheduler", "dpmpp_sde"],
    ]
    done = subprocess.run([sys.executable, "-c", _PLAN_CHILD.format(runs=runs)], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert "HEAVY []" in done.stderr, done.stderr
    assert (tmp_path / "preview.png").is_file()
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 3
    # what plan printed is the schedule the diffusers scheduler of an edit has
    _, _, want = schedule_run(FAMILIES["sd"], SD15_SCHEDULER, "dpmpp_2m_karras", 16, 0.625, "timestep", (8, 8))
    printed = reports[0]["evaluations"]
    assert [row["timestep"] for row in printed] == [e.timestep for e in want.evaluations]
    np.testing.assert_allclose([row["sigma"] for row in printed], [e.sigma for e in want.evaluations], rtol=1e-6)
    assert reports[2]["model_evaluations"] == 19 and {row["denoiser"] for row in reports[2]["evaluations"]} == {"base", "refiner"}
