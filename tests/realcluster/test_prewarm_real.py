"""The pre-warm path on the real control plane, end to end.

A data scientist applies torch-mnist through the KServe Python SDK (with their own admin
credentials); the operator (its ServiceAccount, the shipped RBAC) keeps a ModelPrewarm and
creates one preloader Job per chosen node in the platform's namespace `kserve-prewarm` (the shipped
manifests label it privileged; the tenant's namespace stays `restricted`), with a copy of the
tenant's S3 keys there while the Jobs run; the REAL Job controller makes the pods, the REAL scheduler
places each on its GPU node (taint tolerated, `nvidia.com/gpu` requested against allocatable),
and the process kubelet runs the REAL preloader, which pulls the model from moto's S3 with the
Secret's keys (read with the node's identity, as a kubelet reads them). Then a node is lost (its
kubelet stops; the real node-lifecycle controller marks it and taints it unreachable) and the
model is warmed elsewhere; then a new model URI warms again.

The simulated GPU nodes have no CUDA (this machine has none), so the service asks for
`serverless.xyz/prewarm-device: cpu`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.local_s3 import S3, create_credentials, moto_s3, upload_model, upload_sharded_model
from tests.realcluster.conftest import World

kserve = pytest.importorskip("kserve")  # the `dev` extra carries it; the operator image does not


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase", ""))


def warm_on(nodes: list[str]) -> Any:
    return lambda o: phase(o) == "Warm" and sorted(n["name"] for n in o["status"].get("nodes") or []) == sorted(nodes)


def inference_service(world: World, uri: str) -> Any:
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements, V1Toleration

    return kserve.V1beta1InferenceService(
        api_version=f"{kserve.constants.KSERVE_GROUP}/{kserve.constants.KSERVE_V1BETA1_VERSION}",
        kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name="torch-mnist", namespace=world.namespace, annotations={
            "serverless.xyz/prewarm": "true", "serverless.xyz/prewarm-nodes": "2",
            "serverless.xyz/prewarm-device": "cpu"}),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=kserve.V1beta1PredictorSpec(
            min_replicas=2, service_account_name="models-s3",
            tolerations=[V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            model=kserve.V1beta1ModelSpec(
                model_format=kserve.V1beta1ModelFormat(name="pytorch"), storage_uri=uri,
                resources=V1ResourceRequirements(limits={"nvidia.com/gpu": "1", "memory": "4Gi"})))))


JOB_NS = "kserve-prewarm"


def jobs_of(world: World) -> list[dict[str, Any]]:
    return world.kube.list(f"/apis/batch/v1/namespaces/{JOB_NS}/jobs",
                           label_selector=f"serving.serverless.xyz/prewarm-namespace={world.namespace},"
                                          "serving.serverless.xyz/modelprewarm=torch-mnist")


def test_an_inference_service_is_warmed_by_real_jobs_and_follows_a_lost_node(world: World, s3: S3) -> None:
    """The tenant's namespace enforces Pod Security `restricted`: pre-warming works all the same."""
    kube = world.kube
    size = upload_model(s3, "mnist/model.safetensors", seed=1)
    gpu1, gpu2, gpu3 = world.add_gpu_nodes("gpu-1", "gpu-2", "gpu-3")
    world.add_node("cpu")
    create_credentials(kube, s3.endpoint, namespace=world.namespace)
    world.start_operator()

    sdk = kserve.KServeClient(config_file=str(world.cluster.plane.admin_kubeconfig))
    sdk.create(inference_service(world, "s3://models/mnist"))
    prewarm_path = world.path("serving.serverless.xyz/v1alpha1", "modelprewarms", "torch-mnist")
    warm = kube.wait_for(prewarm_path, lambda o: phase(o) == "Warm", timeout=180, interval=0.5)

    status = warm["status"]
    assert (status["warmNodes"], status["desiredNodes"]) == (2, 2)
    first = sorted(n["name"] for n in status["nodes"])
    assert set(first) <= {gpu1, gpu2, gpu3}
    for node in status["nodes"]:  # the real preloader's own figures, per node
        assert node["phase"] == "Warm" and node["bytes"] == size and node["files"] == 1
        assert node["device"] == "cpu" and node["cache"] == "miss" and node["seconds"] > 0
    jobs = jobs_of(world)
    assert len(jobs) == 2 and all(j["status"].get("succeeded") == 1 for j in jobs)  # counted by the real Job controller
    assert kube.list(world.path("batch/v1", "jobs")) == []  # nothing privileged in the tenant's namespace
    ns_labels = kube.get(f"/api/v1/namespaces/{world.namespace}")["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for job in jobs:
        (pod,) = kube.list(f"/api/v1/namespaces/{JOB_NS}/pods", label_selector=f"job-name={job['metadata']['name']}")
        wanted = job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"]
        assert pod["spec"]["nodeName"] == wanted  # placed by the real scheduler
        assert pod["status"]["phase"] == "Succeeded"
        cached = list((world.cluster.node_root(wanted) / "var/cache/kserve-prewarm").rglob("model.safetensors"))
        assert cached and cached[0].stat().st_size == size
    assert {"PrewarmCreated", "PreloadJobsCreated", "ModelWarm"} <= {
        e["reason"] for e in world.events_for("torch-mnist") if e["involvedObject"]["kind"] == "InferenceService"}
    # The copy of the tenant's keys beside the Jobs lived only while they ran.
    uid = warm["metadata"]["uid"]
    world.cluster.wait_for(lambda: not kube.list(f"/api/v1/namespaces/{JOB_NS}/secrets",
                                                 label_selector=f"serving.serverless.xyz/prewarm-uid={uid}"),
                           30, message="the credential copy to be deleted")

    # Node loss: the kubelet of one warm node stops; kube-controller-manager marks it unreachable
    # (a NoExecute taint nobody tolerates), and the operator warms the spare node instead.
    lost = first[0]
    world.cluster.stop_node(lost)
    spare = ({gpu1, gpu2, gpu3} - set(first)).pop()
    moved = kube.wait_for(prewarm_path, warm_on([first[1], spare]), timeout=120, interval=0.5)
    assert moved["status"]["warmNodes"] == 2
    node = kube.get(f"/api/v1/nodes/{lost}")
    assert any(t["key"] == "node.kubernetes.io/unreachable" for t in node["spec"].get("taints") or [])

    # A new model URI: new Jobs warm it on the warm nodes.
    size_v2 = upload_model(s3, "mnist-v2/model.safetensors", seed=2)
    kube.patch(world.path("serving.kserve.io/v1beta1", "inferenceservices", "torch-mnist"),
               {"spec": {"predictor": {"model": {"storageUri": "s3://models/mnist-v2"}}}})
    rewarmed = kube.wait_for(prewarm_path, lambda o: (o.get("status") or {}).get("storageUri") == "s3://models/mnist-v2"
                             and phase(o) == "Warm", timeout=180, interval=0.5)
    assert all(n["bytes"] == size_v2 for n in rewarmed["status"]["nodes"])

    # Deleting the InferenceService: the real garbage collector takes its ModelPrewarm, whose
    # finalizer deletes the Jobs in the other namespace (no owner reference can reach them).
    sdk.delete("torch-mnist", namespace=world.namespace)
    kube.wait_gone(prewarm_path, timeout=60, interval=0.5)
    world.cluster.wait_for(lambda: not jobs_of(world), 60, message="the Jobs to be deleted")


def test_a_namespace_label_opts_in_and_an_annotation_opts_out(world: World) -> None:
    """No node is needed: the ModelPrewarm is made for the opted-in service and removed on opt-out.
    The operator never writes to an InferenceService (the audit log would show it: KServe owns them)."""
    kube = world.kube
    isvc_path = world.path("serving.kserve.io/v1beta1", "inferenceservices")
    kube.create(isvc_path, {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                            "metadata": {"name": "scorer", "namespace": world.namespace},
                            "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch"},
                                                             "storageUri": "s3://models/scorer"}}}})
    world.start_operator()
    prewarm_path = world.path("serving.serverless.xyz/v1alpha1", "modelprewarms", "scorer")
    time.sleep(1.5)
    assert not kube.exists(prewarm_path)  # not opted in yet
    kube.patch(f"/api/v1/namespaces/{world.namespace}", {"metadata": {"labels": {"serverless.xyz/prewarm": "enabled"}}})
    kube.wait_for(prewarm_path, lambda o: True, timeout=30)
    kube.patch(f"{isvc_path}/scorer", {"metadata": {"annotations": {"serverless.xyz/prewarm": "false"}}})
    kube.wait_gone(prewarm_path, timeout=30, interval=0.25)
    writes = [e for e in world.cluster.plane.audit_events() if (e.get("objectRef") or {}).get("resource")
              == "inferenceservices" and e.get("verb") not in ("get", "list", "watch")]
    assert writes == []


def test_a_sharded_llm_checkpoint_is_cached_by_a_job_that_asks_for_no_gpu(world: World, s3: S3) -> None:
    """Cache-only warming (`device: none`, what a vLLM-style runtime needs): the Job requests no
    GPU, so it never competes with serving pods, yet runs on the GPU nodes the predictor would
    use; the real preloader reads the sharded checkpoint's index and caches every shard."""
    kube = world.kube
    size = upload_sharded_model(s3, "llm-sharded", shards=3, seed=3)
    (gpu,) = world.add_gpu_nodes("gpu-1")
    world.add_node("cpu")
    create_credentials(kube, s3.endpoint, namespace=world.namespace)
    world.start_operator()
    path = world.path("serving.serverless.xyz/v1alpha1", "modelprewarms")
    kube.create(path, {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
                       "metadata": {"name": "llm", "namespace": world.namespace},
                       "spec": {"storageUri": "s3://models/llm-sharded/", "nodeCount": 1, "device": "none",
                                "serviceAccountName": "models-s3",
                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                 "effect": "NoSchedule"}],
                                "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}}}})
    warm = kube.wait_for(f"{path}/llm", lambda o: phase(o) == "Warm", timeout=120, interval=0.5)
    (node,) = warm["status"]["nodes"]
    assert (node["name"], node["device"], node["files"]) == (gpu, "none", 4)  # three shards and the index
    assert node["bytes"] == size and warm["status"]["warm"] == "1/1"
    (job,) = kube.list(f"/apis/batch/v1/namespaces/{JOB_NS}/jobs",
                       label_selector=f"serving.serverless.xyz/prewarm-uid={warm['metadata']['uid']}")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--device", "none"]
    assert container["resources"] == {"limits": {"memory": "1Gi"}}  # no GPU asked for
    cached = sorted(p.name for p in (world.cluster.node_root(gpu) / "var/cache/kserve-prewarm").rglob("*.safetensors"))
    assert cached == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
