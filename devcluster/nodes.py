"""SIMULATED Nodes and the part of the scheduler the simulated Job controller needs.

A Node here is only an API object: labels (``kubernetes.io/hostname`` always), taints,
``capacity`` / ``allocatable`` (``nvidia.com/gpu`` included when asked) and a ``Ready``
condition. No kubelet heartbeats it, so it never turns NotReady by itself (``set_node_ready``
does that), and nothing evicts pods from a NotReady node (real clusters do after 5 minutes).

``schedule`` picks a node for a pod the way kube-scheduler's filters would for the fields
operators use: ``spec.nodeName`` (here checked like a selector, where a real pod bound by
name skips the scheduler), ``spec.nodeSelector``, taints with effect ``NoSchedule`` /
``NoExecute`` against ``spec.tolerations``, readiness, and ``nvidia.com/gpu`` requests against
allocatable minus what bound, unfinished pods request. It does NOT evaluate affinity,
topology spread, ports, CPU/memory fit, priorities or preemption.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from devcluster.store import now_rfc3339

GPU = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"


def node_body(name: str, *, labels: Mapping[str, str] | None = None,
              taints: Iterable[Mapping[str, str]] = (), gpus: int = 0,
              capacity: Mapping[str, str | int] | None = None,
              allocatable: Mapping[str, str | int] | None = None, ready: bool = True,
              address: str = "10.0.0.1") -> dict[str, Any]:
    """A Node as a kubelet registers it (``capacity`` defaults: 8 CPUs, 32Gi, 110 pods, ``gpus``)."""
    full_capacity: dict[str, str] = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    if gpus:
        full_capacity[GPU] = str(gpus)
    full_capacity.update({key: str(value) for key, value in (capacity or {}).items()})
    full_allocatable = dict(full_capacity)
    full_allocatable.update({key: str(value) for key, value in (allocatable or {}).items()})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                               **(labels or {}), HOSTNAME_LABEL: name}},
        "spec": {"taints": [dict(taint) for taint in taints]} if taints else {},
        "status": {
            "capacity": full_capacity,
            "allocatable": full_allocatable,
            "conditions": [ready_condition(ready)],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.31.0-devcluster", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "devcluster://local-process"},
        },
    }


def ready_condition(ready: bool) -> dict[str, str]:
    stamp = now_rfc3339()
    return {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet is posting ready status" if ready else "kubelet stopped posting node status",
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}


def is_ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def node_address(node: Mapping[str, Any]) -> str:
    return next((a.get("address", "") for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"), "")


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration matches the taint (``Exists`` / ``Equal``, empty key and effect = any)."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        operator = toleration.get("operator") or "Equal"
        key = toleration.get("key") or ""
        if operator == "Exists" and (not key or key == taint.get("key")):
            return True
        if operator == "Equal" and key == taint.get("key") and \
                (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def gpu_request(pod_spec: Mapping[str, Any]) -> int:
    """The ``nvidia.com/gpu`` a pod asks for (limits imply requests for extended resources)."""
    total = 0
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU, (resources.get("requests") or {}).get(GPU, 0))
        total += int(value)
    return total


def schedule(pod_spec: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]],
             gpus_in_use: Mapping[str, int]) -> tuple[str | None, str]:
    """The first fitting node by name, or ``None`` and the scheduler's "0/N nodes" message."""
    wanted_name = pod_spec.get("nodeName")
    selector: Mapping[str, str] = pod_spec.get("nodeSelector") or {}
    tolerations = pod_spec.get("tolerations") or []
    gpus = gpu_request(pod_spec)
    reasons: dict[str, int] = {}
    candidates = sorted(nodes, key=lambda n: n["metadata"]["name"])
    for node in candidates:
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        taints = [t for t in (node.get("spec") or {}).get("taints") or []
                  if t.get("effect") in ("NoSchedule", "NoExecute")]
        allocatable = int(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
        if wanted_name and wanted_name != name:
            reason = "didn't match the requested node name"
        elif any(labels.get(key) != value for key, value in selector.items()):
            reason = "didn't match Pod's node affinity/selector"
        elif not is_ready(node):
            reason = "had untolerated taint {node.kubernetes.io/not-ready: }"
        elif any(not tolerates(tolerations, taint) for taint in taints):
            taint = next(t for t in taints if not tolerates(tolerations, t))
            reason = f"had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
        elif gpus and gpus_in_use.get(name, 0) + gpus > allocatable:
            reason = f"Insufficient {GPU}"
        else:
            return name, ""
        reasons[reason] = reasons.get(reason, 0) + 1
    detail = ", ".join(f"{count} node(s) {reason}" if not reason.startswith("Insufficient")
                       else f"{count} {reason}" for reason, count in sorted(reasons.items()))
    total = len(candidates)
    return None, f"0/{total} nodes are available" + (f": {detail}." if detail else ".") + \
        f" preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
