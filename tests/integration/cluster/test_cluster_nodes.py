"""Simulated Nodes: what ``add_node`` registers, readiness, and the pod GC when a Node goes away."""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import ApiError, ClusterClient, EmulatedCluster
from devcluster.errors import ApiStatusError

NODES = "/api/v1/nodes"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"


def test_a_node_as_a_kubelet_registers_it(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    cluster.add_node("gpu-1", labels={"nvidia.com/gpu.product": "H100"}, gpus=8,
                     taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
                     allocatable={"nvidia.com/gpu": 7})
    node = kube.get(f"{NODES}/gpu-1")
    assert node["kind"] == "Node" and "namespace" not in node["metadata"]
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-1"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "H100"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "7"
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "KubeletReady")
    assert [n["metadata"]["name"] for n in kube.list(NODES, label_selector="nvidia.com/gpu.product=H100")] == \
        ["gpu-1"]
    assert cluster.node_root("gpu-1").name == "gpu-1"


def test_node_readiness_can_change(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    cluster.add_node("cpu-1")
    assert "nvidia.com/gpu" not in kube.get(f"{NODES}/cpu-1")["status"]["capacity"]
    cluster.set_node_ready("cpu-1", False)
    ready = next(c for c in kube.get(f"{NODES}/cpu-1")["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "KubeletNotReady")


def test_node_names_are_validated(cluster: EmulatedCluster) -> None:
    with pytest.raises(ApiStatusError, match="RFC 1123 subdomain"):
        cluster.add_node("GPU_1")


def status_only_job(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "main", "image": "not-registered"}]}}}}


def test_the_pod_gc_fails_and_deletes_pods_of_a_removed_node(cluster: EmulatedCluster,
                                                             kube: ClusterClient) -> None:
    cluster.add_node("gpu-1")
    cluster.add_node("gpu-2")
    kube.create(JOBS, status_only_job("here", "gpu-1"))
    kube.create(JOBS, status_only_job("there", "gpu-2"))
    cluster.wait_for(lambda: len(kube.list(PODS)) == 2, timeout=10)
    doomed = kube.list(PODS, label_selector="job-name=here")[0]
    since = kube.get(PODS)["metadata"]["resourceVersion"]
    cluster.remove_node("gpu-1")
    kube.wait_gone(f"{PODS}/{doomed['metadata']['name']}", timeout=10)
    assert [p["metadata"]["labels"]["job-name"] for p in kube.list(PODS)] == ["there"]
    with pytest.raises(ApiError) as info:
        kube.get(f"{NODES}/gpu-1")
    assert info.value.status == 404
    events = kube.text(PODS, {"watch": "true", "resourceVersion": since, "timeoutSeconds": "1"}).splitlines()
    assert any('"DeletionByPodGC"' in line and '"MODIFIED"' in line for line in events)
    assert any('"DELETED"' in line for line in events)
