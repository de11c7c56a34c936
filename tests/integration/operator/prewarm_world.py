"""The pre-warm tests' world: a real S3 (moto's server), a small real model in it, KServe-style
credentials (a service account listing a Secret), simulated GPU nodes, and the real preloader
registered as the `preloader:gpu` image so that the emulated cluster's Jobs run it as a local
process (devcluster/jobs.py, devcluster/kubelet.py)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import torch
from moto.server import ThreadedMotoServer
from safetensors.torch import save

from devcluster import ClusterClient, EmulatedCluster
from devstack.metrics_stack import free_port

NS = "default"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
PREWARM = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"
PRELOADER_IMAGE = "preloader:gpu"
ROOT = pathlib.Path(__file__).resolve().parents[3]
TORCH_MNIST = ROOT / "manifests" / "samples" / "torch-mnist.yaml"
GPU_LABELS = {"nvidia.com/gpu.present": "true"}
GPU_TAINTS = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


@dataclasses.dataclass(frozen=True)
class S3:
    endpoint: str  # host:port, as KServe's s3-endpoint annotation carries it
    client: Any


@contextlib.contextmanager
def moto_s3() -> Iterator[S3]:
    """moto's S3 server on loopback with a `models` bucket (a test module's fixture wraps it)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="models")
        yield S3(f"127.0.0.1:{port}", client)
    finally:
        server.stop()


def mnist_bytes(seed: int) -> bytes:
    """A small real model: an MNIST MLP's weights (784 -> 128 -> 10) as safetensors, ~400 KB."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"fc1.weight": torch.randn(128, 784, generator=generator), "fc1.bias": torch.zeros(128),
               "fc2.weight": torch.randn(10, 128, generator=generator), "fc2.bias": torch.zeros(10)}
    return save(tensors)


def upload_model(s3: S3, key: str, seed: int = 0) -> int:
    body = mnist_bytes(seed)
    s3.client.upload_fileobj(io.BytesIO(body), "models", key)
    return len(body)


def run_preloader_locally(cluster: EmulatedCluster) -> None:
    """`preloader:gpu` stands for `python -m preloader` here (the image's ENTRYPOINT)."""
    cluster.sim.register_local_image(PRELOADER_IMAGE, [sys.executable, "-m", "preloader"],
                                     env={"AWS_EC2_METADATA_DISABLED": "true"})


def add_gpu_nodes(cluster: EmulatedCluster, *names: str) -> None:
    for name in names:
        cluster.add_node(name, gpus=1, labels=GPU_LABELS, taints=GPU_TAINTS)


def create_credentials(kube: ClusterClient, s3_endpoint: str, *, account: str = "models-s3",
                       secret: str = "models-s3-keys") -> None:
    """KServe's convention: a Secret with awsAccessKeyID/awsSecretAccessKey and s3-* annotations,
    listed by the service account the predictor runs as."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    kube.create(f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret, "annotations": {
            "serving.kserve.io/s3-endpoint": s3_endpoint, "serving.kserve.io/s3-usehttps": "0",
            "serving.kserve.io/s3-region": "us-east-1"}},
        "data": {"awsAccessKeyID": b64("testing"), "awsSecretAccessKey": b64("testing")}})
    kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account},
        "secrets": [{"name": secret}]})


def torch_mnist(**annotations: str) -> dict[str, Any]:
    """The sample InferenceService, with extra annotations."""
    import yaml

    body: dict[str, Any] = yaml.safe_load(TORCH_MNIST.read_text())
    body["metadata"]["annotations"].update(annotations)
    return body


def condition(obj: dict[str, Any], type: str) -> dict[str, Any]:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type:
            return dict(c)
    return {}


def events_for(kube: ClusterClient, kind: str, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list(EVENTS)
            if e.get("involvedObject", {}).get("kind") == kind and e["involvedObject"].get("name") == name]


def jobs_of(kube: ClusterClient, prewarm: str) -> list[dict[str, Any]]:
    return kube.list(JOBS, label_selector=f"serving.serverless.xyz/modelprewarm={prewarm}")


def node_of(job: dict[str, Any]) -> str:
    return str(job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"])


def phase_is(phase: str) -> Any:
    return lambda obj: obj.get("status", {}).get("phase") == phase


def operator_writes(cluster: EmulatedCluster, since: float) -> int:
    return sum(int(cluster.count_writes(since=since, exclude_resources=(), user_agent=agent))
               for agent in ("kopf/", "kserve-operator"))


def preloader_result(version: str = "v1") -> str:
    return json.dumps({"model": "s3://models/mnist", "files": 1, "bytes": 1000, "seconds": {"total": 0.5},
                       "gbps": 0.002, "device": "cuda", "cache": "miss", "version": version})
