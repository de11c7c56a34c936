"""The candidate's share over time: warm gate, steps, analysis, rollback (pure `next_step`)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.planning.canary import AnalysisResult, StepDecision, WarmState, next_step
from kserve_operator.planning.canary_checks import CheckReading, judge
from kserve_operator.resources.canary import CanarySpec, CanaryStatus
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason
from tests.unit.operator.canary_shapes import canary_spec

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
WARM = WarmState(True, "ModelPrewarm models/torch-mnist-v2 is Warm")
COLD = WarmState(False, "ModelPrewarm models/torch-mnist-v2 (phase Warming)")
STEPS = {"weights": [10, 50], "interval": "1m", "analysis": {"query": "errors", "max": 0.05, "failureLimit": 2}}


def stepped(**changes: Any) -> CanarySpec:
    return canary_spec(**{"percent": 50, "steps": STEPS, **changes})


def after(decision: StepDecision, status: CanaryStatus | None = None) -> CanaryStatus:
    """The status a reconcile writes for `decision` (only what next_step reads back)."""
    status = status or CanaryStatus()
    conditions = ({"type": "Progressing", "reason": decision.reason, "message": decision.message},)
    return CanaryStatus(
        phase=decision.phase, percent=decision.percent, step=decision.step,
        last_step_time=decision.last_step_time, last_check_time=decision.last_check_time,
        failed_checks=decision.failed_checks, rolled_back_generation=decision.rolled_back_generation,
        conditions=conditions,
    )


def read(spec: CanarySpec, value: float | None = None, error: str | None = None) -> AnalysisResult:
    """The analysis pass of a one-query spec whose query answered `value` (or `error`)."""
    assert spec.steps is not None and spec.steps.analysis is not None
    return judge(spec.steps.analysis.checks, [CheckReading(value=value, error=error)])


def minutes(n: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=n)


def test_without_steps_the_percent_applies_at_once() -> None:
    for percent, phase in ((0, CanaryPhase.ACTIVE), (30, CanaryPhase.ACTIVE), (100, CanaryPhase.PROMOTED)):
        decision = next_step(canary_spec(percent=percent), CanaryStatus(), 1, None, None, T0)
        assert (decision.percent, decision.phase, decision.requeue_after) == (percent, phase, None)


def test_require_warm_holds_at_zero_then_releases() -> None:
    spec = canary_spec(percent=30, requireWarm=True)
    held = next_step(spec, CanaryStatus(percent=0), 1, COLD, None, T0)
    assert (held.percent, held.phase, held.reason) == (0, CanaryPhase.WAITING_FOR_MODEL, CanaryReason.WAITING_FOR_MODEL)
    assert "ModelPrewarm models/torch-mnist-v2 (phase Warming)" in held.message
    released = next_step(spec, after(held), 1, WARM, None, minutes(1))
    assert (released.percent, released.phase) == (30, CanaryPhase.ACTIVE)


def test_a_model_that_stops_being_warm_takes_the_candidate_back_to_zero() -> None:
    spec = canary_spec(percent=30, requireWarm=True)
    decision = next_step(spec, CanaryStatus(percent=30, phase=CanaryPhase.ACTIVE), 1, COLD, None, T0)
    assert decision.percent == 0 and decision.phase == CanaryPhase.WAITING_FOR_MODEL


def test_steps_walk_up_with_passing_checks() -> None:
    spec = stepped()
    first = next_step(spec, CanaryStatus(), 1, None, None, T0)
    assert (first.percent, first.phase, first.step, first.requeue_after) == (10, CanaryPhase.PROGRESSING, 1, 60)
    status = after(first)
    early = next_step(spec, status, 1, None, None, minutes(0.5))
    assert (early.percent, early.wants_analysis, early.requeue_after) == (10, False, 30)
    due = next_step(spec, status, 1, None, None, minutes(1))
    assert due.wants_analysis and due.percent == 10
    passed = next_step(spec, status, 1, None, read(spec, 0.01), minutes(1))
    assert (passed.percent, passed.phase, passed.step, passed.failed_checks) == (50, CanaryPhase.ACTIVE, 2, 0)
    settled = next_step(spec, after(passed), 1, None, None, minutes(30))
    assert settled.percent == 50 and not settled.wants_analysis and settled.requeue_after is None


def test_failing_checks_roll_back_and_stay_rolled_back_until_the_spec_changes() -> None:
    spec = stepped()
    status = after(next_step(spec, CanaryStatus(), 7, None, None, T0))
    once = next_step(spec, status, 7, None, read(spec, 0.2), minutes(1))
    assert (once.percent, once.phase, once.reason, once.failed_checks) == (
        10, CanaryPhase.PROGRESSING, CanaryReason.ANALYSIS_FAILED, 1)
    assert "0.2 is above the maximum 0.05" in once.message
    waiting = next_step(spec, after(once), 7, None, None, minutes(1.5))
    assert waiting.reason == CanaryReason.ANALYSIS_FAILED and waiting.message == once.message  # no write per tick
    twice = next_step(spec, after(once), 7, None, read(spec, 0.3), minutes(2))
    assert (twice.percent, twice.phase, twice.rolled_back_generation) == (0, CanaryPhase.ROLLED_BACK, 7)
    stuck = next_step(spec, after(twice), 7, None, read(spec, 0.0), minutes(60))
    assert (stuck.percent, stuck.phase) == (0, CanaryPhase.ROLLED_BACK)
    again = next_step(spec, after(twice), 8, None, None, minutes(61))  # the spec changed
    assert (again.percent, again.phase, again.rolled_back_generation) == (10, CanaryPhase.PROGRESSING, None)


def test_only_consecutive_failures_count() -> None:
    spec = stepped(steps={**STEPS, "weights": [10, 20, 30, 50]})
    status = after(next_step(spec, CanaryStatus(), 1, None, None, T0))
    status = after(next_step(spec, status, 1, None, read(spec, 1.0), minutes(1)))
    assert status.failed_checks == 1 and status.percent == 10
    status = after(next_step(spec, status, 1, None, read(spec, 0.0), minutes(2)))
    assert status.failed_checks == 0 and status.percent == 20
    status = after(next_step(spec, status, 1, None, read(spec, 1.0), minutes(3)))
    assert status.failed_checks == 1 and status.phase == CanaryPhase.PROGRESSING


def test_an_erroring_query_holds_without_passing_or_failing() -> None:
    spec = stepped()
    status = after(next_step(spec, CanaryStatus(), 1, None, None, T0))
    held = next_step(spec, status, 1, None, read(spec, error="Prometheus is unreachable"), minutes(1))
    assert (held.percent, held.reason, held.failed_checks) == (10, CanaryReason.METRICS_UNAVAILABLE, 0)
    assert "not counted as a pass" in held.message
    assert held.last_check_time == minutes(1) and held.requeue_after == 60
    assert not next_step(spec, after(held), 1, None, None, minutes(1.5)).wants_analysis


def test_min_bound_and_no_analysis() -> None:
    spec = stepped(steps={"weights": [10, 50], "interval": "30s", "analysis": {"query": "q", "min": 0.99}})
    status = after(next_step(spec, CanaryStatus(), 1, None, None, T0))
    failed = next_step(spec, status, 1, None, read(spec, 0.9), minutes(1))
    assert failed.phase == CanaryPhase.ROLLED_BACK and "below the minimum 0.99" in failed.message  # failureLimit 1
    blind = stepped(steps={"weights": [10, 50], "interval": "30s"})
    status = after(next_step(blind, CanaryStatus(), 1, None, None, T0))
    assert next_step(blind, status, 1, None, None, minutes(1)).percent == 50


def test_the_ladder_never_passes_percent_and_going_down_is_immediate() -> None:
    assert canary_spec(percent=30, steps={**STEPS, "weights": [10, 50, 100]}).ladder() == (10, 30)
    assert canary_spec(percent=50, steps={**STEPS, "weights": [0, 10]}).ladder() == (10, 50)
    assert canary_spec(percent=0, steps=STEPS).ladder() == ()
    spec = stepped(percent=5)
    down = next_step(spec, CanaryStatus(percent=10, phase=CanaryPhase.PROGRESSING), 2, None, None, T0)
    assert (down.percent, down.phase) == (5, CanaryPhase.ACTIVE)


def test_a_lost_step_time_restarts_the_wait_instead_of_stepping() -> None:
    decision = next_step(stepped(), CanaryStatus(percent=10, phase=CanaryPhase.PROGRESSING), 1, None, None, T0)
    assert decision.percent == 10 and decision.last_step_time == T0 and not decision.wants_analysis


outcomes = st.lists(st.one_of(st.none(), st.floats(0, 0.2)), min_size=1, max_size=30)


@given(outcomes=outcomes, percent=st.integers(0, 100),
       weights=st.lists(st.integers(0, 100), min_size=1, max_size=5, unique=True).map(sorted))
def test_the_share_is_always_on_the_ladder_and_rollback_sticks(
    outcomes: list[float | None], percent: int, weights: list[int],
) -> None:
    spec = canary_spec(percent=percent, steps={"weights": weights, "interval": "1m",
                                               "analysis": {"query": "q", "max": 0.1, "failureLimit": 3}})
    allowed = {0, *spec.ladder()}
    status = CanaryStatus()
    rolled_back = False
    for minute, outcome in enumerate(outcomes):
        now = minutes(minute)
        decision = next_step(spec, status, 1, None, None, now)
        if decision.wants_analysis:
            result = read(spec, error="down") if outcome is None else read(spec, outcome)
            decision = next_step(spec, status, 1, None, result, now)
        assert decision.percent in allowed and decision.percent <= percent
        assert decision.percent >= status.percent or decision.phase == CanaryPhase.ROLLED_BACK
        if rolled_back:
            assert decision.phase == CanaryPhase.ROLLED_BACK and decision.percent == 0
        rolled_back = decision.phase == CanaryPhase.ROLLED_BACK
        status = after(decision, status)


def test_stored_times_are_rounded_up_so_no_interval_is_cut_short() -> None:
    spec = stepped()
    start = T0 + datetime.timedelta(seconds=0.4)
    first = next_step(spec, CanaryStatus(), 1, None, None, start)
    assert first.last_step_time == T0 + datetime.timedelta(seconds=1)  # status keeps whole seconds
    assert first.requeue_after == pytest.approx(60.6)
    status = after(first)
    early = next_step(spec, status, 1, None, None, start + datetime.timedelta(seconds=60))
    assert not early.wants_analysis and early.requeue_after == pytest.approx(0.6)
    assert next_step(spec, status, 1, None, None, start + datetime.timedelta(seconds=60.6)).wants_analysis
