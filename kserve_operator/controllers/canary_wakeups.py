"""When a ModelCanary must look again at once: the indices and event handlers that wake its daemon.

Two kopf indices map a routing object (a VirtualService or an HTTPRoute) and a ModelPrewarm to the
canaries that reference them (the routing one also answers route claims). The ModelCanary informer
keeps the same maps as index functions (`informer_indexes`: one per routing kind), which the informer
subscriptions for VirtualServices, HTTPRoutes and ModelPrewarms (`referenced_object_changed`) look up.
The handlers do no API work: they set the canary's wake-up event (`memo.canary.wake`), and its daemon
in controllers.canary reconciles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from kserve_operator.clients.informer import IndexFunction, Informer, InformerEvent, key_of
from kserve_operator.controllers.core import ObjectKey, remember
from kserve_operator.planning import canary_claims as route_claims
from kserve_operator.resources.kinds import MODEL_CANARY
from kserve_operator.resources.routes import KIND_HTTP_ROUTE, KIND_VIRTUAL_SERVICE, route_key_of

BY_VIRTUAL_SERVICE = "virtual-service"
BY_HTTP_ROUTE = "http-route"
BY_PREWARM = "prewarm"
RouteKey = tuple[str, str, str]  # (kind, namespace, name) of a routing object


def canaries_by_route(namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta,
                      **_: Any) -> dict[RouteKey, route_claims.Claimant]:
    """(kind, namespace, name) of the routing object -> the canaries that reference it, for claims."""
    assert namespace is not None
    key = route_key_of(spec, namespace)
    if key is None:
        return {}
    return {key: route_claims.Claimant(namespace, name, str(meta.get("creationTimestamp") or ""), dict(spec),
                               deleting=bool(meta.get("deletionTimestamp")))}


def canaries_by_prewarm(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[ObjectKey, ObjectKey]:
    """(namespace, ModelPrewarm name) -> the requireWarm canaries that wait for it."""
    assert namespace is not None
    if spec.get("requireWarm") is not True:
        return {}
    candidate = spec.get("candidate") or {}
    prewarm = candidate.get("modelPrewarm") or candidate.get("inferenceService") if isinstance(
        candidate, Mapping) else None
    return {(namespace, str(prewarm)): (namespace, name)} if prewarm else {}



# --- wake-ups ---------------------------------------------------------------------------------

async def canary_event(body: kopf.Body, namespace: str | None, name: str | None, type: str | None, memo: Any,
                       **_: Any) -> None:
    """A spec change (generation ahead of what status observed): wake the canary's daemon."""
    if namespace is None or name is None or type is None:
        return
    remember(memo.canary.api, MODEL_CANARY, body, type)  # the daemon reads it from the cache next
    generation = body.get("metadata", {}).get("generation")
    if generation != (body.get("status") or {}).get("observedGeneration"):
        memo.canary.wake([(namespace, name)])


# --- the same maps on the ModelCanary informer, and its subscriptions -----------------------------

def _as_index(mapper: Callable[..., Mapping[ObjectKey, Any]]) -> IndexFunction:
    """A kopf index function above as an informer index: "namespace/name" of each key it maps."""

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
    if event.type is None:  # the listing at start-up: every daemon runs its first pass anyway
        return
    namespace, name = key_of(event.obj)
    memo.canary.wake({key_of(canary) for informer in canaries for canary in informer.by_index(index,
                                                                                               f"{namespace}/{name}")})

