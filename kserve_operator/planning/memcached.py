"""Everything the Memcached controller decides: replica math, the scaling window,
the Deployment and Service manifests, the status and the events to emit.

Pure: callers pass the observed state and `now`; nothing here talks to a server.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping
from typing import Any

from kserve_operator.resources import conditions as cond
from kserve_operator.resources.memcached import Memcached, MemcachedSpec

MEMCACHED_PORT = 11211
EXPORTER_PORT = 9150
MANAGED_BY = "kserve-operator"

# Kept on the Deployment in the same write that changes its replicas, so the time of a scale
# survives a status write that is lost after it.
LAST_SCALE_ANNOTATION = "cache.serverless.xyz/last-scale-time"


@dataclasses.dataclass(frozen=True)
class MemcachedImages:
    """Operator-wide settings for the pods it runs (from OperatorSettings)."""

    memcached: str = "memcached:1.6.38-alpine"
    exporter: str = "prom/memcached-exporter:v0.15.3"
    memory_mb: int = 64


@dataclasses.dataclass(frozen=True)
class ScaleDownWindow:
    """A pending scale-down: the lower value first seen at `since`, the highest wanted value since."""

    since: datetime.datetime
    replicas: int

    def to_status(self) -> dict[str, Any]:
        """Whole seconds, rounded up: a window read back from status is never shorter than asked."""
        since = self.since
        if since.microsecond:
            since = since.replace(microsecond=0) + datetime.timedelta(seconds=1)
        return {"since": cond.rfc3339(since), "replicas": self.replicas}

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> ScaleDownWindow | None:
        if not raw or "since" not in raw or "replicas" not in raw:
            return None
        try:
            return cls(since=cond.parse_rfc3339(str(raw["since"])), replicas=int(raw["replicas"]))
        except (TypeError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class ReplicaDecision:
    replicas: int  # what the Deployment should run now
    wanted: int  # what demand asks for right now (spares added, capped)
    window: ScaleDownWindow | None  # an open scale-down window, if any
    reason: str  # why, in words, for events and logs


def labels_for(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "memcached",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_for(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": name}


def default_metrics_query(namespace: str, name: str) -> str:
    """Client connections over the cache's pods.

    memcached counts the exporter's own stats connection in `curr_connections`, so each
    pod reports 1 when idle; subtracting it lets an idle cache read 0 and scale to zero.
    """
    selector = f'namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'
    return f"sum(clamp_min(memcached_current_connections{{{selector}}} - 1, 0))"


def wanted_replicas(spec: MemcachedSpec, connections: float) -> int:
    """max(size, ceil(connections / target)) plus warm spares, capped; 0 only when idle at size 0."""
    if spec.target_connections_per_replica is None:
        return spec.size
    demand = math.ceil(max(connections, 0.0) / spec.target_connections_per_replica)
    if connections > 0:
        demand = max(demand, 1)  # any client needs a replica, even where the division underflows to 0
    base = max(spec.size, demand)
    if base == 0:
        return 0
    return min(base + spec.cold_start_buffer, spec.max_size)


def decide_replicas(
    spec: MemcachedSpec,
    *,
    connections: float | None,
    current: int | None,
    window: ScaleDownWindow | None,
    now: datetime.datetime,
) -> ReplicaDecision:
    """Scale up at once, scale down only after the lower value held for the whole window.

    `connections=None` means Prometheus gave no usable answer: hold what runs now.
    `current=None` means there is no Deployment yet.
    """
    if not spec.autoscaling:
        return ReplicaDecision(spec.size, spec.size, None, f"size is {spec.size} (autoscaling off)")

    if connections is None:
        held = current if current is not None else max(spec.size, 1)
        return ReplicaDecision(held, held, window, f"holding {held}: no usable metrics")

    wanted = wanted_replicas(spec, connections)
    why = (
        f"{connections:g} active connections, {spec.target_connections_per_replica} per replica, "
        f"size {spec.size}, {spec.cold_start_buffer} warm spare(s), max {spec.max_size}"
    )
    if current is None:
        # A new cache starts warm; reaching zero takes a whole idle window like any scale-down.
        start = max(wanted, 1)
        opened = ScaleDownWindow(now, wanted) if wanted < start else None
        return ReplicaDecision(start, wanted, opened, why)
    if current > spec.max_size:
        return ReplicaDecision(spec.max_size, wanted, None, f"{why}; capped at maxSize")
    if wanted >= current:
        return ReplicaDecision(wanted, wanted, None, why)

    # wanted < current: open or extend the window; the highest value seen in it wins.
    if window is None:
        if spec.scaling_window_seconds <= 0:
            return ReplicaDecision(wanted, wanted, None, f"{why}; no scale-down window")
        return ReplicaDecision(current, wanted, ScaleDownWindow(now, wanted), f"{why}; scale-down window opened")
    pending = ScaleDownWindow(window.since, max(window.replicas, wanted))
    if pending.replicas >= current:
        # Demand came back up to the running count inside the window: start over.
        return ReplicaDecision(current, wanted, ScaleDownWindow(now, wanted), f"{why}; window restarted")
    elapsed = (now - window.since).total_seconds()
    if elapsed >= spec.scaling_window_seconds:
        return ReplicaDecision(pending.replicas, wanted, None, f"{why}; lower for {elapsed:.0f}s")
    remaining = spec.scaling_window_seconds - elapsed
    return ReplicaDecision(current, wanted, pending, f"{why}; scale-down in {remaining:.0f}s")


def child_metadata(cache: Memcached) -> dict[str, Any]:
    """Same name and namespace as the cache, our labels, and the cache as controlling owner."""
    return {
        "name": cache.name,
        "namespace": cache.meta.namespace,
        "labels": labels_for(cache.name),
        "ownerReferences": [cache.controller_reference()],
    }


_RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def build_deployment(
    cache: Memcached, replicas: int, images: MemcachedImages, last_scale_time: str | None = None,
) -> dict[str, Any]:
    """memcached plus the upstream exporter as a sidecar, restricted pod security, probes."""
    name = cache.name
    metadata = child_metadata(cache)
    if last_scale_time is not None:
        metadata["annotations"] = {LAST_SCALE_ANNOTATION: last_scale_time}
    memory_limit = f"{images.memory_mb + images.memory_mb // 2}Mi"
    memcached = {
        "name": "memcached",
        "image": images.memcached,
        "args": ["-m", str(images.memory_mb), "-p", str(MEMCACHED_PORT), "-U", "0", "-c", "4096"],
        "ports": [{"name": "memcached", "containerPort": MEMCACHED_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": f"{images.memory_mb}Mi"},
            "limits": {"memory": memory_limit},
        },
        "readinessProbe": {"tcpSocket": {"port": "memcached"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "memcached"}, "initialDelaySeconds": 10, "periodSeconds": 10},
        "securityContext": {**_RESTRICTED_CONTAINER, "runAsUser": 11211, "runAsGroup": 11211},
    }
    exporter = {
        "name": "exporter",
        "image": images.exporter,
        "args": [f"--memcached.address=127.0.0.1:{MEMCACHED_PORT}", f"--web.listen-address=:{EXPORTER_PORT}"],
        "ports": [{"name": "metrics", "containerPort": EXPORTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 20},
        "securityContext": {**_RESTRICTED_CONTAINER, "runAsUser": 65534, "runAsGroup": 65534},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_for(name)},
            "template": {
                "metadata": {
                    "labels": labels_for(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(EXPORTER_PORT),
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [memcached, exporter],
                },
            },
        },
    }


def build_service(cache: Memcached) -> dict[str, Any]:
    name = cache.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(cache),
        "spec": {
            "selector": selector_for(name),
            "ports": [
                {"name": "memcached", "port": MEMCACHED_PORT, "targetPort": "memcached", "protocol": "TCP"},
                {"name": "metrics", "port": EXPORTER_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }
