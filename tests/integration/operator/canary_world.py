"""What the ModelCanary integration tests set up on the emulated cluster: InferenceServices, a
VirtualService shaped like a real Istio one (devstack/mnist_virtualservice.py), ModelPrewarms
with a status, ModelCanaries, and ways to read them back."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from devstack.mnist_virtualservice import virtual_service as virtual_service

NS = "default"
MCANARY = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelcanaries"
PREWARM = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
EVENTS = f"/api/v1/namespaces/{NS}/events"
STABLE_HOST = f"torch-mnist-predictor.{NS}.svc.cluster.local"
CANDIDATE_HOST = f"torch-mnist-v2-predictor.{NS}.svc.cluster.local"


def vs_path(version: str = "v1", name: str = "mnist") -> str:
    return f"/apis/networking.istio.io/{version}/namespaces/{NS}/virtualservices/{name}"


def inference_service(name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch"},
                                             "storageUri": f"s3://models/{name}"}}}}


def model_canary(name: str = "mnist", **spec: Any) -> dict[str, Any]:
    full: dict[str, Any] = {
        "virtualService": {"name": "mnist"},
        "stable": {"inferenceService": "torch-mnist"},
        "candidate": {"inferenceService": "torch-mnist-v2"},
        "percent": 20,
    }
    full.update(spec)
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
            "metadata": {"name": name, "namespace": NS}, "spec": full}


def model_prewarm(name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"storageUri": f"s3://models/{name}"}}


def set_prewarm_phase(kube: Any, name: str, phase: str, warm_nodes: int | None = None) -> None:
    """Stand in for a pre-warm: phase and warm node count written through the /status subresource
    (by default one warm node when Warm, none otherwise), for the model the spec asks for.

    The operator's own ModelPrewarm controller runs too (it finds no nodes here and reports
    Pending); wait until kopf has handled the object (finalizer on, creation recorded) and the
    controller's status is written, so no pass of it can land after ours.
    """
    body = kube.wait_for(f"{PREWARM}/{name}", lambda o: (o.get("status") or {}).get("observedGeneration")
                         == o["metadata"].get("generation")
                         and "serverless.xyz/kserve-operator" in (o["metadata"].get("finalizers") or [])
                         and "kserve-operator.serverless.xyz/last-handled-configuration"
                         in (o["metadata"].get("annotations") or {}))
    warm = warm_nodes if warm_nodes is not None else int(phase == "Warm")
    kube.patch(f"{PREWARM}/{name}/status", {"status": {"phase": phase, "warmNodes": warm,
                                                       "storageUri": body["spec"]["storageUri"]}})


def install_world(kube: Any, *, version: str = "v1") -> dict[str, Any]:
    """Both InferenceServices and the mnist VirtualService; returns the VirtualService as stored."""
    for name in ("torch-mnist", "torch-mnist-v2"):
        kube.create(ISVC, inference_service(name))
    created: dict[str, Any] = kube.create(vs_path(version).rsplit("/", 1)[0], virtual_service(version=version))
    return created


def route(vs: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in vs["spec"]["http"] if r.get("name") == name)
    return found


def weights(vs: dict[str, Any], name: str = "predict") -> list[int]:
    return [d.get("weight", 100) for d in route(vs, name)["route"]]


def condition(obj: dict[str, Any], type: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type:
            return dict(c)
    return {}


def events_for(kube: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list(EVENTS) if (e.get("involvedObject") or {}).get("name") == name]


def events_until(kube: Any, name: str, seen: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 5.0) -> list[dict[str, Any]]:
    """The events of `name` once `seen` holds: the operator posts them after the status write, so a
    test that saw the status waits for them rather than reading once."""
    deadline = time.monotonic() + timeout
    while True:
        events = events_for(kube, name)
        if seen(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def wait_phase(kube: Any, name: str, phase: str, timeout: float = 10.0) -> dict[str, Any]:
    result: dict[str, Any] = kube.wait_for(f"{MCANARY}/{name}",
                                           lambda o: (o.get("status") or {}).get("phase") == phase, timeout=timeout)
    return result


def without_weights(vs: dict[str, Any]) -> dict[str, Any]:
    """The VirtualService's spec with every HTTP destination weight removed (for whole comparisons)."""
    spec: dict[str, Any] = copy.deepcopy(vs["spec"])
    for http_route in spec.get("http") or []:
        for destination in http_route.get("route") or []:
            destination.pop("weight", None)
    return spec


def operator_writes(cluster: Any, since: float, resources: tuple[str, ...] | None = None) -> int:
    """Writes by the operator (kopf's client and ours), events excluded."""
    return sum(int(cluster.count_writes(since=since, user_agent=agent, resources=resources))
               for agent in ("kopf/", "kserve-operator"))


def settle(cluster: Any, quiet_for: float = 1.0, timeout: float = 15.0) -> None:
    cluster.wait_quiet(quiet_for, timeout=timeout)
    time.sleep(0.05)
