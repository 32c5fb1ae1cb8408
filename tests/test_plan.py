"""The threshold schedule: pure functions and the evaluation lists read off real diffusers schedulers."""

from __future__ import annotations

import numpy as np
import pytest

from diffdiff_cli.errors import InputError
from diffdiff_cli.models.builtin import SD15_SCHEDULER
from diffdiff_cli.plan import (
    free_mask,
    plan_run,
    prepare_scheduler,
    step_indices,
    step_thresholds,
    strength_cut,
    timestep_thresholds,
)
from diffdiff_cli.sample.noising import DiscreteTimeNoising
from diffdiff_cli.schedulers import SCHEDULERS, make_scheduler

ALL_SCHEDULERS = [None, *SCHEDULERS]


def test_timestep_thresholds_follow_the_formula():
    times = [999.0, 750.0, 500.0, 1.0]
    got = timestep_thresholds(times, time_from=999.0, time_to=0.0)
    assert got == pytest.approx([1.0, 750 / 999, 500 / 999, 1 / 999])
    assert timestep_thresholds([5.0, 3.0], 5.0, 1.0) == pytest.approx([1.0, 0.5])


def test_free_mask_uses_greater_or_equal_and_never_frees_black():
    change = np.array([0.0, 0.25, 0.5, 1.0])
    assert free_mask(change, 1.0).tolist() == [False, False, False, True]  # white is free at the first call
    assert free_mask(change, 0.5).tolist() == [False, False, True, True]
    assert free_mask(change, 0.0).tolist() == [False, True, True, True]  # black stays pinned even at tau 0


def test_step_indices_pair_order_two_evaluations():
    assert step_indices(1, 4).tolist() == [0, 1, 2, 3]
    assert step_indices(2, 7).tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_steps_schedule_matches_the_papers_rule():
    n = 5
    thresholds = step_thresholds(np.arange(n), n)
    change = np.linspace(0, 1, 101)
    for i, tau in enumerate(thresholds):
        pinned_paper = (1 - change) > i / n
        assert np.array_equal(free_mask(change, tau), ~pinned_paper & (change > 0))


@pytest.mark.parametrize("name", ALL_SCHEDULERS)
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_plan_thresholds_equal_the_formula_at_every_evaluation(name, strength):
    steps = 7
    scheduler = make_scheduler(SD15_SCHEDULER, name)
    timesteps = prepare_scheduler(scheduler, steps, strength)
    plan = plan_run(timesteps, scheduler.order, DiscreteTimeNoising(scheduler), "timestep")

    # every model evaluation, order-2 intermediates included, exactly the timesteps diffusers' img2img runs
    reference = make_scheduler(SD15_SCHEDULER, name)
    reference.set_timesteps(steps)
    start = (steps - min(int(steps * strength), steps)) * reference.order
    expected_t = [float(t) for t in reference.timesteps[start:]]
    assert [e.timestep for e in plan.evaluations] == pytest.approx(expected_t)

    t_from = expected_t[0]
    for e in plan.evaluations:
        assert e.threshold == pytest.approx((e.timestep - 0.0) / (t_from - 0.0))
    assert plan.evaluations[0].threshold == 1.0
    assert all(a.threshold >= b.threshold for a, b in zip(plan.evaluations, plan.evaluations[1:]))
    if scheduler.order == 2:
        assert len(plan.evaluations) == 2 * plan.steps - 1
    assert plan.steps == min(int(steps * strength), steps) + (1 if name in (None, "pndm") else 0)


@pytest.mark.parametrize("name", ["euler", "heun", "ddim"])
def test_steps_schedule_thresholds_by_step_index(name):
    scheduler = make_scheduler(SD15_SCHEDULER, name)
    timesteps = prepare_scheduler(scheduler, 6, 1.0)
    plan = plan_run(timesteps, scheduler.order, DiscreteTimeNoising(scheduler), "steps")
    assert plan.steps == 6
    for e in plan.evaluations:
        assert e.threshold == pytest.approx(1 - e.step / 6)


def test_distinct_levels_count_freeing_times_plus_kept():
    scheduler = make_scheduler(SD15_SCHEDULER, "heun")
    timesteps = prepare_scheduler(scheduler, 5, 1.0)
    plan = plan_run(timesteps, scheduler.order, DiscreteTimeNoising(scheduler))
    # Heun evaluates 9 times at 5 distinct thresholds; pinning at the first evaluation is a no-op, so
    # "freed first" and "freed second" end alike, and pixels below every threshold are kept: 5 outcomes
    assert len(plan.evaluations) == 9
    assert plan.distinct_levels() == 5


def test_sigma_of_reads_the_training_schedule():
    scheduler = make_scheduler(SD15_SCHEDULER, "euler")
    noising = DiscreteTimeNoising(scheduler)
    a = float(scheduler.alphas_cumprod[500])
    assert noising.sigma_of(500.0) == pytest.approx(((1 - a) / a) ** 0.5, rel=1e-6)
    assert noising.variance_exploding
    assert not DiscreteTimeNoising(make_scheduler(SD15_SCHEDULER, "ddim")).variance_exploding


def test_strength_that_runs_no_step_is_a_usage_error():
    assert strength_cut(10, 0.5) == 5
    with pytest.raises(InputError, match="--strength"):
        strength_cut(4, 0.2)


def test_unknown_schedule_is_rejected():
    scheduler = make_scheduler(SD15_SCHEDULER, "euler")
    timesteps = prepare_scheduler(scheduler, 3, 1.0)
    with pytest.raises(InputError, match="--schedule"):
        plan_run(timesteps, 1, DiscreteTimeNoising(scheduler), "sideways")
