"""ModelPrewarm lifecycle with the real operator process: a lost node is replaced, a restart in the
middle of a reconcile creates no second Job, deleting the InferenceService cleans everything up,
a namespace label opts services in, and a settled ModelPrewarm makes no API writes.

Jobs here are completed by the emulator's STATUS-ONLY Job simulation with a preloader result as
their termination message (no process runs); test_prewarm_real_bytes.py runs the real preloader.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devstack.simulated_gpu_pool import add_gpu_nodes
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import (
    ISVC,
    JOB_PODS,
    JOBS,
    NS,
    PREWARM,
    jobs_of,
    node_of,
    operator_writes,
    phase_is,
    preloader_result,
    torch_mnist,
)

pytestmark = pytest.mark.integration


def prewarm(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm", "metadata": {"name": name},
            "spec": {"storageUri": "s3://models/mnist", "resources": {"limits": {"nvidia.com/gpu": "1"}},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}], **spec}}


def test_lost_node_is_replaced_and_a_settled_prewarm_makes_no_writes(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    add_gpu_nodes(cluster, "gpu-1", "gpu-2", "gpu-3")
    cluster.sim.auto_complete_jobs(succeeded=True, message=preloader_result())
    start_operator()
    kube.create(PREWARM, prewarm("pool", nodeCount=2))
    warm = kube.wait_for(f"{PREWARM}/pool", phase_is("Warm"), timeout=20)
    assert [n["name"] for n in warm["status"]["nodes"]] == ["gpu-1", "gpu-2"]
    assert warm["status"]["nodes"][0]["bytes"] == 1000 and warm["status"]["modelVersion"] == "v1"

    cluster.wait_quiet(1.5, timeout=20)
    since = time.time()
    time.sleep(4)  # four resync periods
    assert operator_writes(cluster, since) == 0

    lost = next(j["metadata"]["name"] for j in jobs_of(kube, "pool") if node_of(j) == "gpu-2")
    kube.delete("/api/v1/nodes/gpu-2")
    moved = kube.wait_for(f"{PREWARM}/pool", lambda o: [n["name"] for n in o["status"]["nodes"]]
                          == ["gpu-1", "gpu-3"] and o["status"]["phase"] == "Warm", timeout=20)
    assert moved["status"]["warmNodes"] == 2
    kube.wait_gone(f"{JOBS}/{lost}", timeout=10)
    assert sorted(node_of(j) for j in jobs_of(kube, "pool")) == ["gpu-1", "gpu-3"]

    # A node that stops qualifying (a NoExecute taint nobody tolerates) is replaced as well.
    cluster.add_node("gpu-4", gpus=1)
    kube.patch("/api/v1/nodes/gpu-1", {"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}})
    kube.wait_for(f"{PREWARM}/pool", lambda o: [n["name"] for n in o["status"]["nodes"]] == ["gpu-3", "gpu-4"]
                  and o["status"]["phase"] == "Warm", timeout=20)


def test_restart_in_the_middle_of_a_reconcile_creates_no_second_job(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    add_gpu_nodes(cluster, *(f"gpu-{i}" for i in range(1, 9)))
    first = start_operator()
    kube.create(PREWARM, prewarm("pool", nodeCount=8))
    cluster.wait_for(lambda: len(kube.list(JOBS)) >= 1, timeout=15, interval=0.005)
    first.proc.send_signal(signal.SIGKILL)  # no graceful stop: whatever was in flight is lost
    first.proc.wait()
    created_before = {j["metadata"]["name"] for j in kube.list(JOBS)}
    start_operator()
    kube.wait_for(f"{PREWARM}/pool", lambda o: len(o.get("status", {}).get("nodes", [])) == 8
                  and len(kube.list(JOBS)) == 8, timeout=20)
    cluster.wait_quiet(1.0, timeout=20)
    jobs = kube.list(JOBS)
    assert sorted(node_of(j) for j in jobs) == sorted(f"gpu-{i}" for i in range(1, 9))  # one Job per node
    assert created_before <= {j["metadata"]["name"] for j in jobs}  # the first operator's Jobs were kept
    created = [r for r in cluster.requests if r.method == "POST" and r.resource == "jobs" and r.status == 201]
    assert len(created) == 8


def test_deleting_the_inference_service_cleans_up(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    add_gpu_nodes(cluster, "gpu-1")
    cluster.sim.auto_complete_jobs(succeeded=True, message=preloader_result())
    start_operator()
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                             "metadata": {"name": "models-s3"}})
    kube.create(ISVC, torch_mnist())
    kube.wait_for(f"{PREWARM}/torch-mnist", phase_is("Warm"), timeout=20)
    assert len(jobs_of(kube, "torch-mnist")) == 1
    # A hand edit of the derived ModelPrewarm is put back: the InferenceService is the source.
    kube.patch(f"{PREWARM}/torch-mnist", {"spec": {"nodeCount": 5}})
    kube.wait_for(f"{PREWARM}/torch-mnist", lambda o: o["spec"]["nodeCount"] == 1, timeout=15)
    kube.delete(f"{ISVC}/torch-mnist")
    kube.wait_gone(f"{PREWARM}/torch-mnist", timeout=15)
    cluster.wait_for(lambda: not kube.list(JOBS) and not kube.list(JOB_PODS), timeout=15)


def test_namespace_label_opts_in_and_the_annotation_opts_out(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    add_gpu_nodes(cluster, "gpu-1")
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    isvc = torch_mnist()
    isvc["metadata"] = {"name": "scorer", "namespace": "team"}
    isvc["spec"]["predictor"].pop("serviceAccountName")
    kube.create("/apis/serving.kserve.io/v1beta1/namespaces/team/inferenceservices", isvc)
    start_operator()
    prewarms = "/apis/serving.serverless.xyz/v1alpha1/namespaces/team/modelprewarms"
    time.sleep(1.5)
    assert kube.list(prewarms) == []  # not opted in yet
    kube.patch("/api/v1/namespaces/team", {"metadata": {"labels": {"serverless.xyz/prewarm": "enabled"}}})
    kube.wait_for(f"{prewarms}/scorer", lambda o: True, timeout=15)
    kube.patch("/apis/serving.kserve.io/v1beta1/namespaces/team/inferenceservices/scorer",
               {"metadata": {"annotations": {"serverless.xyz/prewarm": "false"}}})
    kube.wait_gone(f"{prewarms}/scorer", timeout=15)
    isvc_writes = [r for r in cluster.requests if r.is_write and r.resource == "inferenceservices"
                   and not r.user_agent.startswith("pytest")]
    assert isvc_writes == []  # the operator never writes to an InferenceService
