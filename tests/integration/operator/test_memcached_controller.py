"""The real operator process reconciling Memcached CRs on the emulated cluster.

The Deployment controller that sets readyReplicas is the emulator's simulation.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.operator.conftest import StartOperator, StubPrometheus

pytestmark = pytest.mark.integration

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
SVC = "/api/v1/namespaces/default/services"
EVENTS = "/api/v1/namespaces/default/events"


def memcached(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def condition(obj: dict[str, Any], type: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type:
            return dict(c)
    return {}


def events_for(kube: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list(EVENTS) if e.get("involvedObject", {}).get("name") == name]


def operator_writes(cluster: Any, since: float) -> int:
    """Writes by the operator: kopf's own client and ours (the simulation writes in-process)."""
    return sum(int(cluster.count_writes(since=since, exclude_resources=(), user_agent=agent))
               for agent in ("kopf/", "kserve-operator"))


def test_creates_owned_children_and_reports_running(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    start_operator()
    created = kube.create(MC, memcached("fixed", size=3))
    dep = kube.wait_for(f"{DEPLOY}/fixed", lambda d: d["spec"]["replicas"] == 3)
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Memcached", created["metadata"]["uid"], True)
    svc = kube.get(f"{SVC}/fixed")
    assert svc["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    mc = kube.wait_for(f"{MC}/fixed", lambda o: o.get("status", {}).get("phase") == "Running")
    status = mc["status"]
    assert status["readyReplicas"] == 3 and status["replicas"] == 3
    assert status["observedGeneration"] == mc["metadata"]["generation"]
    assert condition(mc, "Available")["status"] == "True"
    assert condition(mc, "Degraded")["status"] == "False"


def test_spec_change_scales_at_once_with_an_event(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    start_operator(resync=60)  # no timer help: the spec change alone must drive it
    kube.create(MC, memcached("grow", size=1))
    kube.wait_for(f"{MC}/grow", lambda o: o.get("status", {}).get("phase") == "Running")
    kube.patch(f"{MC}/grow", {"spec": {"size": 4}})
    kube.wait_for(f"{DEPLOY}/grow", lambda d: d["spec"]["replicas"] == 4, timeout=5)
    mc = kube.wait_for(f"{MC}/grow", lambda o: o["status"].get("readyReplicas") == 4
                       and o["status"]["phase"] == "Running")
    assert mc["status"]["observedGeneration"] == 2
    assert mc["status"]["lastScaleTime"]
    scaled = [e for e in events_for(kube, "grow") if e["reason"] == "ScaledUp"]
    assert scaled and "from 1 to 4" in scaled[0]["message"] and scaled[0]["type"] == "Normal"


def test_a_settled_cache_costs_no_writes(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    start_operator(resync=0.5)
    kube.create(MC, memcached("quiet", size=2))
    kube.wait_for(f"{MC}/quiet", lambda o: o.get("status", {}).get("phase") == "Running")
    time.sleep(1.5)  # let kopf finish its own one-time bookkeeping
    since = time.time()
    time.sleep(3)  # six resync periods
    assert operator_writes(cluster, since) == 0


def test_edits_to_the_owned_deployment_are_reverted(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    start_operator(resync=60)
    kube.create(MC, memcached("owned", size=2))
    kube.wait_for(f"{MC}/owned", lambda o: o.get("status", {}).get("phase") == "Running")
    kube.patch(f"{DEPLOY}/owned", {"spec": {"replicas": 7}})
    kube.wait_for(f"{DEPLOY}/owned", lambda d: d["spec"]["replicas"] == 2, timeout=5)


def test_invalid_spec_past_the_schema_is_reported_not_retried(
    cluster: Any, kube: Any, start_operator: StartOperator
) -> None:
    start_operator(resync=0.5)
    kube.create(MC, memcached("bad", size=5, maxSize=2))  # the schema cannot compare two fields
    mc = kube.wait_for(f"{MC}/bad", lambda o: o.get("status", {}).get("phase") == "Error")
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert "maxSize (2) must not be smaller than size (5)" in degraded["message"]
    warnings = [e for e in events_for(kube, "bad") if e["type"] == "Warning"]
    assert warnings and warnings[0]["reason"] == "InvalidSpec"
    assert kube.list(DEPLOY, label_selector="app.kubernetes.io/instance=bad") == []
    time.sleep(1)
    since = time.time()
    time.sleep(2.5)
    assert operator_writes(cluster, since) == 0, "an invalid spec must not cause a retry loop"
    kube.patch(f"{MC}/bad", {"spec": {"maxSize": 8}})
    kube.wait_for(f"{DEPLOY}/bad", lambda d: d["spec"]["replicas"] == 5)
    mc = kube.wait_for(f"{MC}/bad", lambda o: o["status"]["phase"] == "Running")
    assert condition(mc, "Degraded")["status"] == "False"


def test_delete_scales_to_zero_then_releases(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    start_operator()
    kube.create(MC, memcached("gone", size=2))
    kube.wait_for(f"{MC}/gone", lambda o: o.get("status", {}).get("phase") == "Running")
    cluster.sim.hold_ready("default", "gone", ready=2)  # pods that take their time to stop
    kube.delete(f"{MC}/gone")
    kube.wait_for(f"{DEPLOY}/gone", lambda d: d["spec"]["replicas"] == 0, timeout=5)
    mc = kube.get(f"{MC}/gone")
    assert mc["metadata"].get("deletionTimestamp"), "the finalizer holds the cache while pods stop"
    cluster.sim.release("default", "gone")
    kube.wait_gone(f"{MC}/gone", timeout=10)
    kube.wait_gone(f"{DEPLOY}/gone", timeout=5)  # garbage-collected through the owner reference
    kube.wait_gone(f"{SVC}/gone", timeout=5)


@pytest.mark.parametrize(("mode", "why"), [
    ("500", "HTTP 500"),
    ("garbage", "not a number"),
    ("hang", "did not answer in time"),
])
def test_unusable_metrics_hold_replicas_and_say_why(
    cluster: Any, kube: Any, start_operator: StartOperator, stub_prometheus: StubPrometheus, mode: str, why: str
) -> None:
    stub_prometheus.value = "250"  # 3 replicas at 100 per replica
    op = start_operator(resync=0.5, PROMETHEUS_URL=stub_prometheus.url)
    kube.create(MC, memcached("held", size=1, targetConnectionsPerReplica=100, scalingWindow="1s"))
    kube.wait_for(f"{MC}/held", lambda o: o.get("status", {}).get("readyReplicas") == 3)
    stub_prometheus.mode = mode
    mc = kube.wait_for(f"{MC}/held", lambda o: condition(o, "Degraded").get("reason") == "MetricsUnavailable",
                       timeout=20)
    assert why in condition(mc, "Degraded")["message"]
    time.sleep(2)  # several resyncs (and scaling windows) later, nothing flapped
    assert kube.get(f"{DEPLOY}/held")["spec"]["replicas"] == 3
    assert [e["reason"] for e in events_for(kube, "held") if e["type"] == "Warning"] == ["MetricsUnavailable"]
    assert op.proc.poll() is None
    stub_prometheus.mode = "ok"
    stub_prometheus.value = "0"
    kube.wait_for(f"{DEPLOY}/held", lambda d: d["spec"]["replicas"] == 1, timeout=20)


def test_probes_and_metrics_endpoint(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    op = start_operator()
    kube.create(MC, memcached("observed", size=1))
    kube.wait_for(f"{MC}/observed", lambda o: o.get("status", {}).get("phase") == "Running")
    assert op.http_get("/healthz")[0] == 200
    assert op.http_get("/readyz")[0] == 200
    code, text = op.http_get("/metrics")
    assert code == 200
    assert 'kserve_operator_reconciles_total{controller="memcached",result="ok"}' in text
    assert "kserve_operator_api_requests_total" in text


def test_namespaced_mode_leaves_other_namespaces_alone(
    cluster: Any, kube: Any, start_operator: StartOperator
) -> None:
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    start_operator("--namespace", "default")
    other = "/apis/cache.serverless.xyz/v1alpha1/namespaces/team-b/memcacheds"
    kube.create(other, {**memcached("elsewhere", size=1), "metadata": {"name": "elsewhere", "namespace": "team-b"}})
    kube.create(MC, memcached("here", size=1))
    kube.wait_for(f"{MC}/here", lambda o: o.get("status", {}).get("phase") == "Running")
    assert not kube.exists("/apis/apps/v1/namespaces/team-b/deployments/elsewhere")
    assert "status" not in kube.get(f"{other}/elsewhere")


def test_an_existing_deployment_of_the_same_name_is_not_taken_over(
    cluster: Any, kube: Any, start_operator: StartOperator
) -> None:
    kube.create(DEPLOY, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "taken", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "mine"}},
                 "template": {"metadata": {"labels": {"app": "mine"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}}},
    })
    start_operator(resync=0.5)
    kube.create(MC, memcached("taken", size=3))
    mc = kube.wait_for(f"{MC}/taken", lambda o: o.get("status", {}).get("phase") == "Error")
    degraded = condition(mc, "Degraded")
    assert degraded["reason"] == "NameConflict" and "not managed by this Memcached" in degraded["message"]
    assert [e["reason"] for e in events_for(kube, "taken") if e["type"] == "Warning"] == ["NameConflict"]
    time.sleep(1.5)
    theirs = kube.get(f"{DEPLOY}/taken")
    assert theirs["spec"]["replicas"] == 1 and "ownerReferences" not in theirs["metadata"]
    assert theirs["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/app:1"
    kube.delete(f"{MC}/taken")  # deleting the cache neither scales nor removes what is not its own
    kube.wait_gone(f"{MC}/taken", timeout=10)
    assert kube.get(f"{DEPLOY}/taken")["spec"]["replicas"] == 1


def test_creating_a_cache_reads_neither_child_from_the_api_server(
    cluster: Any, kube: Any, start_operator: StartOperator
) -> None:
    """The child informers' label selector is ours: a miss there is the answer, so a new cache's
    Deployment and Service are created without a GET first (a GET that would only ever 404)."""
    start_operator()
    since = time.time()
    kube.create(MC, memcached("fresh", size=1))
    kube.wait_for(f"{MC}/fresh", lambda o: o.get("status", {}).get("phase") == "Running")
    reads = [(r.method, r.resource) for r in cluster.request_log.snapshot()
             if r.timestamp >= since and r.resource in ("deployments", "services") and r.method == "GET"
             and not r.watch and ("kopf/" in r.user_agent or "kserve-operator" in r.user_agent)]
    assert reads == []
    assert kube.exists(f"{DEPLOY}/fresh") and kube.exists(f"{SVC}/fresh")


def test_a_child_of_ours_stripped_of_its_labels_is_found_and_relabelled(
    cluster: Any, kube: Any, start_operator: StartOperator
) -> None:
    """Someone removes our labels from the Deployment: it leaves the label-selected informer, so the
    next pass's create meets 409; the object read then is ours (our controller reference), so it is
    taken back, labels restored, no conflict reported and no second Deployment."""
    start_operator(resync=0.5)
    kube.create(MC, memcached("relabel", size=1))
    kube.wait_for(f"{MC}/relabel", lambda o: o.get("status", {}).get("phase") == "Running")
    deployment = kube.get(f"{DEPLOY}/relabel")
    managed_by = "app.kubernetes.io/managed-by"
    assert managed_by in deployment["metadata"]["labels"]
    kube.patch(f"{DEPLOY}/relabel", [{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}],
               content_type="application/json-patch+json")
    relabelled = kube.wait_for(f"{DEPLOY}/relabel", lambda o: managed_by in o["metadata"].get("labels", {}))
    assert relabelled["metadata"]["uid"] == deployment["metadata"]["uid"]
    mc = kube.get(f"{MC}/relabel")
    assert mc["status"]["phase"] == "Running" and condition(mc, "Degraded").get("status") != "True"
    assert [e for e in events_for(kube, "relabel") if e["type"] == "Warning"] == []


def test_a_settled_autoscaled_cache_costs_no_writes_even_with_an_open_window(
    cluster: Any, kube: Any, start_operator: StartOperator, stub_prometheus: StubPrometheus
) -> None:
    stub_prometheus.value = "250"
    start_operator(resync=0.5, PROMETHEUS_URL=stub_prometheus.url)
    kube.create(MC, memcached("steady", size=1, targetConnectionsPerReplica=100, scalingWindow="1h"))
    kube.wait_for(f"{MC}/steady", lambda o: o.get("status", {}).get("readyReplicas") == 3
                  and o["status"]["phase"] == "Running")
    time.sleep(1.5)
    since = time.time()
    time.sleep(2.5)
    assert operator_writes(cluster, since) == 0, "settled at 3 replicas"
    stub_prometheus.value = "50"  # demand drops: a one-hour window opens, one status write
    mc = kube.wait_for(f"{MC}/steady", lambda o: o["status"].get("scaleDown") is not None)
    assert mc["status"]["scaleDown"]["replicas"] == 1 and condition(mc, "Progressing")["reason"] == "ScaleDownPending"
    time.sleep(1.5)
    since = time.time()
    time.sleep(2.5)
    assert operator_writes(cluster, since) == 0, "holding inside the window"
    assert kube.get(f"{DEPLOY}/steady")["spec"]["replicas"] == 3
