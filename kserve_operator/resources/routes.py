"""The object a ModelCanary moves traffic in: which kind (an Istio VirtualService or a Gateway API
HTTPRoute), where, which of its rules, and the object as observed.

`spec.route: {kind, name, namespace?, rules?}` names it; the older `spec.virtualService` +
`spec.routes` form reads as kind VirtualService. The routers (controllers/canary_routing.py over
clients/routers/ and planning/routes/) take a `RouteTarget` and hand back an `ObservedRoutes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.resources.fields import text_field

KIND_VIRTUAL_SERVICE = "VirtualService"
KIND_HTTP_ROUTE = "HTTPRoute"
ROUTE_KINDS = (KIND_VIRTUAL_SERVICE, KIND_HTTP_ROUTE)


@dataclasses.dataclass(frozen=True)
class RouteTarget:
    """The routing object a canary edits; `rules` None: every rule that sends to the stable backend."""

    kind: str
    name: str
    namespace: str
    rules: tuple[str, ...] | None = None

    @property
    def ref(self) -> str:
        """"namespace/name", as status records it."""
        return f"{self.namespace}/{self.name}"

    @property
    def display(self) -> str:
        """"VirtualService models/mnist": how messages name it."""
        return f"{self.kind} {self.ref}"

    def same_object(self, other: RouteTarget) -> bool:
        return (self.kind, self.namespace, self.name) == (other.kind, other.namespace, other.name)


@dataclasses.dataclass(frozen=True)
class OwnerProblem:
    """Why a routing object belongs to a controller that rewrites it: reported, never written."""

    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class ObservedRoutes:
    """A routing object as read: the object, the API version that served it, and whether another
    controller owns it (then nothing is written)."""

    target: RouteTarget
    obj: dict[str, Any]
    version: str
    owner_problem: OwnerProblem | None = None

    @property
    def resource_version(self) -> str | None:
        version = (self.obj.get("metadata") or {}).get("resourceVersion")
        return str(version) if version is not None else None


def _rule_names(raw: Any, field: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(r, str) and r for r in raw):
        raise InvalidSpec(f"{field} must list rule names")
    if len(set(raw)) != len(raw):
        raise InvalidSpec(f"{field} names a route twice: {raw}")
    return tuple(raw)


def parse_route_target(raw: Mapping[str, Any], namespace: str) -> RouteTarget:
    """`spec.route`, or the older `spec.virtualService` + `spec.routes`; InvalidSpec naming the field."""
    route, vs = raw.get("route"), raw.get("virtualService")
    if route is not None and vs is not None:
        raise InvalidSpec("set one of route and virtualService, not both")
    if route is None and vs is None:
        raise InvalidSpec("route is required (or the older virtualService)")
    if route is not None:
        if not isinstance(route, Mapping):
            raise InvalidSpec("route must be an object")
        if raw.get("routes") is not None:
            raise InvalidSpec("routes goes with virtualService; with route, name the rules in route.rules")
        kind = route.get("kind")
        if kind not in ROUTE_KINDS:
            raise InvalidSpec(f"route.kind must be one of {', '.join(ROUTE_KINDS)}, got {kind!r}")
        name = text_field(route, "name", "route.")
        if name is None:
            raise InvalidSpec("route.name is required")
        return RouteTarget(str(kind), name, text_field(route, "namespace", "route.") or namespace,
                           _rule_names(route.get("rules"), "route.rules"))
    if not isinstance(vs, Mapping):
        raise InvalidSpec("virtualService must be an object")
    name = text_field(vs, "name", "virtualService.")
    if name is None:
        raise InvalidSpec("virtualService.name is required")
    return RouteTarget(KIND_VIRTUAL_SERVICE, name, text_field(vs, "namespace", "virtualService.") or namespace,
                       _rule_names(raw.get("routes"), "routes"))


def route_key_of(raw: Mapping[str, Any], namespace: str) -> tuple[str, str, str] | None:
    """(kind, namespace, name) a spec names, leniently (for indices: an invalid spec names nothing)."""
    try:
        target = parse_route_target(raw, namespace)
    except InvalidSpec:
        return None
    return target.kind, target.namespace, target.name


def recorded_route(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, "namespace/name") of the object the status's managed routes belong to; a status written
    before `routeKind` existed names a VirtualService."""
    ref = status.get("route") or status.get("virtualService")
    if not isinstance(ref, str) or "/" not in ref:
        return None
    kind = status.get("routeKind") if status.get("route") else KIND_VIRTUAL_SERVICE
    return (str(kind) if kind in ROUTE_KINDS else KIND_VIRTUAL_SERVICE), ref


PATCH_MERGE = "merge"  # RFC 7386, carrying metadata.resourceVersion
PATCH_JSON = "json"  # RFC 6902, replacing metadata.resourceVersion first


@dataclasses.dataclass(frozen=True)
class RoutePatch:
    """A write of the weights, as planning builds it: conditional on the resourceVersion read."""

    type: str  # PATCH_MERGE or PATCH_JSON
    body: Any
