"""Status conditions in the Kubernetes convention (metav1.Condition).

`set_condition` keeps `lastTransitionTime` when the status did not change, so a
reconcile that finds nothing new produces an identical status and writes nothing.
"""

from __future__ import annotations

import datetime
import enum
from typing import Any


class ConditionType(enum.StrEnum):
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    READY = "Ready"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    """Condition and Event reasons more than one kind reports; each kind's module
    (resources/<kind>_conditions.py) lists its whole vocabulary and takes these values from here.
    Tools and people match on the values: they never change."""

    INVALID_SPEC = "InvalidSpec"
    SETTLED = "Settled"
    AS_EXPECTED = "AsExpected"
    RECONCILE_ERROR = "ReconcileError"
    APPLY_FAILED = "ApplyFailed"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    MODEL_WARM = "ModelWarm"


class Phase(enum.StrEnum):
    """`status.phase` values more than one kind uses (each kind's phases list them again by value)."""

    PENDING = "Pending"
    ERROR = "Error"
    FAILED = "Failed"


Condition = dict[str, Any]


def rfc3339(moment: datetime.datetime) -> str:
    """The API server's timestamp format: UTC, whole seconds, a trailing Z."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.UTC)


def set_condition(
    conditions: list[Condition],
    *,
    type: str,
    status: str,
    reason: str,
    message: str,
    now: datetime.datetime,
    generation: int | None = None,
) -> list[Condition]:
    """Return a new list with `type` set; the transition time moves only when the status flips."""
    previous = next((c for c in conditions if c.get("type") == type), None)
    changed = previous is None or previous.get("status") != status
    transition = rfc3339(now) if changed or previous is None else previous.get("lastTransitionTime", rfc3339(now))
    updated: Condition = {  # plain strings on the wire, whatever enum the caller passed
        "type": str(type),
        "status": str(status),
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result = [c for c in conditions if c.get("type") != type]
    result.append(updated)
    return sorted(result, key=lambda c: str(c.get("type")))


def find_condition(conditions: list[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == type), None)
