"""Every bad input of issue 8: the schema (its CEL rules included, which the emulated API server
checks as a real one does) rejects what it can; for the rest the ModelCanary gets a condition and a
Warning event naming the problem, and the VirtualService is not touched. The operator's own check
of the spec (``InvalidSpec``) is exercised here with a spec the schema accepts and the operator
refuses (decreasing step weights); its checks of what the schema already refuses are unit tests
(tests/unit/operator/test_canary_spec.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster.client import ApiError
from tests.integration.operator.canary_world import (
    ISVC,
    MCANARY,
    condition,
    events_for,
    install_world,
    model_canary,
    virtual_service,
    vs_path,
    wait_phase,
    weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("spec", "words"), [
    ({"percent": -5}, "greater than or equal to 0"),
    ({"percent": 150}, "less than or equal to 100"),
    ({"percent": "20"}, "must be of type integer"),
    ({"steps": {"weights": [10, 120], "interval": "1m"}}, "less than or equal to 100"),
    ({"steps": {"weights": [-10], "interval": "1m"}}, "greater than or equal to 0"),
    ({"weight": 20}, 'unknown field "spec.weight"'),
    ({"virtualService": {"name": "mnist", "gateway": "x"}}, 'unknown field "spec.virtualService.gateway"'),
    ({"candidate": {"inferenceService": "torch-mnist-v2", "host": "x"}},
     "spec.candidate: Invalid value: set exactly one of inferenceService and host"),
    ({"stable": {}}, "spec.stable: Invalid value: set exactly one of inferenceService and host"),
])
def test_the_schema_rejects(kube: Any, spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiError) as caught:
        kube.create(MCANARY, model_canary(**spec))
    assert words in caught.value.message


def refused(cluster: Any, kube: Any, name: str, reason: str) -> dict[str, Any]:
    mc: dict[str, Any] = kube.wait_for(f"{MCANARY}/{name}",
                                       lambda o: condition(o, "Degraded").get("reason") == reason)
    assert mc["status"]["phase"] == "Error"
    assert condition(mc, "Available")["status"] == "False"

    def warnings() -> list[dict[str, Any]]:
        return [e for e in events_for(kube, name) if e["type"] == "Warning" and e["reason"] == reason]

    cluster.wait_for(warnings, message=lambda: f"a Warning event for {reason}: {events_for(kube, name)}")
    return mc


def test_problems_are_reported_and_the_virtual_service_is_not_touched(
    cluster: Any, kube: Any, start_operator: StartOperator,
) -> None:
    install_world(kube)
    stable_isvc = kube.get(f"{ISVC}/torch-mnist")
    untouched = {}
    for name in ("mnist-b", "overflow", "ghost-backend"):
        untouched[name] = kube.create(vs_path(name=name).rsplit("/", 1)[0], virtual_service(name=name))
    overflow = untouched["overflow"]
    overflow["spec"]["http"][2]["route"][0]["weight"] = 120
    untouched["overflow"] = kube.patch(vs_path(name="overflow"), {"spec": {"http": overflow["spec"]["http"]}})
    kserve_vs = virtual_service(name="torch-mnist")
    kserve_vs["metadata"]["ownerReferences"] = [{
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "torch-mnist",
        "uid": stable_isvc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    untouched["torch-mnist"] = kube.create(vs_path(name="torch-mnist").rsplit("/", 1)[0], kserve_vs)
    start_operator(resync=1)  # reconciles keep coming: the problems must still be reported only once

    kube.create(MCANARY, model_canary("first", routes=["predict"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [80, 20])
    wait_phase(kube, "first", "Active")
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "no-vs": ({"virtualService": {"name": "absent"}}, "VirtualServiceNotFound", "default/absent does not exist"),
        "wrong-route": ({"virtualService": {"name": "mnist-b"}, "routes": ["explain"]}, "StableNotRouted",
                        "HTTP route explain of VirtualService default/mnist-b sends nothing to"),
        "over-100": ({"virtualService": {"name": "overflow"}, "routes": ["audited"]}, "WeightsOverflow",
                     "other destinations already take 120%"),
        "ghost": ({"virtualService": {"name": "ghost-backend"}, "candidate": {"inferenceService": "ghost"}},
                  "InferenceServiceNotFound", "InferenceService default/ghost does not exist"),
        "kserve-owned": ({"virtualService": {"name": "torch-mnist"}}, "OwnedByKServe",
                         "owned by KServe's InferenceService torch-mnist"),
        "second": ({}, "RouteClaimed", "already managed by ModelCanary default/first"),
        "decreasing": ({"steps": {"weights": [50, 10], "interval": "1m"}, "virtualService": {"name": "mnist-b"}},
                       "InvalidSpec", "steps.weights must increase, got [50, 10]"),
    }
    for name, (spec, _, _) in cases.items():
        kube.create(MCANARY, model_canary(name, **spec))
    for name, (_, reason, words) in cases.items():
        mc = refused(cluster, kube, name, reason)
        assert words in condition(mc, "Degraded")["message"], name
    for name, before in untouched.items():
        assert kube.get(vs_path(name=name))["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert weights(kube.get(vs_path())) == [80, 20]  # the first canary's split stands
    time.sleep(2.5)
    for name, (_, reason, _) in cases.items():  # reported once, not at every reconcile
        assert len([e for e in events_for(kube, name) if e["reason"] == reason]) == 1, name

    # Deleting a refused canary gives nothing back: it never managed anything.
    kube.delete(f"{MCANARY}/kserve-owned")
    kube.wait_gone(f"{MCANARY}/kserve-owned", timeout=10)
    assert kube.get(vs_path(name="torch-mnist"))["metadata"]["resourceVersion"] == \
        untouched["torch-mnist"]["metadata"]["resourceVersion"]
    # When the first canary goes, the second one takes the route over.
    kube.patch(f"{MCANARY}/second", {"spec": {"percent": 30}})
    kube.delete(f"{MCANARY}/first")
    kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30], timeout=10)
    wait_phase(kube, "second", "Active")
    # A missing VirtualService that appears is picked up.
    kube.create(vs_path(name="absent").rsplit("/", 1)[0], virtual_service(name="absent"))
    kube.wait_for(vs_path(name="absent"), lambda o: weights(o) == [80, 20], timeout=5)
    wait_phase(kube, "no-vs", "Active")


GATEWAYS = "gateways"


def gateway_vs(kube: Any) -> tuple[str, dict[str, Any]]:
    """The mnist VirtualService (routing to the default namespace's predictors) in another namespace."""
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAYS}})
    vs = virtual_service()
    vs["metadata"]["namespace"] = GATEWAYS
    collection = f"/apis/networking.istio.io/v1/namespaces/{GATEWAYS}/virtualservices"
    return f"{collection}/mnist", kube.create(collection, vs)


def test_a_virtual_service_in_another_namespace_is_refused_and_never_written(
    cluster: Any, kube: Any, start_operator: StartOperator,
) -> None:
    install_world(kube)
    path, before = gateway_vs(kube)
    start_operator(resync=1)
    kube.create(MCANARY, model_canary("cross", virtualService={"name": "mnist", "namespace": GATEWAYS}))
    mc = refused(cluster, kube, "cross", "CrossNamespaceNotAllowed")
    ready = condition(mc, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "CrossNamespaceNotAllowed")
    assert "VirtualService gateways/mnist is in another namespace" in ready["message"]
    assert "CANARY_ALLOWED_ROUTE_NAMESPACES" in ready["message"]
    time.sleep(2.5)  # a few reconciles later: still nothing written, one event
    assert kube.get(path)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert len([e for e in events_for(kube, "cross") if e["reason"] == "CrossNamespaceNotAllowed"]) == 1
    kube.delete(f"{MCANARY}/cross")
    kube.wait_gone(f"{MCANARY}/cross", timeout=10)
    assert kube.get(path)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_namespace_the_platform_allows_is_routed(kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    path, _ = gateway_vs(kube)
    start_operator(resync=1, CANARY_ALLOWED_ROUTE_NAMESPACES=f"team-x,{GATEWAYS}")
    kube.create(MCANARY, model_canary("cross", virtualService={"name": "mnist", "namespace": GATEWAYS},
                                      routes=["predict"]))
    kube.wait_for(path, lambda o: weights(o) == [80, 20], timeout=10)
    mc = kube.wait_for(f"{MCANARY}/cross", lambda o: condition(o, "Ready").get("status") == "True")
    assert mc["status"]["virtualService"] == "gateways/mnist"
    kube.delete(f"{MCANARY}/cross")
    kube.wait_for(path, lambda o: weights(o) == [100], timeout=10)
