"""The Memcached's vocabulary: `status.phase` and the reasons of its conditions and Events.

Shared values (InvalidSpec, Settled, ...) come from resources/conditions.py; a value the phase and a
reason share is written once, in the phase. Tools and people match on the values: they never change.
"""

from __future__ import annotations

import enum

from kserve_operator.resources.conditions import Phase, Reason


class MemcachedPhase(enum.StrEnum):
    PENDING = Phase.PENDING.value
    RUNNING = "Running"
    SCALING = "Scaling"
    SCALED_TO_ZERO = "ScaledToZero"
    ERROR = Phase.ERROR.value


class MemcachedReason(enum.StrEnum):
    """Reasons of status.conditions and of the Events (ScaledUp, ScaledDown and Warnings)."""

    REPLICAS_READY = "ReplicasReady"
    NO_REPLICAS_READY = "NoReplicasReady"
    SCALED_TO_ZERO = MemcachedPhase.SCALED_TO_ZERO.value
    SCALING = MemcachedPhase.SCALING.value
    SCALE_DOWN_PENDING = "ScaleDownPending"
    SETTLED = Reason.SETTLED.value
    AS_EXPECTED = Reason.AS_EXPECTED.value
    METRICS_UNAVAILABLE = Reason.METRICS_UNAVAILABLE.value
    QUERY_NOT_ALLOWED = "MetricsQueryNotAllowed"
    INVALID_SPEC = Reason.INVALID_SPEC.value
    INVALID_NAME = "InvalidName"
    NAME_CONFLICT = "NameConflict"
    APPLY_FAILED = Reason.APPLY_FAILED.value
    RECONCILE_ERROR = Reason.RECONCILE_ERROR.value
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
