"""Pure editing of an Istio VirtualService: which HTTP routes a ModelCanary manages and their weights.

The rule (unlike Flagger, which rewrites the whole object, and Argo Rollouts, which drops
destinations it does not know): only the `weight` of the stable and candidate destinations in
the managed routes changes, plus the candidate destination appended when a route lacks it and
removed again on release if we appended it. Everything else (other routes, matches, retries,
timeouts, headers, mirrors, faults, TCP/TLS routes, delegates, and the order of all of it) is
carried over from the live object as read. The write is a merge patch of `spec.http` built from
that live list, conditional on the resourceVersion read, so a concurrent edit gives 409 instead
of being overwritten.

Called through planning/routes/planners.py by the ModelCanary's router; no I/O here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.planning.routes.weights import (
    Route,
    RoutingProblem,
    RuleShape,
    WeightPlan,
    plan_release_in,
    plan_weights_in,
    share_of,
)
from kserve_operator.resources.canary import Backend, CanarySpec, canonical_host
from kserve_operator.resources.canary_conditions import CanaryReason
from kserve_operator.resources.routes import OwnerProblem

__all__ = [
    "RoutingProblem", "WeightPlan", "foreign_owner", "managed_keys", "managed_routes",
    "owner_problem", "plan_release", "plan_weights", "route_key", "share_of", "weights_in_force", "weights_patch",
]

KSERVE_GROUP = "serving.kserve.io"
KNATIVE_NETWORKING_GROUP = "networking.internal.knative.dev"


def route_key(route: Mapping[str, Any], index: int) -> str:
    """How status names a route: its name, else its position (`http[2]`)."""
    name = route.get("name")
    return name if isinstance(name, str) and name else f"http[{index}]"


def http_routes(vs: Mapping[str, Any]) -> list[Route]:
    http = (vs.get("spec") or {}).get("http")
    return [r if isinstance(r, dict) else {} for r in http] if isinstance(http, list) else []


def _matches(entry: Any, backend: Backend, namespace: str) -> bool:
    if not isinstance(entry, Mapping):
        return False
    destination = entry.get("destination")
    if not isinstance(destination, Mapping) or not isinstance(destination.get("host"), str):
        return False
    if canonical_host(destination["host"], namespace) != backend.host:
        return False
    if (destination.get("subset") or None) != backend.subset:
        return False
    if backend.port is None:
        return True
    port = destination.get("port")
    return isinstance(port, Mapping) and port.get("number") == backend.port


def _find(route: Route, backend: Backend, namespace: str, key: str, role: str) -> int | None:
    destinations = route.get("route")
    if not isinstance(destinations, list):
        return None
    found = [i for i, entry in enumerate(destinations) if _matches(entry, backend, namespace)]
    if len(found) > 1:
        raise RoutingProblem(
            CanaryReason.AMBIGUOUS_DESTINATION,
            f"HTTP route {key} sends to the {role} backend {backend.display} through {len(found)} destinations; "
            "name a subset or port to pick one",
        )
    return found[0] if found else None


def _vs_name(vs: Mapping[str, Any]) -> str:
    meta = vs.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def managed_routes(vs: Mapping[str, Any], spec: CanarySpec) -> tuple[int, ...]:
    """Indices of the HTTP routes the canary manages; RoutingProblem when one cannot be managed."""
    routes = http_routes(vs)
    namespace = spec.route.namespace
    if spec.route.rules is None:
        found = tuple(i for i, route in enumerate(routes)
                      if _find(route, spec.stable, namespace, route_key(route, i), "stable") is not None)
        if not found:
            raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                                 f"no HTTP route of VirtualService {_vs_name(vs)} sends to the stable backend "
                                 f"{spec.stable.host}")
        return found
    indices = []
    for name in spec.route.rules:
        index = next((i for i, route in enumerate(routes) if route.get("name") == name), None)
        if index is None:
            raise RoutingProblem(CanaryReason.ROUTE_NOT_FOUND,
                                 f"VirtualService {_vs_name(vs)} has no HTTP route named {name}")
        route = routes[index]
        if _find(route, spec.stable, namespace, name, "stable") is None:
            what = "delegates to another VirtualService" if "delegate" in route else "sends nothing to"
            raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                                 f"HTTP route {name} of VirtualService {_vs_name(vs)} {what}"
                                 f"{' instead of' if 'delegate' in route else ''} the stable backend "
                                 f"{spec.stable.host}")
        indices.append(index)
    return tuple(indices)


def managed_keys(vs: Mapping[str, Any], spec: CanarySpec) -> tuple[str, ...]:
    routes = http_routes(vs)
    return tuple(route_key(routes[i], i) for i in managed_routes(vs, spec))


def _weight(entry: Mapping[str, Any], count: int) -> int:
    """Istio's reading: an explicit weight, 100 for a sole destination without one, else 0."""
    weight = entry.get("weight")
    if isinstance(weight, int) and not isinstance(weight, bool):
        return weight
    return 100 if count == 1 else 0


def _with_weight(entry: Mapping[str, Any], weight: int, count: int) -> dict[str, Any]:
    """`entry` with `weight`, left as written when it already reads as that weight."""
    if _weight(entry, count) == weight:
        return dict(entry)
    return {**entry, "weight": weight}


def _candidate_entry(candidate: Backend, stable_entry: Mapping[str, Any], weight: int) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": candidate.host}
    if candidate.subset:
        destination["subset"] = candidate.subset
    stable_port = (stable_entry.get("destination") or {}).get("port")
    if candidate.port is not None:
        destination["port"] = {"number": candidate.port}
    elif isinstance(stable_port, Mapping):
        destination["port"] = copy.deepcopy(dict(stable_port))
    return {"destination": destination, "weight": weight}


def split_weights(
    destinations: Sequence[Mapping[str, Any]], spec: CanarySpec, percent: int, key: str, *,
    remove_added_candidate: bool = False,
) -> tuple[list[dict[str, Any]], bool, tuple[int, int]]:
    """New destinations for one managed route: (list, candidate appended?, (stable, candidate) weights).

    Stable and candidate share what the other destinations leave (100 - their weights); the
    candidate gets `percent` of it. Weights are integers and the route's weights add up to 100.
    A missing candidate destination is appended (copying the stable one's port) only when it gets
    traffic; `remove_added_candidate` drops it again (release of a route where we appended it).
    """
    namespace = spec.route.namespace
    route: Route = {"route": list(destinations)}
    stable_at = _find(route, spec.stable, namespace, key, "stable")
    if stable_at is None:
        raise RoutingProblem(CanaryReason.STABLE_NOT_ROUTED,
                             f"HTTP route {key} sends nothing to the stable backend {spec.stable.host}")
    candidate_at = _find(route, spec.candidate, namespace, key, "candidate")
    count = len(destinations)
    others = sum(_weight(entry, count) for i, entry in enumerate(destinations) if i not in (stable_at, candidate_at))
    if others > 100:
        raise RoutingProblem(CanaryReason.WEIGHTS_OVERFLOW,
                             f"HTTP route {key}: other destinations already take {others}% (over 100)")
    remaining = 100 - others
    candidate_weight = share_of(remaining, percent)
    stable_weight = remaining - candidate_weight
    drop = remove_added_candidate and candidate_at is not None
    appended = candidate_at is None and candidate_weight > 0
    new_count = count - drop + appended
    result: list[dict[str, Any]] = []
    for i, entry in enumerate(destinations):
        if i == stable_at:
            result.append(_with_weight(entry, stable_weight, new_count))
        elif i == candidate_at:
            if not drop:
                result.append(_with_weight(entry, candidate_weight, new_count))
        else:
            result.append(dict(entry))
    if appended:
        result.append(_candidate_entry(spec.candidate, destinations[stable_at], candidate_weight))
    return result, appended, (stable_weight, candidate_weight)


def plan_weights(obj: Mapping[str, Any], spec: CanarySpec, percent: int, *,
                 previously: Sequence[str] = (), added: Sequence[str] = ()) -> WeightPlan:
    """The candidate at `percent` of every managed rule (weights.plan_weights_in over
    a VirtualService's `spec.http[].route`)."""
    return plan_weights_in(VIRTUAL_SERVICE_RULES, obj, spec, percent, previously=previously, added=added)


def plan_release(obj: Mapping[str, Any], spec: CanarySpec, managed: Sequence[str],
                 added: Sequence[str]) -> WeightPlan:
    """Stable 100% again in the rules we managed (weights.plan_release_in)."""
    return plan_release_in(VIRTUAL_SERVICE_RULES, obj, spec, managed, added)


def weights_in_force(vs: Mapping[str, Any], spec: CanarySpec) -> tuple[int, int] | None:
    """(stable, candidate) weights of the first managed route as the object stands, if readable."""
    try:
        indices = managed_routes(vs, spec)
    except RoutingProblem:
        return None
    route = http_routes(vs)[indices[0]]
    destinations = route.get("route") or []
    namespace, key = spec.route.namespace, route_key(route, indices[0])
    stable_at = _find(route, spec.stable, namespace, key, "stable")
    candidate_at = _find(route, spec.candidate, namespace, key, "candidate")
    count = len(destinations)
    stable = _weight(destinations[stable_at], count) if stable_at is not None else 0
    candidate = _weight(destinations[candidate_at], count) if candidate_at is not None else 0
    return stable, candidate


def weights_patch(vs: Mapping[str, Any], http: list[Route]) -> dict[str, Any]:
    """A merge patch of `spec.http`, conditional on the resourceVersion the plan was made from."""
    return {"metadata": {"resourceVersion": (vs.get("metadata") or {}).get("resourceVersion")},
            "spec": {"http": http}}


def foreign_owner(vs: Mapping[str, Any]) -> str | None:
    """Why the VirtualService belongs to a controller that rewrites it (KServe/Knative), or None."""
    meta = vs.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if not isinstance(ref, Mapping):
            continue
        group = str(ref.get("apiVersion", "")).split("/")[0]
        if group == KSERVE_GROUP:
            return (f"VirtualService {_vs_name(vs)} is owned by KServe's {ref.get('kind')} {ref.get('name')}, "
                    "which rewrites its routes (Knative mode); point the ModelCanary at a VirtualService "
                    "the platform team owns")
        if group == KNATIVE_NETWORKING_GROUP:
            return (f"VirtualService {_vs_name(vs)} is generated by Knative's {ref.get('kind')} {ref.get('name')}, "
                    "which rewrites its routes; point the ModelCanary at a VirtualService the platform team owns")
    for label in meta.get("labels") or {}:
        for group in (KSERVE_GROUP, KNATIVE_NETWORKING_GROUP):
            if str(label).startswith(f"{group}/"):
                return (f"VirtualService {_vs_name(vs)} carries the label {label} of a controller that rewrites "
                        "its routes; point the ModelCanary at a VirtualService the platform team owns")
    return None


def owner_problem(vs: Mapping[str, Any]) -> OwnerProblem | None:
    """`foreign_owner` as the router reports it (reason and message)."""
    owner = foreign_owner(vs)
    return OwnerProblem(CanaryReason.FOREIGN_OWNER, owner) if owner is not None else None


VIRTUAL_SERVICE_RULES = RuleShape(rules=http_routes, key=route_key, backends="route",
                                  managed=managed_routes, split=split_weights)
