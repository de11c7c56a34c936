"""The whole pre-warm path with real bytes: torch-mnist applied -> its ModelPrewarm -> one Job per
chosen node -> the REAL preloader (`python -m preloader`, run as a local process by the emulated
cluster's simulated Job controller and kubelet) pulls the model from moto's S3 -> `Warm` with the
preloader's per-node figures; then a new URI warms again and the old Jobs go.

The simulated GPU nodes have no CUDA (this machine has none), so the service asks for
`serverless.xyz/prewarm-device: cpu`; everything else is as on a GPU pool.
"""

from __future__ import annotations

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devstack.local_s3 import S3, create_credentials, upload_model
from devstack.simulated_gpu_pool import add_gpu_nodes, run_preloader_locally
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import (
    ISVC,
    PREWARM,
    condition,
    events_for,
    jobs_of,
    node_of,
    phase_is,
    torch_mnist,
)

pytestmark = pytest.mark.integration


def test_torch_mnist_is_warmed_with_real_bytes_and_rewarmed_on_a_new_uri(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator, s3: S3,
) -> None:
    size = upload_model(s3, "mnist/model.safetensors", seed=1)
    run_preloader_locally(cluster)
    add_gpu_nodes(cluster, "gpu-1", "gpu-2", "gpu-3")
    cluster.add_node("cpu-1")
    create_credentials(kube, s3.endpoint)
    start_operator()
    isvc = kube.create(ISVC, torch_mnist(**{"serverless.xyz/prewarm-nodes": "2",
                                            "serverless.xyz/prewarm-device": "cpu"}))

    prewarm = kube.wait_for(f"{PREWARM}/torch-mnist", lambda o: True, timeout=15)
    owner = prewarm["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferenceService", isvc["metadata"]["uid"], True)
    assert prewarm["spec"]["storageUri"] == "s3://models/mnist" and prewarm["spec"]["nodeCount"] == 2

    warm = kube.wait_for(f"{PREWARM}/torch-mnist", phase_is("Warm"), timeout=90)
    jobs = jobs_of(kube, "torch-mnist")
    assert sorted(node_of(j) for j in jobs) == ["gpu-1", "gpu-2"]
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "kserve-preloader:0.1.0"
        assert container["args"] == ["--device", "cpu", "--cache-dir", "/cache", "--termination-log",
                                     "/dev/termination-log", "s3://models/mnist"]
        assert "nvidia.com/gpu" not in container["resources"]["limits"]  # device cpu holds no GPU
        assert {"name": "cache", "hostPath": {"path": "/var/cache/kserve-prewarm", "type": "DirectoryOrCreate"}} \
            in pod["volumes"]
        env = {e["name"]: e for e in container["env"]}
        # In the platform's namespace: the tenant's keys come from a copy there, owned by the Jobs.
        copy = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
        assert copy["key"] == "AWS_SECRET_ACCESS_KEY" and copy["name"].startswith("torch-mnist-")
        assert job["metadata"]["namespace"] == "kserve-prewarm"
        assert env["AWS_ENDPOINT_URL"]["value"] == f"http://{s3.endpoint}"
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert job["metadata"]["labels"]["serving.serverless.xyz/prewarm-uid"] == prewarm["metadata"]["uid"]

    status = warm["status"]
    assert (status["warmNodes"], status["desiredNodes"]) == (2, 2)
    for node in status["nodes"]:
        assert node["phase"] == "Warm" and node["bytes"] == size and node["files"] == 1
        assert node["device"] == "cpu" and node["cache"] == "miss" and node["seconds"] > 0 and node["gbps"] > 0
        assert node["version"] == status["modelVersion"]
    for node in ("gpu-1", "gpu-2"):  # the node-local caches hold the model; gpu-3 was never used
        cached = list((cluster.sim.kubelet.node_root(node) / "var/cache/kserve-prewarm").rglob("model.safetensors"))
        assert cached and cached[0].stat().st_size == size
    assert not (cluster.sim.kubelet.node_root("gpu-3") / "var/cache/kserve-prewarm").exists()
    assert condition(warm, "Ready")["status"] == "True"
    reasons = {e["reason"] for e in events_for(kube, "InferenceService", "torch-mnist")}
    assert {"PrewarmCreated", "PreloadJobsCreated", "ModelWarm"} <= reasons

    # A new model URI on the predictor: the ModelPrewarm follows, new Jobs warm it, the old ones go.
    size_v2 = upload_model(s3, "mnist-v2/model.safetensors", seed=2)
    old_jobs = {j["metadata"]["name"] for j in jobs}
    kube.patch(f"{ISVC}/torch-mnist", {"spec": {"predictor": {"model": {"storageUri": "s3://models/mnist-v2"}}}})
    rewarmed = kube.wait_for(f"{PREWARM}/torch-mnist", lambda o: o.get("status", {}).get("storageUri")
                             == "s3://models/mnist-v2" and o["status"].get("phase") == "Warm", timeout=90)
    new_jobs = {j["metadata"]["name"] for j in jobs_of(kube, "torch-mnist")}
    assert len(new_jobs) == 2 and not (new_jobs & old_jobs)
    assert {n["name"] for n in rewarmed["status"]["nodes"]} == {"gpu-1", "gpu-2"}  # the same, warm nodes
    assert all(n["bytes"] == size_v2 and n["cache"] == "miss" for n in rewarmed["status"]["nodes"])
    assert rewarmed["status"]["modelVersion"] != status["modelVersion"]
    # The copy of the tenant's keys lived only while a Job needed it.
    copies = kube.list("/api/v1/namespaces/kserve-prewarm/secrets",
                       label_selector=f"serving.serverless.xyz/prewarm-uid={prewarm['metadata']['uid']}")
    assert copies == []

    # Deleting the InferenceService removes its ModelPrewarm, whose finalizer removes the Jobs in the
    # other namespace (no owner reference can reach them).
    kube.delete(f"{ISVC}/torch-mnist")
    kube.wait_gone(f"{PREWARM}/torch-mnist", timeout=20)
    cluster.wait_for(lambda: not jobs_of(kube, "torch-mnist"), timeout=20)
