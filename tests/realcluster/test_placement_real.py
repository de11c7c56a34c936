"""Predictor pods prefer the warm nodes: the placement webhook on the real control plane.

kube-apiserver calls the webhook served by the operator process through the SHIPPED
MutatingWebhookConfiguration and Service (manifests/webhook/): it resolves the Service through
its EndpointSlice (`--enable-aggregator-routing=true`, controlplane/launch.py), which
devstack/placement_wiring.py points at this machine's non-loopback address and the operator's
webhook port, and it verifies the operator's self-managed certificate for
`kserve-operator-webhook.kserve-operator.svc` against the caBundle the operator set.

The ModelPrewarm is made warm the real way (test_prewarm_real.py): an opted-in
InferenceService, the operator's preloader Jobs, the real preloader pulling from moto's S3. The
predictor's pods come from a Deployment labelled as KServe labels them, and the REAL
kube-scheduler places them among 8 simulated GPU nodes.
"""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack import placement_wiring as wiring
from devstack.local_s3 import S3, create_credentials, moto_s3, upload_model
from devstack.metrics_stack import free_port
from kserve_operator.clients import webhook_certs
from tests.realcluster.conftest import World

ISVC = "torch-mnist"
URI = "s3://models/mnist"
OWN_AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}}]},
    "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                          "labelSelector": {"matchLabels": {"app": "nothing"}}}}]},
}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


def inference_service(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": ISVC, "namespace": namespace, "annotations": {
                "serverless.xyz/prewarm": "true", "serverless.xyz/prewarm-nodes": "2",
                "serverless.xyz/prewarm-device": "cpu"}},
            "spec": {"predictor": {
                "minReplicas": 2, "serviceAccountName": "models-s3",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "model": {"modelFormat": {"name": "pytorch"}, "storageUri": URI,
                          "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}}}}}}


def warm_nodes(world: World) -> list[str]:
    prewarm = world.kube.wait_for(world.path("serving.serverless.xyz/v1alpha1", "modelprewarms", ISVC),
                                  lambda o: (o.get("status") or {}).get("phase") == "Warm", timeout=180, interval=0.5)
    status = prewarm["status"]
    return sorted(n.get("hostname") or n["name"] for n in status["nodes"]
                  if n["phase"] == "Warm" and n.get("version") == status.get("modelVersion"))


def start_webhook_operator(world: World) -> int:
    port = free_port()
    wiring.wire_webhook(world.kube, port)
    world.start_operator(WEBHOOK_PORT=str(port))
    world.cluster.wait_for(lambda: wiring.ca_bundle_set(world.kube), 30, message="the operator to set the caBundle")
    return port


def create_pod(world: World, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None,
               affinity: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "kserve/torchserve-kfs:0.9.0"}],
                            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    if affinity is not None:
        spec["affinity"] = affinity
    return world.kube.create(world.path("v1", "pods"), {
        "apiVersion": "v1", "kind": "Pod", "spec": spec,
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}}})


def preferred(pod: dict[str, Any]) -> list[dict[str, Any]]:
    node_affinity = ((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
    return list(node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])


def warm_term(hostnames: list[str]) -> dict[str, Any]:
    return {"weight": 100, "preference": {"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": sorted(hostnames)}]}}


def test_predictor_pods_land_on_the_warm_nodes_and_keep_their_own_affinity(prewarm_world: World, s3: S3) -> None:
    world, kube = prewarm_world, prewarm_world.kube
    upload_model(s3, "mnist/model.safetensors", seed=1)
    nodes = world.add_gpu_nodes(*(f"gpu-{i}" for i in range(1, 9)))
    create_credentials(kube, s3.endpoint, namespace=world.namespace)
    if kube.exists(wiring.SECRET_PATH):
        kube.delete(wiring.SECRET_PATH)
    start_webhook_operator(world)
    secret = kube.get(wiring.SECRET_PATH)  # created by the operator (its Role: create, then get by name)
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    bundle = kube.get(wiring.CONFIGURATION_PATH)["webhooks"][0]["clientConfig"]["caBundle"]
    assert bundle == secret["data"]["ca.crt"]

    kube.create(world.path("serving.kserve.io/v1beta1", "inferenceservices"), inference_service(world.namespace))
    warm = warm_nodes(world)
    assert len(warm) == 2 and set(warm) <= set(nodes)

    # KServe's predictor Deployment, with affinity of its own: 2 then 4 replicas.
    deployments = world.path("apps/v1", "deployments")
    kube.create(deployments, wiring.predictor_deployment(world.namespace, ISVC, URI, 2, affinity=OWN_AFFINITY))

    def placed(count: int) -> list[dict[str, Any]]:
        return world.cluster.wait_for(
            lambda: (lambda pods: pods if len(pods) == count and all(p["spec"].get("nodeName") for p in pods) else [])(
                wiring.predictor_pods(kube, world.namespace, ISVC)), 60, message=f"{count} predictor pods bound")

    pods = placed(2)
    assert sorted(p["spec"]["nodeName"] for p in pods) == warm  # one GPU each: both warm nodes
    for pod in pods:
        assert preferred(pod) == [OWN_AFFINITY["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0],
                                  warm_term(warm)]  # added once (reinvocationPolicy: IfNeeded)
        affinity = pod["spec"]["affinity"]
        assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == (
            OWN_AFFINITY["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"])
        assert affinity["podAntiAffinity"] == OWN_AFFINITY["podAntiAffinity"]
        assert pod["metadata"]["annotations"][wiring.PREFERRED_ANNOTATION] == ",".join(warm)

    # Beyond the warm nodes (1 GPU each), the preference gives way: the pods still run elsewhere.
    kube.patch(f"{deployments}/{ISVC}-predictor", {"spec": {"replicas": 4}})
    pods = placed(4)
    assert set(warm) < {p["spec"]["nodeName"] for p in pods}

    # Left unchanged: a transformer of the same service, a pod without KServe's labels.
    transformer = create_pod(world, "transformer", {wiring.ISVC_LABEL: ISVC, "component": "transformer"},
                             {wiring.SOURCE_URI_ANNOTATION: URI})
    plain = create_pod(world, "plain", {"app": "web"})
    for pod in (transformer, plain):
        assert "affinity" not in pod["spec"] and wiring.PREFERRED_ANNOTATION not in pod["metadata"].get(
            "annotations", {})
    # A predictor of a service with no ModelPrewarm (no URI annotation, no same-named ModelPrewarm).
    cold = create_pod(world, "cold", {wiring.ISVC_LABEL: "unknown", "component": "predictor"})
    assert "affinity" not in cold["spec"]

    # The operator down: the API server cannot reach the webhook and admits the pod unchanged.
    for operator in world.operators:
        operator.stop()
    started = time.monotonic()
    down = create_pod(world, "while-down", {wiring.ISVC_LABEL: ISVC, "component": "predictor"},
                      {wiring.SOURCE_URI_ANNOTATION: URI}, affinity=OWN_AFFINITY)
    assert time.monotonic() - started < 5
    assert down["spec"]["affinity"] == OWN_AFFINITY
    kube.delete(f"{deployments}/{ISVC}-predictor")
    wiring.unwire_webhook(kube)
    world.start_operator()  # without the webhook: the namespace's finalizers still get handled


def test_a_certificate_near_its_end_is_renewed_with_the_same_ca(world: World) -> None:
    """A replica starting with under 30 days left renews the serving certificate (a patch of the
    Secret by name) and keeps the CA, so the caBundle and the other replicas stay valid."""
    kube = world.kube
    names = webhook_certs.service_dns_names(wiring.SERVICE, wiring.OPERATOR_NAMESPACE)
    old = webhook_certs.generate(names, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=340))
    data = {"ca.crt": old.ca_cert, "ca.key": old.ca_key, "tls.crt": old.cert, "tls.key": old.key}
    body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": wiring.SECRET, "namespace": wiring.OPERATOR_NAMESPACE},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    if kube.exists(wiring.SECRET_PATH):
        kube.delete(wiring.SECRET_PATH)
    kube.create(f"/api/v1/namespaces/{wiring.OPERATOR_NAMESPACE}/secrets", body)
    world.add_node("cpu")
    port = start_webhook_operator(world)
    secret = kube.get(wiring.SECRET_PATH)
    assert base64.b64decode(secret["data"]["ca.crt"]) == old.ca_cert
    renewed = webhook_certs.WebhookCertificates(*(base64.b64decode(secret["data"][k])
                                                  for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")))
    assert renewed.cert != old.cert
    assert webhook_certs.renewal_reason(renewed, names, datetime.datetime.now(datetime.UTC)) is None
    assert kube.get(wiring.CONFIGURATION_PATH)["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    # The webhook serves the renewed certificate, trusted through the CA for the Service's name.
    context = ssl.create_default_context(cadata=renewed.ca_cert.decode())
    with socket.create_connection((wiring.host_address(), port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=names[0]) as tls:
        served = tls.getpeercert(binary_form=True)
    assert served == x509.load_pem_x509_certificate(renewed.cert).public_bytes(serialization.Encoding.DER)
    assert "Renewed the webhook certificate" in world.operators[0].log()
    wiring.unwire_webhook(kube)
