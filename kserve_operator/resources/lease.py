"""A coordination.k8s.io/v1 Lease as leader election reads it: the holder and the record's fields.

Parsed once from the API's JSON; `record_key` is what "the record changed" means (the spec's
election fields, not the resourceVersion, which also moves on a label edit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec, and the resourceVersion a replace must be pinned to."""

    holder: str  # "" when released (or never held)
    duration_seconds: int | None  # None when absent or not a positive integer: the reader's own duration applies
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @property
    def record_key(self) -> tuple[str, int | None, str | None, str | None, int]:
        return (self.holder, self.duration_seconds, self.acquire_time, self.renew_time, self.transitions)


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_lease(lease: Mapping[str, Any]) -> LeaseRecord:
    """Tolerant of a Lease written by hand: missing or odd fields read as empty, never as an error."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    transitions = spec.get("leaseTransitions")
    return LeaseRecord(
        holder=holder if isinstance(holder, str) else "",
        duration_seconds=_positive_int(spec.get("leaseDurationSeconds")),
        acquire_time=spec.get("acquireTime") if isinstance(spec.get("acquireTime"), str) else None,
        renew_time=spec.get("renewTime") if isinstance(spec.get("renewTime"), str) else None,
        transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
        resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
    )
