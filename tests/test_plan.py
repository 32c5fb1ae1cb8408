"""The threshold schedule: pure functions and the evaluation lists read off real diffusers schedulers."""

from __future__ import annotations

import numpy as np
import pytest

from diffdiff_cli.errors import InputError
from diffdiff_cli.models.builtin import SD15_SCHEDULER
from diffdiff_cli.plan import (
    free_mask,
    plan_for_scheduler,
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
    plan = plan_for_scheduler(scheduler, timesteps, "timestep")

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
    plan = plan_for_scheduler(scheduler, timesteps, "steps")
    assert plan.steps == 6
    for e in plan.evaluations:
        assert e.threshold == pytest.approx(1 - e.step / 6)


def test_distinct_levels_follow_the_rule_of_each_schedule():
    from diffdiff_cli.dither import strength_levels

    scheduler = make_scheduler(SD15_SCHEDULER, "heun")
    timesteps = prepare_scheduler(scheduler, 5, 1.0)
    plan = plan_for_scheduler(scheduler, timesteps)
    assert len(plan.evaluations) == 9  # Heun: 2 evaluations a step, the last step once
    thresholds = sorted(set(plan.thresholds.tolist()))
    # the node's rule: a pixel enters at the level of the evaluation that frees it (every threshold is a
    # level; 0 = kept, which the last threshold here is too)
    assert strength_levels(plan.thresholds, "entry").tolist() == pytest.approx(sorted({0.0, *thresholds}))
    assert plan.distinct_levels() == len({0.0, *thresholds}) == 5
    # the paper's rule (input reset only): pinning at the first evaluation is a no-op, the first two merge
    steps_plan = plan_for_scheduler(scheduler, timesteps, "steps")
    d = sorted(set(steps_plan.thresholds.tolist()), reverse=True)
    assert strength_levels(steps_plan.thresholds, "last_reset").tolist() == pytest.approx(sorted({0.0, 1.0, *d[:-1]}))
    assert steps_plan.distinct_levels() == len({0.0, 1.0, *d[:-1]})


def test_noising_reads_the_latent_convention_of_the_scheduler():
    assert DiscreteTimeNoising(make_scheduler(SD15_SCHEDULER, "euler")).variance_exploding
    assert not DiscreteTimeNoising(make_scheduler(SD15_SCHEDULER, "ddim")).variance_exploding


def test_strength_that_runs_no_step_is_a_usage_error():
    assert strength_cut(10, 0.5) == 5
    with pytest.raises(InputError, match="--strength"):
        strength_cut(4, 0.2)


def test_unknown_schedule_is_rejected():
    scheduler = make_scheduler(SD15_SCHEDULER, "euler")
    timesteps = prepare_scheduler(scheduler, 3, 1.0)
    with pytest.raises(InputError, match="--schedule"):
        plan_for_scheduler(scheduler, timesteps, "sideways")
