"""ModelCanary on the real control plane: the operator (its ServiceAccount, the shipped RBAC)
edits only the weights of a VirtualService the platform team owns, stored by the real API
server under the fixture Istio CRD; a second writer edits the same object concurrently (the real
server answers the operator's stale conditional patches with 409) and both edits survive;
deletion runs the finalizer, which gives the stable model 100% back before it lets go. The same
for a Gateway API HTTPRoute (the fixture CRD, with its defaults and two parentRefs). A canary
that names a VirtualService in another namespace is refused (Ready=False/CrossNamespaceNotAllowed)
and that VirtualService is never written.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from devstack.mnist_httproute import http_route
from devstack.mnist_virtualservice import virtual_service
from tests.realcluster.conftest import RESTRICTED_NAMESPACE_LABELS, World


def inference_service(world: World, name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": world.namespace},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch"},
                                             "storageUri": f"s3://models/{name}"}}}}


def weights(vs: dict[str, Any], name: str = "predict") -> list[int]:
    route = next(r for r in vs["spec"]["http"] if r.get("name") == name)
    return [d.get("weight", 100) for d in route["route"]]


def test_weights_move_with_a_concurrent_writer_and_the_finalizer_restores(world: World) -> None:
    kube = world.kube
    for name in ("torch-mnist", "torch-mnist-v2"):
        kube.create(world.path("serving.kserve.io/v1beta1", "inferenceservices"), inference_service(world, name))
    vs_collection = world.path("networking.istio.io/v1", "virtualservices")
    original = kube.create(vs_collection, virtual_service(namespace=world.namespace))
    vs_path = f"{vs_collection}/mnist"
    canary_path = world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist")
    world.start_operator(resync=30)
    kube.create(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries"), {
        "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
        "metadata": {"name": "mnist", "namespace": world.namespace},
        "spec": {"virtualService": {"name": "mnist"}, "stable": {"inferenceService": "torch-mnist"},
                 "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": 10, "routes": ["predict"]}})
    vs = kube.wait_for(vs_path, lambda o: weights(o) == [90, 10], timeout=30)
    candidate = vs["spec"]["http"][1]["route"][1]["destination"]
    assert candidate["host"] == f"torch-mnist-v2-predictor.{world.namespace}.svc.cluster.local"
    assert weights(vs, "audited") == [20, 80]  # a route it does not manage is untouched

    # A second writer edits another field of the same object as fast as it can while the knob moves.
    stop, edits = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set():
            edits[0] += 1
            kube.patch(vs_path, [{"op": "replace", "path": "/spec/http/0/timeout", "value": f"{edits[0]}s"}],
                       "application/json-patch+json")
            time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for percent in (25, 50, 75):
            kube.patch(canary_path, {"spec": {"percent": percent}})
            kube.wait_for(vs_path, lambda o, p=percent: weights(o) == [100 - p, p], timeout=30)
    finally:
        stop.set()
        thread.join(timeout=5)
    vs = kube.get(vs_path)
    assert vs["spec"]["http"][0]["timeout"] == f"{edits[0]}s"  # every edit of the other writer landed
    # The writer ran beside every move (three moves take well under a second now that the operator reads
    # the VirtualService from its informer, so a handful of edits, not dozens).
    assert edits[0] >= 3
    canary = kube.wait_for(canary_path, lambda o: (o.get("status") or {}).get("phase") == "Active", timeout=30)
    assert canary["status"]["percent"] == 75 and canary["metadata"]["finalizers"]

    # Deletion: the finalizer gives the stable model everything back, then the canary goes.
    kube.delete(canary_path)
    kube.wait_gone(canary_path, timeout=60, interval=0.25)
    restored = kube.get(vs_path)
    expected = copy.deepcopy(original["spec"])
    expected["http"][0]["timeout"] = f"{edits[0]}s"
    assert restored["spec"] == expected  # stable 100 as written, the appended destination gone, nothing else


def test_an_http_route_moves_with_a_concurrent_writer_and_the_finalizer_restores(world: World) -> None:
    """The operator under the shipped RBAC (httproutes: list, watch, patch) on an HTTPRoute."""
    kube = world.kube
    for name in ("torch-mnist", "torch-mnist-v2"):
        kube.create(world.path("serving.kserve.io/v1beta1", "inferenceservices"), inference_service(world, name))
    routes = world.path("gateway.networking.k8s.io/v1", "httproutes")
    original = kube.create(routes, http_route(namespace=world.namespace))
    path = f"{routes}/mnist"
    canary_path = world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "mnist")

    def rule_weights(obj: dict[str, Any], name: str = "predict") -> list[int]:
        rule = next(r for r in obj["spec"]["rules"] if r.get("name") == name)
        return [ref["weight"] for ref in rule["backendRefs"]]

    world.start_operator(resync=30)
    kube.create(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries"), {
        "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
        "metadata": {"name": "mnist", "namespace": world.namespace},
        "spec": {"route": {"kind": "HTTPRoute", "name": "mnist"}, "stable": {"inferenceService": "torch-mnist"},
                 "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": 10}})
    moved = kube.wait_for(path, lambda o: rule_weights(o) == [90, 10], timeout=30)
    appended = next(r for r in moved["spec"]["rules"] if r.get("name") == "predict")["backendRefs"][1]
    assert appended == {"group": "", "kind": "Service", "name": "torch-mnist-v2-predictor", "port": 80, "weight": 10}
    assert rule_weights(moved, "audited") == [20, 72, 8]
    assert moved["spec"]["parentRefs"] == original["spec"]["parentRefs"]

    stop, edits = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set():
            edits[0] += 1
            kube.patch(path, [{"op": "replace", "path": "/spec/rules/0/timeouts/request", "value": f"{edits[0]}s"}],
                       "application/json-patch+json")
            time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for percent in (25, 50, 75):
            kube.patch(canary_path, {"spec": {"percent": percent}})
            kube.wait_for(path, lambda o, p=percent: rule_weights(o) == [100 - p, p], timeout=30)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert kube.get(path)["spec"]["rules"][0]["timeouts"]["request"] == f"{edits[0]}s"
    canary = kube.wait_for(canary_path, lambda o: (o.get("status") or {}).get("phase") == "Active", timeout=30)
    assert (canary["status"]["routeKind"], canary["status"]["percent"]) == ("HTTPRoute", 75)

    kube.delete(canary_path)
    kube.wait_gone(canary_path, timeout=60, interval=0.25)
    restored = kube.get(path)
    expected = copy.deepcopy(original["spec"])
    expected["rules"][0]["timeouts"]["request"] = f"{edits[0]}s"
    for rule in expected["rules"]:  # stable written as 100 (it read 1 of 1: the same share)
        for ref in rule.get("backendRefs") or []:
            if ref["name"] == "torch-mnist-predictor" and len(rule["backendRefs"]) == 1:
                ref["weight"] = 100
    assert restored["spec"] == expected  # the appended backendRefs gone, nothing else changed


def test_a_virtual_service_in_another_namespace_is_refused_and_not_written(world: World) -> None:
    """Tenant A names tenant B's VirtualService: nothing is written there (its resourceVersion stays),
    on a reconcile or on deletion, and A's canary says why."""
    kube = world.kube
    other = f"{world.namespace}-b"
    world.cluster.create_namespace(other, RESTRICTED_NAMESPACE_LABELS)
    try:
        for name in ("torch-mnist", "torch-mnist-v2"):
            kube.create(world.path("serving.kserve.io/v1beta1", "inferenceservices"), inference_service(world, name))
        foreign = virtual_service(namespace=world.namespace)  # routes to A's predictors, stored in B
        foreign["metadata"]["namespace"] = other
        vs_collection = f"/apis/networking.istio.io/v1/namespaces/{other}/virtualservices"
        before = kube.create(vs_collection, foreign)

        def version() -> str:
            return str(kube.get(f"{vs_collection}/mnist")["metadata"]["resourceVersion"])

        world.start_operator(resync=1)
        canary_path = world.path("serving.serverless.xyz/v1alpha1", "modelcanaries", "cross")
        kube.create(world.path("serving.serverless.xyz/v1alpha1", "modelcanaries"), {
            "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
            "metadata": {"name": "cross", "namespace": world.namespace},
            "spec": {"virtualService": {"name": "mnist", "namespace": other},
                     "stable": {"inferenceService": "torch-mnist"},
                     "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": 50}})

        def ready(obj: dict[str, Any]) -> dict[str, Any]:
            return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})

        canary = kube.wait_for(canary_path, lambda o: ready(o).get("reason") == "CrossNamespaceNotAllowed",
                               timeout=30)
        assert ready(canary)["status"] == "False" and canary["status"]["phase"] == "Error"
        assert f"VirtualService {other}/mnist is in another namespace" in ready(canary)["message"]
        world.cluster.wait_for(lambda: [e for e in world.events_for("cross")
                                        if (e["type"], e["reason"]) == ("Warning", "CrossNamespaceNotAllowed")],
                               30, message="a Warning event CrossNamespaceNotAllowed")
        time.sleep(3)  # three resyncs later
        assert version() == before["metadata"]["resourceVersion"]
        kube.delete(canary_path)
        kube.wait_gone(canary_path, timeout=30)
        assert version() == before["metadata"]["resourceVersion"]
    finally:
        world.cluster.delete_namespace(other, timeout=60)
