"""The kopf indices that map routing objects (VirtualService, HTTPRoute) and ModelPrewarms to the
canaries they concern, and the informer indices that wake them."""

from __future__ import annotations

from typing import Any, cast

import kopf

from kserve_operator.controllers.canary_wakeups import (
    BY_HTTP_ROUTE,
    BY_VIRTUAL_SERVICE,
    canaries_by_prewarm,
    canaries_by_route,
    informer_indexes,
)
from kserve_operator.planning.canary_claims import Claimant

CREATED = "2026-01-01T00:00:00Z"


def by_route(spec: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[Any, Any]:
    return canaries_by_route(namespace="models", name="mnist", spec=cast(kopf.Spec, spec),
                             meta=cast(kopf.Meta, meta or {"creationTimestamp": CREATED}))


def test_a_canary_is_indexed_under_its_routing_object_and_kind() -> None:
    spec = {"virtualService": {"name": "mnist"}, "percent": 10}
    assert by_route(spec) == {("VirtualService", "models", "mnist"): Claimant("models", "mnist", CREATED, spec)}
    elsewhere = by_route({"virtualService": {"name": "gw", "namespace": "istio-system"}})
    assert list(elsewhere) == [("VirtualService", "istio-system", "gw")]
    http_route = by_route({"route": {"kind": "HTTPRoute", "name": "mnist", "namespace": "gateways"}})
    assert list(http_route) == [("HTTPRoute", "gateways", "mnist")]  # not the VirtualService of that name
    leaving = by_route(spec, {"creationTimestamp": CREATED, "deletionTimestamp": "2026-01-02T00:00:00Z"})
    assert leaving[("VirtualService", "models", "mnist")].deleting
    assert by_route({"percent": 10}) == {}  # invalid: indexed nowhere (its status says why)
    assert by_route({"route": {"kind": "Ingress", "name": "x"}}) == {}


def test_the_informer_wakes_a_canary_for_its_own_kind_only() -> None:
    indexes = informer_indexes()

    def keys(index: str, spec: dict[str, Any]) -> list[str]:
        return list(indexes[index]({"metadata": {"namespace": "models", "name": "c"}, "spec": spec}))

    vs_canary = {"virtualService": {"name": "mnist"}}
    route_canary = {"route": {"kind": "HTTPRoute", "name": "mnist"}}
    assert keys(BY_VIRTUAL_SERVICE, vs_canary) == ["models/mnist"] and keys(BY_HTTP_ROUTE, vs_canary) == []
    assert keys(BY_HTTP_ROUTE, route_canary) == ["models/mnist"] and keys(BY_VIRTUAL_SERVICE, route_canary) == []


def test_only_canaries_that_wait_for_a_model_are_indexed_under_its_prewarm() -> None:
    def index(spec: dict[str, Any]) -> dict[Any, Any]:
        return canaries_by_prewarm(namespace="models", name="mnist", spec=cast(kopf.Spec, spec))

    candidate = {"inferenceService": "torch-mnist-v2"}
    assert index({"requireWarm": True, "candidate": candidate}) == {
        ("models", "torch-mnist-v2"): ("models", "mnist")}
    assert index({"requireWarm": True, "candidate": {**candidate, "modelPrewarm": "pool"}}) == {
        ("models", "pool"): ("models", "mnist")}
    assert index({"requireWarm": False, "candidate": candidate}) == {}
    assert index({"candidate": candidate}) == {}
