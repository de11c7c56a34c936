"""What holds or refuses a ModelCanary before any weight moves: the routing object's namespace
(a tenant moves traffic only where the platform lets it) and the candidate's ModelPrewarm
(`requireWarm`). Pure: callers pass the spec, the ModelPrewarm as read and the setting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from kserve_operator.planning.canary import WarmState
from kserve_operator.resources.canary import CanarySpec

ANY_NAMESPACE = "*"  # in the allowed route namespaces: a canary may route in every namespace
ROUTE_NAMESPACES_SETTING = "CANARY_ALLOWED_ROUTE_NAMESPACES"


def route_namespace_problem(spec: CanarySpec, allowed: Collection[str]) -> str | None:
    """Why this canary may not write its routing object, or None. A tenant moves traffic only in its
    own namespace unless the platform lists the object's namespace (or `*`)."""
    target = spec.route.namespace
    if target == spec.namespace or ANY_NAMESPACE in allowed or target in allowed:
        return None
    return (f"{spec.route.display} is in another namespace than the ModelCanary "
            f"({spec.namespace}), and the platform does not allow canaries to route in {target} "
            f"(the operator's {ROUTE_NAMESPACES_SETTING}); nothing is written")


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def warm_state(prewarm: Mapping[str, Any] | None, where: str) -> WarmState:
    """Warm as soon as one node holds the model it asks for: `status.warmNodes >= 1` releases the
    candidate whatever the phase says about other nodes (PartiallyWarm, Failed elsewhere). Nodes
    counted for an older model (status.storageUri behind spec.storageUri) do not count."""
    if prewarm is None:
        return WarmState(False, f"{where}, which does not exist yet")
    status, spec = _section(prewarm, "status"), _section(prewarm, "spec")
    raw = status.get("warmNodes")
    warm_nodes = raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
    phase = status.get("phase") or "not reported yet"
    warmed_with, wanted = status.get("storageUri"), spec.get("storageUri")
    if warmed_with and wanted and warmed_with != wanted:
        return WarmState(False, f"{where} to warm {wanted} (its {warm_nodes} warm node(s) hold {warmed_with})")
    if warm_nodes >= 1:
        return WarmState(True, f"{where} has {warm_nodes} warm node(s) (phase {phase})", warm_nodes)
    return WarmState(False, f"{where} to have a warm node (phase {phase}, 0 warm nodes)")
