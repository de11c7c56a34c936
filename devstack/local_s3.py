"""A local S3 for the demo and the tests: moto's server on loopback, small real models in it, and
the KServe-style credentials (a Secret with `serving.kserve.io/s3-*` annotations, listed by a
service account) that make the operator's preloader Jobs find it as KServe would.

The models are real safetensors files (MLP weights an MNIST classifier has), so the preloader
really downloads, parses and loads them; their weights are seeded noise, not trained ones.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import torch
from moto.server import ThreadedMotoServer
from safetensors.torch import save

from devcluster import ClusterClient
from devstack.metrics_stack import free_port

BUCKET = "models"
REGION = "us-east-1"
ACCESS_KEY = "testing"  # moto accepts any keys; these are what the Secret carries
SECRET_KEY = "testing"  # noqa: S105 (moto's, a local stand-in)


@dataclasses.dataclass(frozen=True)
class S3:
    endpoint: str  # host:port, as KServe's s3-endpoint annotation carries it
    client: Any  # a boto3 S3 client for that endpoint

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"


@contextlib.contextmanager
def moto_s3() -> Iterator[S3]:
    """moto's S3 server on a free loopback port with an empty `models` bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        client.create_bucket(Bucket=BUCKET)
        yield S3(f"127.0.0.1:{port}", client)
    finally:
        server.stop()


def mnist_bytes(seed: int, hidden: tuple[int, ...] = (128,)) -> bytes:
    """An MNIST MLP's weights (784 -> hidden... -> 10) as safetensors; ~400 KB with the default."""
    generator = torch.Generator().manual_seed(seed)
    sizes = (784, *hidden, 10)
    tensors: dict[str, torch.Tensor] = {}
    for layer, (inputs, outputs) in enumerate(itertools.pairwise(sizes), start=1):
        tensors[f"fc{layer}.weight"] = torch.randn(outputs, inputs, generator=generator)
        tensors[f"fc{layer}.bias"] = torch.zeros(outputs)
    return save(tensors)


def upload_model(s3: S3, key: str, seed: int = 0) -> int:
    """The small MNIST MLP at `s3://models/<key>`; returns its size in bytes."""
    body = mnist_bytes(seed)
    s3.client.upload_fileobj(io.BytesIO(body), BUCKET, key)
    return len(body)


def upload_model_directory(s3: S3, prefix: str, seed: int = 0) -> int:
    """A model directory at `s3://models/<prefix>/`: a ~15 MB MLP (784 -> 2048 -> 1024 -> 10) and its
    config.json, the shape of what a training job leaves behind; returns the bytes uploaded."""
    hidden = (2048, 1024)
    files = {
        "model.safetensors": mnist_bytes(seed, hidden),
        "config.json": json.dumps({"architecture": "mlp", "layers": [784, *hidden, 10]}).encode(),
    }
    for name, body in files.items():
        s3.client.upload_fileobj(io.BytesIO(body), BUCKET, f"{prefix.strip('/')}/{name}")
    return sum(len(body) for body in files.values())


def upload_sharded_model(s3: S3, prefix: str, shards: int = 3, seed: int = 0) -> int:
    """An LLM-style sharded checkpoint at `s3://models/<prefix>/`: `model-0000i-of-0000n.safetensors`
    shards (one MLP layer each) and the `model.safetensors.index.json` naming which shard holds
    which tensor, as Hugging Face writes them; returns the bytes uploaded."""
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for shard in range(1, shards + 1):
        name = f"model-{shard:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layers.{shard}.weight": torch.randn(512, 512, generator=generator),
                   f"layers.{shard}.bias": torch.zeros(512)}
        files[name] = save(tensors)
        weight_map.update(dict.fromkeys(tensors, name))
    total = sum(len(body) for body in files.values())
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}).encode()
    for name, body in files.items():
        s3.client.upload_fileobj(io.BytesIO(body), BUCKET, f"{prefix.strip('/')}/{name}")
    return sum(len(body) for body in files.values())


def create_credentials(kube: ClusterClient, s3_endpoint: str, *, namespace: str = "default",
                       account: str = "models-s3", secret: str = "models-s3-keys") -> None:  # noqa: S107 (a Secret object's name)
    """KServe's convention: a Secret with awsAccessKeyID/awsSecretAccessKey and s3-* annotations,
    listed by the service account the predictor runs as."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret, "annotations": {
            "serving.kserve.io/s3-endpoint": s3_endpoint, "serving.kserve.io/s3-usehttps": "0",
            "serving.kserve.io/s3-region": REGION}},
        "data": {"awsAccessKeyID": b64(ACCESS_KEY), "awsSecretAccessKey": b64(SECRET_KEY)}})
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account},
        "secrets": [{"name": secret}]})
