"""Every bad input of the pre-warm issue, with the real operator process: what status and Events
say, and that no Job is created where none may be. The failing-preload case runs the REAL
preloader on a corrupt model in moto's S3."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster import ApiError, ClusterClient, EmulatedCluster
from devstack.local_s3 import S3, create_credentials
from devstack.simulated_gpu_pool import add_gpu_nodes, run_preloader_locally
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import (
    ISVC,
    JOB_PODS,
    JOBS,
    NS,
    PREWARM,
    condition,
    events_for,
    jobs_of,
    phase_is,
    torch_mnist,
)

pytestmark = pytest.mark.integration


def prewarm(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm", "metadata": {"name": name},
            "spec": {"storageUri": "s3://models/mnist", **spec}}


def ready_reason(kube: ClusterClient, name: str, reason: str) -> dict[str, Any]:
    return kube.wait_for(f"{PREWARM}/{name}", lambda o: condition(o, "Ready").get("reason") == reason, timeout=15)


def test_unsupported_uris_missing_credentials_and_unqualified_nodes(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    add_gpu_nodes(cluster, "gpu-1")
    cluster.add_node("cpu-1")
    start_operator()
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                             "metadata": {"name": "models-s3"}})
    for name, uri in (("gcs", "gs://bucket/model"), ("pvc", "pvc://claim/model"), ("hub", "hf://org/model"),
                      ("web", "https://example.com/model.pt")):
        service = torch_mnist()
        service["metadata"]["name"] = name
        service["spec"]["predictor"]["model"]["storageUri"] = uri
        kube.create(ISVC, service)
    several = torch_mnist()
    several["metadata"]["name"] = "several"
    several["spec"]["predictor"]["model"]["storageUris"] = [{"uri": "s3://models/tokenizer", "mountPath": "/mnt/tok"}]
    kube.create(ISVC, several)
    kube.create(PREWARM, prewarm("taken", nodeCount=1))  # a platform team's, same name as a service
    taken = torch_mnist()
    taken["metadata"]["name"] = "taken"
    taken["spec"]["predictor"]["model"]["storageUri"] = "s3://models/other"
    kube.create(ISVC, taken)
    kube.create(PREWARM, prewarm("no-account", serviceAccountName="nobody"))
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                             "metadata": {"name": "lost-keys"},
                                                             "secrets": [{"name": "gone"}]})
    kube.create(PREWARM, prewarm("no-secret", serviceAccountName="lost-keys"))
    kube.create(PREWARM, prewarm("no-node", resources={"limits": {"nvidia.com/gpu": "1"}}))
    kube.create(PREWARM, prewarm("fewer", nodeCount=3, resources={"limits": {"nvidia.com/gpu": "1"}},
                                 tolerations=[{"operator": "Exists"}]))

    for name, scheme in (("gcs", "gs://"), ("pvc", "pvc://"), ("hub", "hf://"), ("web", "https://")):
        obj = ready_reason(kube, name, "UnsupportedStorageUri")
        assert f"does not support {scheme} URIs" in condition(obj, "Ready")["message"]
        assert obj["status"]["phase"] == "Failed"
    several_obj = ready_reason(kube, "several", "MultipleStorageUris")
    assert "s3://models/tokenizer" in condition(several_obj, "Ready")["message"]

    missing_account = ready_reason(kube, "no-account", "ServiceAccountNotFound")
    assert "ServiceAccount nobody" in condition(missing_account, "Ready")["message"]
    # The Event is posted after the status write: wait for it rather than read once.
    cluster.wait_for(lambda: any(e["type"] == "Warning" and "ServiceAccount nobody" in e["message"]
                                 for e in events_for(kube, "ModelPrewarm", "no-account")), timeout=10)
    missing_secret = ready_reason(kube, "no-secret", "SecretNotFound")
    assert "Secret gone of service account lost-keys" in condition(missing_secret, "Ready")["message"]
    cluster.wait_for(lambda: any(e["type"] == "Warning" and "Secret gone" in e["message"]
                                 for e in events_for(kube, "ModelPrewarm", "no-secret")), timeout=10)

    cluster.wait_for(lambda: any(e["reason"] == "PrewarmNameTaken" and e["type"] == "Warning"
                                 for e in events_for(kube, "InferenceService", "taken")), timeout=15)
    left_alone = kube.get(f"{PREWARM}/taken")
    assert left_alone["spec"]["storageUri"] == "s3://models/mnist" and "ownerReferences" not in left_alone["metadata"]

    no_node = ready_reason(kube, "no-node", "NoQualifyingNodes")
    assert no_node["status"]["phase"] == "Pending"
    message = condition(no_node, "Ready")["message"]
    assert "1 no nvidia.com/gpu allocatable" in message and "taint nvidia.com/gpu=present:NoSchedule" in message

    fewer = kube.wait_for(f"{PREWARM}/fewer", lambda o: condition(o, "Degraded").get("reason")
                          == "FewerNodesThanRequested", timeout=15)
    assert "1 qualifying node(s) for nodeCount 3" in condition(fewer, "Degraded")["message"]
    assert len(jobs_of(kube, "fewer")) == 1

    time.sleep(1.5)  # a few resyncs: still no Job for any of the others
    assert {j["metadata"]["labels"]["serving.serverless.xyz/modelprewarm"] for j in kube.list(JOBS)} <= \
        {"fewer", "taken"}
    # The missing Secret appears: the next resync creates the Job.
    kube.create(f"/api/v1/namespaces/{NS}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "gone"}, "data": {"awsAccessKeyID": "eA==", "awsSecretAccessKey": "eA=="}})
    cluster.wait_for(lambda: len(jobs_of(kube, "no-secret")) == 1, timeout=15)


def test_schema_rejects_bad_specs_at_the_api_server(kube: ClusterClient) -> None:
    for spec in ({"storageUri": "s3://m/x", "nodeCount": 0}, {"storageUri": "s3://m/x", "nodeCount": -1},
                 {"storageUri": "s3://m/x", "nodeCount": "2"}, {"storageUri": "s3://m/x", "warmth": 1},
                 {"nodeCount": 1}):
        with pytest.raises(ApiError) as caught:
            kube.create(PREWARM, {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
                                  "metadata": {"name": "bad"}, "spec": spec})
        assert caught.value.status in (400, 422)


def test_a_failing_preload_marks_the_node_failed_with_the_preloaders_message(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator, s3: S3,
) -> None:
    corrupt = b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"  # a safetensors header that is not JSON
    s3.client.put_object(Bucket="models", Key="corrupt/model.safetensors", Body=corrupt)
    run_preloader_locally(cluster)
    add_gpu_nodes(cluster, "gpu-1")
    create_credentials(kube, s3.endpoint)
    start_operator()
    kube.create(PREWARM, prewarm("corrupt", storageUri="s3://models/corrupt/", serviceAccountName="models-s3",
                                 device="cpu", backoffLimit=1, tolerations=[{"operator": "Exists"}],
                                 resources={"limits": {"nvidia.com/gpu": "1"}}))
    failed = kube.wait_for(f"{PREWARM}/corrupt", phase_is("Failed"), timeout=90)
    (node,) = failed["status"]["nodes"]
    assert (node["name"], node["phase"], node["reason"]) == ("gpu-1", "Failed", "CorruptModel")
    assert "safetensors" in node["message"].lower()
    assert condition(failed, "Degraded")["reason"] == "NodesFailed"
    assert len(kube.list(JOB_PODS)) == 2  # backoffLimit 1: one retry, then the Job gave up
    assert any(e["reason"] == "PreloadFailed" and "CorruptModel" in e["message"]
               for e in events_for(kube, "ModelPrewarm", "corrupt"))
