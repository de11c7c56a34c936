"""The SIMULATED Deployment and Job controllers and their test hooks; the request log."""

from __future__ import annotations

import time
from typing import Any

from devcluster import ClusterClient, EmulatedCluster

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "main", "image": "memcached"}]}}}}


def test_deployments_become_ready(kube: ClusterClient) -> None:
    kube.create(DEPLOYMENTS, deployment("web", 3))
    ready = kube.wait_for(f"{DEPLOYMENTS}/web", lambda d: d.get("status", {}).get("readyReplicas") == 3, timeout=3)
    status = ready["status"]
    assert status["replicas"] == status["availableReplicas"] == status["updatedReplicas"] == 3
    assert status["observedGeneration"] == 1
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert available["status"] == "True"
    kube.patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 0}})
    scaled = kube.wait_for(f"{DEPLOYMENTS}/web", lambda d: d["status"].get("observedGeneration") == 2, timeout=3)
    assert "readyReplicas" not in scaled["status"] and "replicas" not in scaled["status"]  # zeros are omitted


def test_hold_ready_caps_readiness(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    cluster.sim.hold_ready("default", "web", ready=1)
    kube.create(DEPLOYMENTS, deployment("web", 4))
    held = kube.wait_for(f"{DEPLOYMENTS}/web", lambda d: d.get("status", {}).get("replicas") == 4, timeout=3)
    assert held["status"]["readyReplicas"] == 1
    assert held["status"]["unavailableReplicas"] == 3
    available = next(c for c in held["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "False"
    cluster.sim.release("default", "web")
    kube.wait_for(f"{DEPLOYMENTS}/web", lambda d: d["status"].get("readyReplicas") == 4, timeout=3)


def job(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": "gpu-1"},
        "containers": [{"name": "preload", "image": "preloader"}]}}}}


def test_jobs_run_then_finish_on_a_hook(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("warm"))
    kube.wait_for(f"{JOBS}/warm", lambda j: j.get("status", {}).get("active") == 1, timeout=3)
    pods = kube.list(PODS, label_selector="batch.kubernetes.io/job-name=warm")
    assert len(pods) == 1 and pods[0]["spec"]["nodeName"] == "gpu-1"
    assert pods[0]["status"]["phase"] == "Running"
    cluster.sim.complete_job("default", "warm", succeeded=True, message='{"bytes": 10}')
    done = kube.wait_for(f"{JOBS}/warm", lambda j: j["status"].get("succeeded") == 1, timeout=3)
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in done["status"]["conditions"])
    pod = kube.list(PODS, label_selector="job-name=warm")[0]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == '{"bytes": 10}'


def test_failed_jobs(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    cluster.sim.auto_complete_jobs(succeeded=False, message="no GPU")
    kube.create(JOBS, job("bad"))
    failed = kube.wait_for(f"{JOBS}/bad", lambda j: bool(j.get("status", {}).get("failed")), timeout=3)
    assert any(c["type"] == "Failed" for c in failed["status"]["conditions"])


def test_request_log_counts_writes(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    other = ClusterClient(cluster.url, user_agent="kopf/1.45")
    since = time.time()
    kube.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    other.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "b"}})
    other.patch("/api/v1/namespaces/default/configmaps/b", {"data": {"x": "y"}})
    other.create("/api/v1/namespaces/default/events", {"metadata": {"generateName": "e-"}, "reason": "R"})
    other.get("/api/v1/namespaces/default/configmaps/b")
    assert cluster.count_writes(since=since) == 3
    assert cluster.count_writes(user_agent="kopf", since=since) == 2
    assert cluster.count_writes(user_agent="kopf", since=since, exclude_resources=()) == 3
    assert cluster.count_writes(since=time.time()) == 0
    last = cluster.requests[-1]
    assert (last.method, last.status, last.user_agent, last.resource) == ("GET", 200, "kopf/1.45", "configmaps")
