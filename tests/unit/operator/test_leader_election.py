"""Leader election's decisions (planning.leader_election), as pure functions: no server, no clock."""

from __future__ import annotations

import dataclasses
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
    held_spec,
    micro_time,
    observe,
    released_spec,
    renew_budget,
)
from kserve_operator.resources.lease import LeaseRecord, parse_lease

TIMINGS = ElectionTimings()
WALL = datetime.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
ME, OTHER = "operator-a_0001", "operator-b_0002"


def record(holder: str = OTHER, *, duration: int | None = 15, renew: str = "2026-01-01T00:00:00.000000Z",
           transitions: int = 3, rv: str = "10") -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=duration, acquire_time="2025-12-31T00:00:00.000000Z",
                       renew_time=renew, transitions=transitions, resource_version=rv)


def seen(rec: LeaseRecord | None, since: float = 100.0) -> Observation:
    return Observation(rec, since)


def test_the_shipped_timings_are_client_go_s_and_valid() -> None:
    assert (TIMINGS.lease_duration, TIMINGS.renew_deadline, TIMINGS.retry_period) == (15.0, 10.0, 2.0)
    assert TIMINGS.problems() == []


@pytest.mark.parametrize(("timings", "complaint"), [
    (ElectionTimings(15, 15, 2), "renew deadline (15 s) must be shorter than the lease duration"),
    (ElectionTimings(15, 20, 2), "must be shorter than the lease duration"),
    (ElectionTimings(15, 2, 2), "must exceed 1.2 x the retry period"),
    (ElectionTimings(15.5, 10, 2), "whole number of seconds"),
    (ElectionTimings(0, 0.5, 0.1), "whole number of seconds >= 1"),
    (ElectionTimings(15, 10, 0), "retry period must be positive"),
])
def test_unsafe_timings_are_named(timings: ElectionTimings, complaint: str) -> None:
    assert any(complaint in problem for problem in timings.problems()), timings.problems()


def test_no_lease_a_candidate_creates_it_a_leader_has_lost_it() -> None:
    assert decide(ME, seen(None), 100.0, leading=False, timings=TIMINGS).action is Action.CREATE
    lost = decide(ME, seen(None), 100.0, leading=True, timings=TIMINGS)
    assert lost.action is Action.LOST and "deleted" in lost.reason


def test_a_live_lease_of_another_is_waited_on_until_it_expires_by_the_local_clock() -> None:
    observation = seen(record(OTHER), since=100.0)
    waiting = decide(ME, observation, 101.0, leading=False, timings=TIMINGS)
    assert waiting.action is Action.WAIT and waiting.wait == TIMINGS.retry_period
    # Near the expiry it wakes at the expiry itself, not on the next retry tick.
    assert decide(ME, observation, 114.5, leading=False, timings=TIMINGS).wait == pytest.approx(0.5)
    assert decide(ME, observation, 115.0, leading=False, timings=TIMINGS).action is Action.ACQUIRE


def test_expiry_ignores_the_holders_timestamps_so_clock_skew_cannot_matter() -> None:
    """A renewTime an hour in the past (a holder whose clock is behind) is not an expired lease:
    only the time this replica has seen the record unchanged counts."""
    skewed = record(OTHER, renew="2020-01-01T00:00:00.000000Z")
    assert decide(ME, seen(skewed, since=100.0), 100.1, leading=False, timings=TIMINGS).action is Action.WAIT
    future = record(OTHER, renew="2099-01-01T00:00:00.000000Z")  # a clock far ahead keeps nothing alive
    assert decide(ME, seen(future, since=100.0), 115.0, leading=False, timings=TIMINGS).action is Action.ACQUIRE


def test_the_records_own_duration_counts_and_a_missing_one_reads_as_ours() -> None:
    short = seen(record(OTHER, duration=1), since=100.0)
    assert decide(ME, short, 101.0, leading=False, timings=TIMINGS).action is Action.ACQUIRE
    assert expires_at(seen(record(OTHER, duration=None), since=100.0), TIMINGS) == 115.0


def test_observing_keeps_the_first_sight_until_the_record_changes() -> None:
    first = observe(None, record(OTHER, rv="1"), 100.0)
    relabelled = observe(first, record(OTHER, rv="2"), 108.0)  # a label edit: new resourceVersion only
    assert relabelled.since == 100.0 and relabelled.record is not None and relabelled.record.resource_version == "2"
    renewed = observe(relabelled, record(OTHER, renew="2026-01-01T00:00:02.000000Z", rv="3"), 110.0)
    assert renewed.since == 110.0
    assert observe(renewed, None, 111.0).since == 111.0  # deleted: a change
    assert observe(observe(None, None, 5.0), None, 9.0).since == 5.0


@given(since=st.floats(0, 1e6), reads=st.lists(st.floats(0, 100), min_size=1, max_size=20))
def test_a_record_that_never_changes_expires_exactly_one_duration_after_first_sight(
        since: float, reads: list[float]) -> None:
    observation = observe(None, record(OTHER), since)
    now = since
    for step in reads:
        now += step
        observation = observe(observation, record(OTHER), now)
        action = decide(ME, observation, now, leading=False, timings=TIMINGS).action
        assert action is (Action.ACQUIRE if now - since >= 15 else Action.WAIT)


def test_a_released_lease_is_taken_at_once() -> None:
    released = record("", duration=1)
    assert decide(ME, seen(released, since=100.0), 100.0, leading=False, timings=TIMINGS).action is Action.ACQUIRE


def test_a_leader_renews_its_own_and_has_lost_one_taken_or_released_by_hand() -> None:
    assert decide(ME, seen(record(ME)), 100.0, leading=True, timings=TIMINGS).action is Action.RENEW
    taken = decide(ME, seen(record(OTHER)), 100.0, leading=True, timings=TIMINGS)
    assert taken.action is Action.LOST and OTHER in taken.reason
    cleared = decide(ME, seen(record("")), 100.0, leading=True, timings=TIMINGS)
    assert cleared.action is Action.LOST and "released" in cleared.reason


def test_a_candidate_finding_its_own_identity_takes_it_back() -> None:
    assert decide(ME, seen(record(ME)), 100.0, leading=False, timings=TIMINGS).action is Action.ACQUIRE


def test_the_renew_budget_counts_from_when_the_last_renewal_was_sent() -> None:
    assert renew_budget(100.0, 104.0, TIMINGS) == 6.0
    assert renew_budget(100.0, 110.0, TIMINGS) <= 0
    # Sent at 100, so stored by the server at >= 100, so seen by any other replica at >= 100: a leader
    # that gives up at 110 stops 5 s before anyone may take over at 115.
    assert 100.0 + TIMINGS.renew_deadline < expires_at(seen(record(OTHER), since=100.0), TIMINGS)


def test_the_specs_written() -> None:
    created = held_spec(Action.CREATE, ME, None, WALL, TIMINGS)
    assert created == {"holderIdentity": ME, "leaseDurationSeconds": 15, "acquireTime": "2026-01-01T12:00:00.123456Z",
                       "renewTime": "2026-01-01T12:00:00.123456Z", "leaseTransitions": 0}
    taken = held_spec(Action.ACQUIRE, ME, record(OTHER, transitions=3), WALL, TIMINGS)
    assert taken["leaseTransitions"] == 4 and taken["acquireTime"] == micro_time(WALL)
    after_release = held_spec(Action.ACQUIRE, ME, record("", transitions=4), WALL, TIMINGS)
    assert after_release["leaseTransitions"] == 5
    mine = record(ME, transitions=4)
    renewed = held_spec(Action.RENEW, ME, mine, WALL, TIMINGS)
    assert renewed["leaseTransitions"] == 4 and renewed["acquireTime"] == mine.acquire_time
    assert renewed["renewTime"] == micro_time(WALL)
    with pytest.raises(ValueError, match="nothing to write"):
        held_spec(Action.WAIT, ME, mine, WALL, TIMINGS)
    released = released_spec(mine, WALL)
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == 4


def test_micro_time_is_utc_with_microseconds() -> None:
    east = WALL.astimezone(datetime.timezone(datetime.timedelta(hours=5)))
    assert micro_time(east) == "2026-01-01T12:00:00.123456Z"


def test_a_lease_written_by_hand_parses_without_errors() -> None:
    odd = parse_lease({"metadata": {"resourceVersion": 7}, "spec": {
        "holderIdentity": 5, "leaseDurationSeconds": "15", "leaseTransitions": -1, "renewTime": None}})
    assert odd == LeaseRecord(holder="", duration_seconds=None, acquire_time=None, renew_time=None, transitions=0,
                              resource_version="7")
    assert parse_lease({}).holder == ""
    full = parse_lease({"metadata": {"resourceVersion": "9"}, "spec": {
        "holderIdentity": ME, "leaseDurationSeconds": 15, "acquireTime": "a", "renewTime": "b",
        "leaseTransitions": 2}})
    assert full == dataclasses.replace(record(ME, transitions=2, rv="9"), acquire_time="a", renew_time="b")


def test_settings_leader_election_is_off_unless_asked_and_names_bad_timings() -> None:
    from kserve_operator.settings import parse_settings

    assert parse_settings([], env={}).leader_election is False
    on = parse_settings([], env={"LEADER_ELECT": "true", "POD_NAME": "kserve-operator-7d9f-abcde",
                                 "POD_NAMESPACE": "platform", "RETRY_PERIOD_SECONDS": "1"})
    assert on.leader_election and on.lease_namespace == "platform" and on.lease_name == "kserve-operator"
    assert on.election == ElectionTimings(15.0, 10.0, 1.0)
    pod, suffix = on.identity.rsplit("_", 1)
    assert pod == "kserve-operator-7d9f-abcde" and len(suffix) == 8
    assert parse_settings([], env={"POD_NAME": "p"}).identity != parse_settings([], env={"POD_NAME": "p"}).identity
    assert parse_settings(["--leader-elect"], env={}).leader_election
    with pytest.raises(SystemExit, match=r"renew deadline .* must be shorter than the lease duration"):
        parse_settings([], env={"RENEW_DEADLINE_SECONDS": "20"})
    with pytest.raises(SystemExit, match="RETRY_PERIOD_SECONDS must be positive"):
        parse_settings([], env={"RETRY_PERIOD_SECONDS": "0"})
    with pytest.raises(SystemExit, match=r"LEADER_ELECTION_NAMESPACE .* 'Bad_NS' is not a namespace name"):
        parse_settings([], env={"LEADER_ELECTION_NAMESPACE": "Bad_NS"})
    with pytest.raises(SystemExit, match="LEADER_ELECTION_ID: 'x/y' is not a valid object name"):
        parse_settings([], env={"LEADER_ELECTION_ID": "x/y"})
