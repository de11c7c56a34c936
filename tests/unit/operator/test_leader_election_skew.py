"""Clock skew between replicas changes no leader-election decision (planning.leader_election).

A holder whose wall clock is hours off writes renewTimes hours off; a candidate whose monotonic
clock started elsewhere reads other numbers. client-go's rule, which the planning follows: only
*changes* of the record count, timed on the candidate's own monotonic clock. So a candidate takes
a Lease exactly one duration after it last saw it change, whatever either clock says. The real
control plane runs the same with two LeaderElectors an hour apart: tests/realcluster/test_faults_real.py.
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.planning.leader_election import (
    Action,
    ElectionTimings,
    Observation,
    decide,
    expires_at,
    micro_time,
    observe,
    renew_budget,
)
from kserve_operator.resources.lease import LeaseRecord

TIMINGS = ElectionTimings()
EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
HOLDER, CANDIDATE = "holder_0001", "candidate_0002"
SKEWS = st.floats(-30 * 86400, 30 * 86400)  # up to a month either way
STEPS = st.lists(st.tuples(st.floats(0.01, 6.0), st.booleans()), min_size=1, max_size=40)


def renewed_at(true_time: float, skew: float, rv: int) -> LeaseRecord:
    """The record a holder whose clock is `skew` s off writes at `true_time`."""
    wall = EPOCH + datetime.timedelta(seconds=true_time + skew)
    return LeaseRecord(holder=HOLDER, duration_seconds=15, acquire_time=micro_time(EPOCH), renew_time=micro_time(wall),
                       transitions=0, resource_version=str(rv))


def decisions(steps: list[tuple[float, bool]], skew: float, origin: float) -> list[tuple[Action, float]]:
    """What the candidate decides at each look: the holder renews (or not) before each one; the
    candidate's monotonic clock reads `origin` at true time 0."""
    true_time, rv = 0.0, 1
    record = renewed_at(true_time, skew, rv)
    observation: Observation | None = None
    made = []
    for gap, renews in steps:
        true_time += gap
        if renews:
            rv += 1
            record = renewed_at(true_time, skew, rv)
        observation = observe(observation, record, origin + true_time)
        decision = decide(CANDIDATE, observation, origin + true_time, leading=False, timings=TIMINGS)
        made.append((decision.action, round(decision.wait, 6)))
    return made


@given(steps=STEPS, skew_a=SKEWS, skew_b=SKEWS, origin=st.floats(0, 1e7))
def test_neither_the_holders_wall_clock_nor_the_candidates_clock_origin_changes_a_decision(
        steps: list[tuple[float, bool]], skew_a: float, skew_b: float, origin: float) -> None:
    assert decisions(steps, skew_a, 0.0) == decisions(steps, skew_b, origin)


@given(steps=STEPS, skew=SKEWS)
def test_a_live_lease_is_never_taken_and_a_dead_one_exactly_one_duration_after_its_last_change(
        steps: list[tuple[float, bool]], skew: float) -> None:
    """The candidate takes it iff the record it sees has not changed for a whole duration (15 s),
    counted from the look that first saw it: a holder renewing every 2 s is never taken over."""
    made = decisions(steps, skew, 0.0)
    true_time, changed_seen = 0.0, None
    for (gap, renews), (action, _) in zip(steps, made, strict=True):
        true_time += gap
        if renews or changed_seen is None:
            changed_seen = true_time
        assert action is (Action.ACQUIRE if true_time - changed_seen >= TIMINGS.lease_duration else Action.WAIT)


@given(sent=st.floats(0, 1e7), seen_after=st.floats(0, 5), waited=st.floats(0, 30), skew=SKEWS)
def test_a_leader_stops_by_its_own_clock_before_any_candidate_may_take_over(
        sent: float, seen_after: float, waited: float, skew: float) -> None:
    """The leader's deadline counts from when it *sent* its last renewal; a candidate can only have
    seen that renewal later, so its takeover (one duration after) comes at least 5 s after the leader
    stopped, whatever renewTime the leader's clock wrote."""
    budget = renew_budget(sent, sent + waited, TIMINGS)
    assert budget == pytest.approx(TIMINGS.renew_deadline - waited, abs=1e-6)
    stops_at = sent + TIMINGS.renew_deadline
    seen = Observation(renewed_at(sent, skew, 2), since=sent + seen_after)
    assert expires_at(seen, TIMINGS) - stops_at >= TIMINGS.lease_duration - TIMINGS.renew_deadline - 1e-6
