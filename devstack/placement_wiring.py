"""The placement webhook on the real control plane, with the operator as a local process.

kube-apiserver runs with `--enable-aggregator-routing=true` (controlplane/launch.py), so it
calls a webhook Service at an address taken from the Service's EndpointSlices, and verifies the
certificate for `<service>.<namespace>.svc`: the shipped path, exactly. What a pod network would
provide is written by hand: the shipped Service loses its selector (so the EndpointSlice
controller leaves it alone) and gets an EndpointSlice naming this machine's non-loopback
address (the API server refuses loopback endpoints) and the operator's webhook port.

Shared by tests/realcluster/test_placement_real.py and bench/bench_placement.py.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from devcluster.client import ApiError, ClusterClient

OPERATOR_NAMESPACE = "kserve-operator"
SERVICE = "kserve-operator-webhook"
CONFIGURATION = "kserve-operator-placement"
SECRET = "kserve-operator-webhook-tls"  # noqa: S105 (the Secret object's name)
SLICE = f"{SERVICE}-local"
CONFIGURATION_PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIGURATION}"
SERVICE_PATH = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/services/{SERVICE}"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/endpointslices"
SECRET_PATH = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/{SECRET}"

ISVC_LABEL = "serving.kserve.io/inferenceservice"
SOURCE_URI_ANNOTATION = "serving.kserve.io/storage-initializer-sourceuri"
PREFERRED_ANNOTATION = "serving.serverless.xyz/warm-nodes-preferred"


def host_address() -> str:
    """This machine's address on its default route (no packet is sent); loopback is refused by the API."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = str(probe.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        raise RuntimeError("this machine has no non-loopback IPv4 address for the webhook's EndpointSlice")
    return address


def wire_webhook(kube: ClusterClient, port: int) -> None:
    """Point the shipped Service at the local operator's webhook port (see the module docstring)."""
    service = kube.get(SERVICE_PATH)
    if service["spec"].get("selector"):
        kube.patch(SERVICE_PATH, [{"op": "remove", "path": "/spec/selector"}],
                   content_type="application/json-patch+json")
    unwire_webhook(kube)
    kube.create(SLICES_PATH, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": SLICE, "namespace": OPERATOR_NAMESPACE,
                     "labels": {"kubernetes.io/service-name": SERVICE,
                                "endpointslice.kubernetes.io/managed-by": "placement-wiring.devstack"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host_address()], "conditions": {"ready": True}}],
        "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}]})


def unwire_webhook(kube: ClusterClient) -> None:
    try:
        kube.delete(f"{SLICES_PATH}/{SLICE}")
    except ApiError as exc:
        if exc.status != 404:
            raise


def ca_bundle_set(kube: ClusterClient) -> bool:
    """The operator has put its CA into the shipped configuration."""
    webhooks = kube.get(CONFIGURATION_PATH).get("webhooks") or []
    return bool(webhooks) and all((w.get("clientConfig") or {}).get("caBundle") for w in webhooks)


def set_webhook_configured(kube: ClusterClient, configured: bool) -> None:
    """Take the configuration out (delete), or put it back as shipped with the CA of the Secret."""
    import yaml

    from devstack.operator_process import ROOT

    if not configured:
        try:
            kube.delete(CONFIGURATION_PATH)
        except ApiError as exc:
            if exc.status != 404:
                raise
        return
    if not kube.exists(CONFIGURATION_PATH):
        body = yaml.safe_load((ROOT / "manifests/webhook/mutating-webhook.yaml").read_text())
        if kube.exists(SECRET_PATH):  # what the operator sets at its start, set here for a running one
            for webhook in body["webhooks"]:
                webhook["clientConfig"]["caBundle"] = kube.get(SECRET_PATH)["data"]["ca.crt"]
        kube.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", body)


def predictor_deployment(namespace: str, isvc: str, uri: str | None, replicas: int, *,
                         affinity: Mapping[str, Any] | None = None, gpus: int = 1) -> dict[str, Any]:
    """The Deployment KServe makes for a predictor (raw deployment mode): its labels and annotation."""
    labels = {ISVC_LABEL: isvc, "component": "predictor", "app": f"isvc.{isvc}-predictor"}
    annotations = {SOURCE_URI_ANNOTATION: uri} if uri else {}
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "kserve-container", "image": "kserve/torchserve-kfs:0.9.0",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus), "memory": "1Gi"},
                                      "requests": {"cpu": "100m", "memory": "1Gi"}}}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 0,
    }
    if affinity is not None:
        pod_spec["affinity"] = dict(affinity)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{isvc}-predictor", "namespace": namespace, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": labels["app"]}},
                     "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}}}


def predictor_pods(kube: ClusterClient, namespace: str, isvc: str) -> list[dict[str, Any]]:
    pods = kube.list(f"/api/v1/namespaces/{namespace}/pods", label_selector=f"{ISVC_LABEL}={isvc},component=predictor")
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
