"""The kopf indices that map VirtualService and ModelPrewarm events to the canaries they concern."""

from __future__ import annotations

from typing import Any, cast

import kopf

from kserve_operator.controllers.canary_wakeups import canaries_by_prewarm, canaries_by_virtual_service
from kserve_operator.planning.canary import Claimant

CREATED = "2026-01-01T00:00:00Z"


def by_vs(spec: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[Any, Any]:
    return canaries_by_virtual_service(namespace="models", name="mnist", spec=cast(kopf.Spec, spec),
                                       meta=cast(kopf.Meta, meta or {"creationTimestamp": CREATED}))


def test_a_canary_is_indexed_under_its_virtual_service() -> None:
    spec = {"virtualService": {"name": "mnist"}, "percent": 10}
    assert by_vs(spec) == {("models", "mnist"): Claimant("models", "mnist", CREATED, spec)}
    elsewhere = by_vs({"virtualService": {"name": "gw", "namespace": "istio-system"}})
    assert list(elsewhere) == [("istio-system", "gw")]
    leaving = by_vs(spec, {"creationTimestamp": CREATED, "deletionTimestamp": "2026-01-02T00:00:00Z"})
    assert leaving[("models", "mnist")].deleting
    assert by_vs({"percent": 10}) == {}  # invalid: indexed nowhere (its status says why)


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
