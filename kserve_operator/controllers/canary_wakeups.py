"""Which ModelCanaries an event concerns, and the canaries that claim a route.

The ModelCanary informer keeps index functions (`informer_indexes`): one per routing kind (the
VirtualService or HTTPRoute a canary names) and one for the ModelPrewarm a `requireWarm` canary
waits for. The informer subscriptions for VirtualServices, HTTPRoutes and ModelPrewarms
(`referenced_object_changed`) look the canaries up there and hand them to the core as events
(`memo.canary.wake`: a pass beside the watch, no API work in the subscription); `route_claimants`
reads the same routing indices for route claims.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kserve_operator.clients.informer import IndexFunction, Informer, InformerEvent, key_of
from kserve_operator.controllers.core import ObjectKey
from kserve_operator.planning import canary_claims as route_claims
from kserve_operator.resources.routes import KIND_HTTP_ROUTE, KIND_VIRTUAL_SERVICE, RouteTarget, route_key_of

BY_VIRTUAL_SERVICE = "virtual-service"
BY_HTTP_ROUTE = "http-route"
BY_PREWARM = "prewarm"
RouteKey = tuple[str, str, str]  # (kind, namespace, name) of a routing object


def canaries_by_route(namespace: str | None, name: str, spec: Mapping[str, Any], meta: Mapping[str, Any],
                      **_: Any) -> dict[RouteKey, route_claims.Claimant]:
    """(kind, namespace, name) of the routing object -> the canary that references it, as a claimant."""
    assert namespace is not None
    key = route_key_of(spec, namespace)
    if key is None:
        return {}
    return {key: route_claims.Claimant(namespace, name, str(meta.get("creationTimestamp") or ""), dict(spec),
                               deleting=bool(meta.get("deletionTimestamp")))}


def route_claimants(canaries: Sequence[Informer], target: RouteTarget) -> list[route_claims.Claimant]:
    """The canaries that name the routing object `target` (this one too: `first_claim` skips it)."""
    index = BY_HTTP_ROUTE if target.kind == KIND_HTTP_ROUTE else BY_VIRTUAL_SERVICE
    claimants: list[route_claims.Claimant] = []
    for informer in canaries:
        for obj in informer.by_index(index, f"{target.namespace}/{target.name}"):
            meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
            mapped = canaries_by_route(namespace=meta.get("namespace"), name=str(meta.get("name")), spec=spec,
                                       meta=meta)
            claimants += [c for key, c in mapped.items() if key == (target.kind, target.namespace, target.name)]
    return claimants


def canaries_by_prewarm(namespace: str | None, name: str, spec: Mapping[str, Any],
                        **_: Any) -> dict[ObjectKey, ObjectKey]:
    """(namespace, ModelPrewarm name) -> the requireWarm canaries that wait for it."""
    assert namespace is not None
    if spec.get("requireWarm") is not True:
        return {}
    candidate = spec.get("candidate") or {}
    prewarm = candidate.get("modelPrewarm") or candidate.get("inferenceService") if isinstance(
        candidate, Mapping) else None
    return {(namespace, str(prewarm)): (namespace, name)} if prewarm else {}



# --- the same maps on the ModelCanary informer, and its subscriptions -----------------------------

def _as_index(mapper: Callable[..., Mapping[ObjectKey, Any]]) -> IndexFunction:
    """A mapping function above as an informer index: "namespace/name" of each key it maps."""

    def keys(obj: Mapping[str, Any]) -> Iterable[str]:
        meta: Any = obj.get("metadata") or {}
        spec: Any = obj.get("spec") or {}
        if not meta.get("namespace"):
            return ()
        return [f"{ns}/{name}" for ns, name in mapper(namespace=meta["namespace"], name=meta.get("name"),
                                                        spec=spec, meta=meta)]

    return keys


def _route_index(kind: str) -> IndexFunction:
    """"namespace/name" of the routing object of `kind` a canary names."""

    def keys(obj: Mapping[str, Any]) -> Iterable[str]:
        meta: Any = obj.get("metadata") or {}
        spec: Any = obj.get("spec") or {}
        key = route_key_of(spec, meta["namespace"]) if meta.get("namespace") and isinstance(spec, Mapping) else None
        return [f"{key[1]}/{key[2]}"] if key is not None and key[0] == kind else []

    return keys


def informer_indexes() -> dict[str, IndexFunction]:
    return {BY_VIRTUAL_SERVICE: _route_index(KIND_VIRTUAL_SERVICE), BY_HTTP_ROUTE: _route_index(KIND_HTTP_ROUTE),
            BY_PREWARM: _as_index(canaries_by_prewarm)}


async def referenced_object_changed(memo: Any, canaries: list[Informer], index: str, event: InformerEvent) -> None:
    """A routing object (a hand edit, created, deleted) or a ModelPrewarm (e.g. turned Warm) that
    canaries reference changed: those canaries look now."""
    if event.type is None:  # the listing at start-up: every canary's resume handler runs its first pass anyway
        return
    namespace, name = key_of(event.obj)
    memo.canary.wake({key for informer in canaries for key in informer.keys_by_index(index, f"{namespace}/{name}")})

