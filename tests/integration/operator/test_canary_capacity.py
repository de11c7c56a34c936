"""Capacity-aware canary steps with the real operator (issue 16): a stable of 4 serving replicas,
a candidate warmed by its ModelPrewarm, a canary stepping 25 -> 50 -> 100. Each step waits
(phase WaitingForCapacity, the routes untouched) until the candidate is warm on ceil(w% x 4)
nodes; the ModelPrewarm controller raises the nodes it keeps warm from the canary's status.

Both controllers run for real; the preloader Jobs are finished by the test (the emulator's
status-only Job simulation, a preloader result as the termination message), so the test decides
when each node turns warm.
"""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devstack.simulated_gpu_pool import add_gpu_nodes
from tests.integration.operator.canary_world import MCANARY, condition, install_world, model_canary, vs_path, weights
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import JOB_NS, NS, PREWARM, jobs_of, node_of, preloader_result

pytestmark = pytest.mark.integration
PODS = f"/api/v1/namespaces/{NS}/pods"


def serving_pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {
                "serving.kserve.io/inferenceservice": "torch-mnist", "component": "predictor"}},
            "spec": {"nodeName": node, "containers": [{"name": "kserve-container", "image": "kserve/torchserve"}]}}


def finish_jobs(cluster: EmulatedCluster, kube: ClusterClient, count: int) -> list[str]:
    """Complete the candidate's unfinished Jobs (as many as `count`); returns their nodes."""
    done = []
    for job in jobs_of(kube, "torch-mnist-v2"):
        if len(done) == count:
            break
        if not any(c.get("type") == "Complete" for c in (job.get("status") or {}).get("conditions") or []):
            cluster.sim.complete_job(JOB_NS, job["metadata"]["name"], succeeded=True, message=preloader_result())
            done.append(node_of(job))
    return done


def test_a_step_waits_until_the_candidate_is_warm_on_enough_nodes_for_its_share(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    install_world(kube)
    add_gpu_nodes(cluster, *(f"gpu-{i}" for i in range(1, 7)))
    for i in range(4):  # the stable serves with 4 replicas
        kube.create(PODS, serving_pod(f"torch-mnist-predictor-{i}", f"gpu-{i + 1}"))
        kube.patch(f"{PODS}/torch-mnist-predictor-{i}/status", {"status": {"phase": "Running"}})
    start_operator(resync=60)
    kube.create(PREWARM, {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
                          "metadata": {"name": "torch-mnist-v2"},
                          "spec": {"storageUri": "s3://models/torch-mnist-v2", "nodeCount": 1,
                                   "resources": {"limits": {"nvidia.com/gpu": "1"}},
                                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}})
    cluster.wait_for(lambda: len(jobs_of(kube, "torch-mnist-v2")) == 1, timeout=15)
    finish_jobs(cluster, kube, 1)
    kube.wait_for(f"{PREWARM}/torch-mnist-v2", lambda o: o.get("status", {}).get("warmNodes") == 1, timeout=15)

    kube.create(MCANARY, model_canary(percent=100, requireWarm=True, routes=["predict"],
                                      steps={"weights": [25, 50], "interval": "2s"}))
    # 25% of 4 replicas needs 1 warm node: taken at once; the canary asks for the 2 that 50% needs.
    kube.wait_for(vs_path(), lambda o: weights(o) == [75, 25], timeout=10)
    mc = kube.wait_for(f"{MCANARY}/mnist", lambda o: (o.get("status") or {}).get("capacity", {}).get(
        "requiredWarmNodes") == 2, timeout=10)
    assert mc["status"]["capacity"] == {"requiredWarmNodes": 2, "warmNodes": 1, "stableReplicas": 4,
                                        "forPercent": 50}
    prewarm = kube.wait_for(f"{PREWARM}/torch-mnist-v2", lambda o: o.get("status", {}).get("desiredNodes") == 2,
                            timeout=10)
    assert prewarm["status"]["capacityDemand"] == {"nodes": 2, "from": "ModelCanary default/mnist"}
    assert prewarm["spec"]["nodeCount"] == 1, "the canary never writes the ModelPrewarm's spec"
    cluster.wait_for(lambda: len(jobs_of(kube, "torch-mnist-v2")) == 2, timeout=10)

    # The interval ends with one warm node: the step waits, the routes stay at 75/25.
    held = kube.wait_for(f"{MCANARY}/mnist", lambda o: o.get("status", {}).get("phase") == "WaitingForCapacity",
                         timeout=10)
    assert "50% needs the candidate warm on 2 node(s)" in condition(held, "Progressing")["message"]
    assert weights(kube.get(vs_path())) == [75, 25]

    finish_jobs(cluster, kube, 1)  # the second node turns warm: the step is taken without waiting for a resync
    kube.wait_for(vs_path(), lambda o: weights(o) == [50, 50], timeout=10)
    kube.wait_for(f"{PREWARM}/torch-mnist-v2", lambda o: o.get("status", {}).get("desiredNodes") == 4, timeout=10)
    cluster.wait_for(lambda: len(jobs_of(kube, "torch-mnist-v2")) == 4, timeout=10)
    kube.wait_for(f"{MCANARY}/mnist", lambda o: o.get("status", {}).get("phase") == "WaitingForCapacity", timeout=10)
    assert weights(kube.get(vs_path())) == [50, 50]

    finish_jobs(cluster, kube, 2)
    kube.wait_for(vs_path(), lambda o: weights(o) == [0, 100], timeout=10)
    done = kube.wait_for(f"{MCANARY}/mnist", lambda o: o.get("status", {}).get("phase") == "Promoted", timeout=10)
    assert done["status"]["capacity"]["requiredWarmNodes"] == 4
    assert sorted(node_of(j) for j in jobs_of(kube, "torch-mnist-v2")) == sorted(
        {node_of(j) for j in jobs_of(kube, "torch-mnist-v2")}), "one Job per node"
