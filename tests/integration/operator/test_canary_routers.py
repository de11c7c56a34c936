"""Both traffic routers on the emulated API server: the behaviour suite of canary_router_behaviour.py
(parametrized over VirtualService and HTTPRoute), plus what only the emulator makes cheap: a
cluster without the Gateway API (its CRD not installed) and the operator process moving an
HTTPRoute's weights, woken by a hand edit of it (its informer), and restoring it on deletion.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from kserve_operator.clients.kube import KubernetesApi
from kserve_operator.controllers.core import Outcome
from tests.conftest import REPO_ROOT
from tests.integration.operator.canary_router_behaviour import (  # noqa: F401 (the suite's tests and fixture)
    AGENT,
    SHAPES,
    RouteWorld,
    api,
    reconcile,
    test_a_409_race_ends_with_both_edits_kept,
    test_a_missing_object_is_a_condition_and_waits,
    test_an_object_another_controller_owns_is_refused_without_a_write,
    test_percent_0_10_100_move_only_the_managed_weights,
    test_what_the_object_cannot_carry_is_a_condition_with_no_write,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "crds"


@pytest.fixture
def route_world(kube: ClusterClient, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RouteWorld]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    world = RouteWorld(kube, "default", kubeconfig)
    yield world
    world.drop_finalizers()


async def test_a_cluster_without_the_gateway_api_waits_with_a_condition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPRoutes not served (404 for the resource, not for the object): RouteKindNotServed, no crash."""
    crds = tmp_path / "crds"
    crds.mkdir()
    for name in ("serving.kserve.io_inferenceservices.yaml", "networking.istio.io_virtualservices.yaml"):
        (crds / name).write_text((FIXTURES / name).read_text())
    with EmulatedCluster([REPO_ROOT / "manifests" / "crds", crds]) as cluster:
        kube = ClusterClient(cluster.url, user_agent="pytest")
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        world = RouteWorld(kube, "default", kubeconfig)
        shape = SHAPES["HTTPRoute"]
        world.install(SHAPES["VirtualService"])  # the InferenceServices (and a VirtualService nobody names)
        world.create_canary(shape, 20)
        api = await KubernetesApi.connect(user_agent=AGENT)
        try:
            assert await reconcile(world, api) is Outcome.WAITING
        finally:
            await api.close()
        ready = world.condition("Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RouteKindNotServed")
        assert "does not serve HTTPRoutes (the Gateway API's gateway.networking.k8s.io/v1)" in ready["message"]
        assert "RouteKindNotServed" in world.warnings()


def test_the_operator_moves_an_http_route_puts_back_a_hand_edit_and_restores_it(
    kube: ClusterClient, kubeconfig: Path, start_operator: StartOperator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    shape = SHAPES["HTTPRoute"]
    world = RouteWorld(kube, "default", kubeconfig)
    original = world.install(shape)
    path = world.object_path(shape)
    start_operator(resync=30)  # a put-back within seconds is the informer's wake-up, not the resync
    kube.create(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries"), {
        "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
        "metadata": {"name": "mnist", "namespace": "default"},
        "spec": {**shape.target(rules=["predict"]), "stable": {"inferenceService": "torch-mnist"},
                 "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": 10}})
    kube.wait_for(path, lambda o: shape.weights(o) == [90, 10], timeout=15)

    def by_hand(obj: dict[str, Any]) -> None:  # someone sets the weights back by hand
        refs = shape.rule(obj, "predict")["backendRefs"]
        kube.patch(path, [{"op": "replace", "path": "/spec/rules/1/backendRefs",
                           "value": [{**refs[0], "weight": 100}, {**refs[1], "weight": 0}]}],
                   "application/json-patch+json")

    by_hand(kube.get(path))
    kube.wait_for(path, lambda o: shape.weights(o) == [90, 10], timeout=10)
    kube.patch(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist"), {"spec": {"percent": 40}})
    kube.wait_for(path, lambda o: shape.weights(o) == [60, 40], timeout=10)
    status = kube.wait_for(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist"),
                           lambda o: (o.get("status") or {}).get("phase") == "Active", timeout=10)["status"]
    assert (status["routeKind"], status["route"], status["routeVersion"]) == ("HTTPRoute", "default/mnist", "v1")
    assert status["managedRoutes"] == ["predict"] and "virtualService" not in status

    kube.delete(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist"))
    kube.wait_gone(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist"), timeout=15)
    restored = kube.get(path)
    assert shape.weights(restored) == [100]  # the candidate backendRef we appended is gone
    assert shape.without_canary(restored) == shape.without_canary(original)
