"""Objects as the API server returns them, for the pre-warm planning tests: Nodes, Jobs, Pods."""

from __future__ import annotations

import json
from typing import Any

from kserve_operator.planning.node_selection import NodeView


def node(name: str, *, labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
         gpus: int = 1, unschedulable: bool = False) -> dict[str, Any]:
    allocatable = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": spec, "status": {"allocatable": allocatable}}


def views(*raw: dict[str, Any]) -> list[NodeView]:
    return [NodeView.parse(n) for n in raw]


def result(uri: str = "s3://models/mnist", *, version: str = "v1", cache: str = "miss") -> dict[str, Any]:
    return {"model": uri, "files": 2, "bytes": 1_000_000,
            "seconds": {"list": 0.01, "download": 0.2, "deserialise": 0.1, "to-device": 0.05, "total": 0.25},
            "gbps": 0.004, "device": "cpu", "cache": cache, "version": version}


def pod(job: str, *, phase: str, exit_code: int | None = None, message: object = None, created: str = "1",
        finished: str = "2026-12-02T01:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        text = message if isinstance(message, str) else json.dumps(message) if message is not None else ""
        status["containerStatuses"] = [{"name": "preloader", "state": {"terminated": {
            "exitCode": exit_code, "message": text, "finishedAt": finished,
            "reason": "Completed" if exit_code == 0 else "Error"}}}]
    return {"metadata": {"name": f"{job}-{created}", "creationTimestamp": f"2026-12-02T00:00:0{created}Z",
                         "labels": {"batch.kubernetes.io/job-name": job}}, "status": status}


def finished_job(job: dict[str, Any], condition: str, *, reason: str = "", message: str = "") -> dict[str, Any]:
    done = json.loads(json.dumps(job))
    done.setdefault("status", {})["conditions"] = [
        {"type": condition, "status": "True", "reason": reason, "message": message}]
    return done
