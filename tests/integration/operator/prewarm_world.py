"""The pre-warm tests' world: a real S3 (moto's server), a small real model in it, KServe-style
credentials (a service account listing a Secret), simulated GPU nodes, and the real preloader
registered as the `kserve-preloader:0.1.0` image so that the emulated cluster's Jobs run it as a local
process. The S3 and GPU-pool pieces live in devstack/local_s3.py and
devstack/simulated_gpu_pool.py (the demo uses them too); the rest is here."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from devcluster import ClusterClient, EmulatedCluster

NS = "default"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
PREWARM = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"
# The preloader Jobs run in the platform's namespace (the operator's PREWARM_NAMESPACE default).
JOB_NS = "kserve-prewarm"
JOBS = f"/apis/batch/v1/namespaces/{JOB_NS}/jobs"
JOB_PODS = f"/api/v1/namespaces/{JOB_NS}/pods"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"
ROOT = pathlib.Path(__file__).resolve().parents[3]
TORCH_MNIST = ROOT / "manifests" / "samples" / "torch-mnist.yaml"


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
