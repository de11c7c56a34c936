"""What the canaries ask of a ModelPrewarm: warm nodes for the traffic share they step up to.

Split from controllers/prewarm.py. The ModelCanary informer (registered by the canary controller
too; indexes are added before it lists) carries an index by the ModelPrewarm a canary's candidate
is warmed by, so a reconcile reads only the canaries that name it; a canary's event reaches the
ModelPrewarm only when what it asks for changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.clients.informer import Informer, InformerEvent
from kserve_operator.planning.warm_capacity import (
    BY_CANDIDATE_PREWARM,
    CapacityDemand,
    capacity_demands,
    demand_fingerprint,
)

Key = tuple[str, str]


def read_demands(canaries: Sequence[Informer], namespace: str, prewarm: str) -> list[CapacityDemand]:
    """The canaries' needs for `namespace/prewarm`, from the informers' index (no request)."""
    named = [c for informer in canaries for c in informer.by_index(BY_CANDIDATE_PREWARM, f"{namespace}/{prewarm}")]
    return capacity_demands(named, namespace, prewarm)


def affected_prewarms(event: InformerEvent, seen: dict[Key, tuple[str | None, int]]) -> list[tuple[Key, int]]:
    """The ModelPrewarms a canary's event concerns, each with the larger of the canary's need before
    and now: the one it names (and the one it named before) when its need changed; none for the
    start-up listing or a change elsewhere in the canary."""
    meta: Mapping[str, Any] = event.obj.get("metadata") or {}
    namespace, key = str(meta.get("namespace") or ""), (str(meta.get("namespace") or ""), str(meta.get("name")))
    now = (None, 0) if event.type == "DELETED" else demand_fingerprint(event.obj)
    before = seen.pop(key, (None, 0)) if event.type == "DELETED" else seen.get(key, (None, 0))
    if event.type != "DELETED":
        seen[key] = now
    if event.type is None or now == before:
        return []
    needs: dict[Key, int] = {}
    for name, need in (before, now):
        if name and need:
            needs[(namespace, name)] = max(need, needs.get((namespace, name), 0))
    return sorted(needs.items())
