"""Leader election on a Lease: the decisions, made as client-go's leaderelection makes them.

No clock here: the caller passes `now` (its own monotonic clock, in seconds) and `wall` (a
datetime written into the record for people to read, never read back for a decision).

Expiry is judged by how long *this replica* has seen the record unchanged (`Observation.since`),
never by the renewTime another replica wrote: clock skew between replicas cannot make a live
lease look expired, nor a dead one look alive. The holder renews every `retry_period`; a holder
that has not renewed for `renew_deadline` (counted from when its last successful renew was
*sent*, which is before the server stored it, hence before any other replica can have seen it)
must stop acting, `lease_duration - renew_deadline` before anyone may take over.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from kserve_operator.resources.lease import LeaseRecord

#: client-go's JitterFactor: the renew deadline must leave room for more than one retry.
RETRY_JITTER_FACTOR = 1.2


@dataclasses.dataclass(frozen=True)
class ElectionTimings:
    """client-go's and controller-runtime's defaults: 15 s / 10 s / 2 s."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """What makes these timings unsafe or unusable; empty when they are fine."""
        found = []
        if not self.lease_duration >= 1 or self.lease_duration != int(self.lease_duration):
            found.append(f"the lease duration must be a whole number of seconds >= 1, got {self.lease_duration}")
        if not self.retry_period > 0:
            found.append(f"the retry period must be positive, got {self.retry_period}")
        if not self.renew_deadline < self.lease_duration:
            found.append(f"the renew deadline ({self.renew_deadline} s) must be shorter than the lease duration "
                         f"({self.lease_duration} s): a leader that cannot renew must stop before its lease expires")
        if not self.renew_deadline > RETRY_JITTER_FACTOR * self.retry_period:
            found.append(f"the renew deadline ({self.renew_deadline} s) must exceed {RETRY_JITTER_FACTOR} x the "
                         f"retry period ({self.retry_period} s), so a leader gets more than one try")
        return found


class Action(enum.StrEnum):
    CREATE = "create"  # no Lease: create it, holding it
    ACQUIRE = "acquire"  # released, expired or already ours: replace it, holding it
    RENEW = "renew"  # ours and we lead: replace it with a fresh renewTime
    WAIT = "wait"  # someone else holds a live lease
    LOST = "lost"  # we led, and the Lease is gone, released or someone else's: stop acting at once


@dataclasses.dataclass(frozen=True)
class Observation:
    """The Lease as last read (None: absent) and when this replica first saw that record."""

    record: LeaseRecord | None
    since: float


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    wait: float  # seconds until the next attempt (WAIT); 0 otherwise


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """Keep the time of first sight while the record is unchanged; restart it when it changes."""
    if previous is not None and _same(previous.record, record):
        return dataclasses.replace(previous, record=record)  # a newer resourceVersion, same election record
    return Observation(record, now)


def _same(a: LeaseRecord | None, b: LeaseRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.record_key == b.record_key


def expires_at(observation: Observation, timings: ElectionTimings) -> float:
    """When a record unchanged since `observation.since` may be taken over (this replica's clock)."""
    record = observation.record
    duration = record.duration_seconds if record is not None and record.duration_seconds else timings.lease_duration
    return observation.since + duration


def decide(identity: str, observation: Observation, now: float, *, leading: bool,
           timings: ElectionTimings) -> Decision:
    """What to do with the Lease as observed: a leader renews or has lost; a candidate takes or waits."""
    record = observation.record
    if record is None:
        if leading:
            return Decision(Action.LOST, "the Lease was deleted", 0.0)
        return Decision(Action.CREATE, "no Lease yet", 0.0)
    if record.holder == identity:
        return Decision(Action.RENEW if leading else Action.ACQUIRE, "held by this replica", 0.0)
    if leading:
        taken = f"taken by {record.holder!r}" if record.holder else "released by someone else"
        return Decision(Action.LOST, f"the Lease was {taken}", 0.0)
    if not record.holder:
        return Decision(Action.ACQUIRE, "released", 0.0)
    remaining = expires_at(observation, timings) - now
    if remaining <= 0:
        return Decision(Action.ACQUIRE, f"{record.holder!r} did not renew for {now - observation.since:.1f} s", 0.0)
    # Wake at the expiry itself rather than on the retry grid: failover is not late by up to a retry period.
    return Decision(Action.WAIT, f"held by {record.holder!r}", min(timings.retry_period, remaining))


def renew_budget(last_renew_sent: float, now: float, timings: ElectionTimings) -> float:
    """Seconds a leader may still try to renew; at 0 or below it must stop acting now."""
    return last_renew_sent + timings.renew_deadline - now


def micro_time(wall: datetime.datetime) -> str:
    """A MicroTime as the API server writes it (RFC 3339, microseconds, UTC)."""
    return wall.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def held_spec(action: Action, identity: str, record: LeaseRecord | None, wall: datetime.datetime,
              timings: ElectionTimings) -> dict[str, Any]:
    """The Lease spec to write for CREATE, ACQUIRE or RENEW: held by `identity`, renewed at `wall`.

    A new holder gets a fresh acquireTime and one more transition (as client-go counts them,
    a takeover of a released Lease included); a renewal keeps both.
    """
    if action not in (Action.CREATE, Action.ACQUIRE, Action.RENEW):
        raise ValueError(f"nothing to write for {action}")
    stamp = micro_time(wall)
    keeps = record is not None and record.holder == identity and record.acquire_time is not None
    transitions = 0 if record is None else record.transitions + (0 if record.holder == identity else 1)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": int(timings.lease_duration),
        "acquireTime": record.acquire_time if keeps and record is not None else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord, wall: datetime.datetime) -> dict[str, Any]:
    """client-go's ReleaseOnCancel: no holder and a 1 s duration, so a candidate takes it at its next look."""
    stamp = micro_time(wall)
    return {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": stamp, "renewTime": stamp,
            "leaseTransitions": record.transitions}
