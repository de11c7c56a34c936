"""A data scientist's own tool: the InferenceService is created and deleted through the KServe
Python SDK (`KServeClient`, `V1beta1InferenceService`) against the emulated cluster, and the
operator pre-warms it. Jobs complete through the status-only Job simulation."""

from __future__ import annotations

import pathlib

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devstack.simulated_gpu_pool import add_gpu_nodes
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import (
    NS,
    PREWARM,
    events_for,
    jobs_of,
    node_of,
    phase_is,
    preloader_result,
)

pytestmark = pytest.mark.integration
kserve = pytest.importorskip("kserve")  # the `dev` extra carries it; the operator image does not


def test_an_inference_service_made_with_the_kserve_sdk_is_prewarmed(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator, kubeconfig: pathlib.Path,
) -> None:
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements, V1Toleration

    add_gpu_nodes(cluster, "gpu-1", "gpu-2")
    cluster.sim.auto_complete_jobs(succeeded=True, message=preloader_result())
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                             "metadata": {"name": "models-s3"}})
    start_operator()

    client = kserve.KServeClient(config_file=str(kubeconfig))
    isvc = kserve.V1beta1InferenceService(
        api_version=f"{kserve.constants.KSERVE_GROUP}/{kserve.constants.KSERVE_V1BETA1_VERSION}",
        kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name="torch-mnist", namespace=NS, annotations={"serverless.xyz/prewarm": "true"}),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=kserve.V1beta1PredictorSpec(
            min_replicas=2,
            service_account_name="models-s3",
            tolerations=[V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            model=kserve.V1beta1ModelSpec(
                model_format=kserve.V1beta1ModelFormat(name="pytorch"),
                storage_uri="s3://models/mnist",
                resources=V1ResourceRequirements(limits={"nvidia.com/gpu": "1", "memory": "4Gi"}),
            ),
        )),
    )
    client.create(isvc)

    warm = kube.wait_for(f"{PREWARM}/torch-mnist", phase_is("Warm"), timeout=20)
    assert (warm["spec"]["nodeCount"], warm["spec"]["storageUri"]) == (2, "s3://models/mnist")
    assert sorted(node_of(j) for j in jobs_of(kube, "torch-mnist")) == ["gpu-1", "gpu-2"]
    assert client.get("torch-mnist", namespace=NS)["metadata"]["name"] == "torch-mnist"
    assert "PrewarmCreated" in {e["reason"] for e in events_for(kube, "InferenceService", "torch-mnist")}

    client.delete("torch-mnist", namespace=NS)
    kube.wait_gone(f"{PREWARM}/torch-mnist", timeout=15)
