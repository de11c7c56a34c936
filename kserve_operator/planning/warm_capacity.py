"""Capacity-aware canary steps: how many warm nodes a traffic share needs, and who asks for them.

A step that sends w% of the traffic to the candidate needs its model warm on enough nodes to
serve that share of what the stable serves: ceil(w/100 x the stable's serving replicas), at least
one for any share above 0. The canary holds its step (phase WaitingForCapacity) until that many
nodes are warm, and says in its own status how many it needs (`status.capacity.requiredWarmNodes`);
the ModelPrewarm controller reads that from the canaries naming its ModelPrewarm and keeps at
least that many nodes warm (`planning.prewarm`). The canary never writes the ModelPrewarm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

FIELD_CAPACITY = "capacity"  # the ModelCanary status key
FIELD_REQUIRED = "requiredWarmNodes"


def required_warm_nodes(percent: int, stable_replicas: int) -> int:
    """ceil(percent/100 x replicas), at least 1 for any share above 0; 0 for 0%."""
    if percent <= 0:
        return 0
    return max(1, -(-percent * max(stable_replicas, 0) // 100))


@dataclasses.dataclass(frozen=True)
class CapacityDemand:
    """A canary's need of warm nodes for the ModelPrewarm its candidate is warmed by."""

    source: str  # "ModelCanary <namespace>/<name>"
    nodes: int


def candidate_prewarm(canary: Mapping[str, Any]) -> str | None:
    """The ModelPrewarm a canary's candidate is warmed by (named, else the candidate's InferenceService)."""
    candidate = (canary.get("spec") or {}).get("candidate") or {}
    if not isinstance(candidate, Mapping):
        return None
    name = candidate.get("modelPrewarm") or candidate.get("inferenceService")
    return str(name) if name else None


def capacity_demands(canaries: Iterable[Mapping[str, Any]], namespace: str, prewarm: str) -> list[CapacityDemand]:
    """What the canaries of `namespace` that name `prewarm` ask of it (their own status says), largest first."""
    demands = []
    for canary in canaries:
        meta = canary.get("metadata") or {}
        if meta.get("namespace") != namespace or meta.get("deletionTimestamp") or candidate_prewarm(canary) != prewarm:
            continue
        capacity = (canary.get("status") or {}).get(FIELD_CAPACITY) or {}
        required = capacity.get(FIELD_REQUIRED) if isinstance(capacity, Mapping) else None
        if isinstance(required, int) and not isinstance(required, bool) and required > 0:
            demands.append(CapacityDemand(f"ModelCanary {namespace}/{meta.get('name')}", required))
    return sorted(demands, key=lambda d: (-d.nodes, d.source))


def demand_fingerprint(canary: Mapping[str, Any]) -> tuple[str | None, int]:
    """What of a canary's change concerns its ModelPrewarm: which one, and how many nodes it asks for."""
    capacity = (canary.get("status") or {}).get(FIELD_CAPACITY) or {}
    required = capacity.get(FIELD_REQUIRED) if isinstance(capacity, Mapping) else None
    gone = bool((canary.get("metadata") or {}).get("deletionTimestamp"))
    return candidate_prewarm(canary), 0 if gone or not isinstance(required, int) else required


BY_CANDIDATE_PREWARM = "candidate-prewarm"  # the ModelCanary informer's index: "<namespace>/<ModelPrewarm>"


def candidate_prewarm_keys(canary: Mapping[str, Any]) -> list[str]:
    """The index function: the ModelPrewarm a canary's candidate is warmed by, as `namespace/name`."""
    name, namespace = candidate_prewarm(canary), (canary.get("metadata") or {}).get("namespace")
    return [f"{namespace}/{name}"] if name and namespace else []


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What a canary step is gated on: the candidate's warm nodes and the stable's serving replicas."""

    warm_nodes: int
    stable_replicas: int

    def required(self, percent: int) -> int:
        return required_warm_nodes(percent, self.stable_replicas)

    def holds(self, current: int, share: int) -> str | None:
        """Why raising the candidate from `current` to `share` must wait, or None."""
        need = self.required(share)
        if share <= current or self.warm_nodes >= need:
            return None
        return (f"held at {current}%: {share}% needs the candidate warm on {need} node(s) "
                f"(ceil({share}% of {self.stable_replicas} stable replica(s)), at least 1); {self.warm_nodes} warm")

    def status(self, percent: int) -> dict[str, int]:
        """`status.capacity`: what the next share needs (the ModelPrewarm keeps that many warm)."""
        return {FIELD_REQUIRED: self.required(percent), "warmNodes": self.warm_nodes,
                "stableReplicas": self.stable_replicas, "forPercent": percent}
