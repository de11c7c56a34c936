"""What the parts of `make demo` and `make demo-real` share: the running cluster (emulated or
real), S3, metrics and operator, how they speak (plain lines, flushed as they happen) and how they
stop (DemoFailed, with the reason)."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from controlplane.cluster import RealCluster
from devcluster import ClusterClient, EmulatedCluster
from devstack.istio_metrics_exporter import IstioMetricsExporter
from devstack.kubectl_table import get_table
from devstack.local_s3 import S3
from devstack.operator_process import OperatorProcess

NS = "default"
EVENTS = f"/api/v1/namespaces/{NS}/events"


class DemoFailed(Exception):
    """Something the demo shows did not happen; the message says what (the demo exits 1)."""


#: Either cluster runs every part: the emulated one (`make demo`) or the real control plane (`make demo-real`).
Cluster = EmulatedCluster | RealCluster


@dataclasses.dataclass
class DemoWorld:
    cluster: Cluster
    kube: ClusterClient
    kubeconfig: pathlib.Path
    workdir: pathlib.Path
    s3: S3
    operator: OperatorProcess
    memcached_port: int | None = None  # with a real memcached and Prometheus
    prometheus_url: str | None = None
    istio_metrics: IstioMetricsExporter | None = None  # Istio-shaped request series, scraped by that Prometheus

    def kubectl_get(self, crd: str, list_path: str) -> list[str]:
        """`kubectl get` of a custom resource in NS: the real kubectl on the real control plane, else
        the table built from the CRD's printer columns (`crd` is plural.group)."""
        if isinstance(self.cluster, RealCluster):
            return self.cluster.kubectl("get", crd, "-n", NS).stdout.splitlines()
        return get_table(self.kube, crd, list_path)


def say(text: str = "") -> None:
    print(text, flush=True)


def say_lines(lines: Iterable[str], indent: str = "  ") -> None:
    for line in lines:
        say(f"{indent}{line}")


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; DemoFailed naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise DemoFailed(f"{what}: not seen within {timeout:g}s")


class EventLog:
    """Prints the Events of the objects named, each once, in the order they were posted."""

    def __init__(self, kube: ClusterClient) -> None:
        self.kube = kube
        self.seen: set[str] = set()

    def of(self, kind: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.kube.list(EVENTS)
                if (e.get("involvedObject") or {}).get("kind") == kind and e["involvedObject"].get("name") == name]

    def reasons(self, kind: str, name: str) -> set[str]:
        return {str(e["reason"]) for e in self.of(kind, name)}

    def print_new(self, kind: str, name: str, indent: str = "  ") -> list[dict[str, Any]]:
        fresh = [e for e in self.of(kind, name) if e["metadata"]["uid"] not in self.seen]
        fresh.sort(key=_posted_order)
        for event in fresh:
            self.seen.add(event["metadata"]["uid"])
            say(f"{indent}event {event['type']}/{event['reason']} on {kind} {name}: {event['message']}")
        return fresh


def _posted_order(event: dict[str, Any]) -> tuple[str, int]:
    """Timestamps have whole seconds; within one, the emulator's resourceVersions count up."""
    version = str(event["metadata"].get("resourceVersion") or "")
    return (str(event.get("lastTimestamp") or ""), int(version) if version.isdigit() else 0)
