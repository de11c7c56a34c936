"""The Memcached custom resource (cache.serverless.xyz/v1alpha1): spec parsing and validation.

The CRD schema rejects most bad input at the API server; `parse_spec` re-checks what a
schema cannot express (cross-field rules) and what could slip past an old CRD version.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from kserve_operator.errors import InvalidSpec
from kserve_operator.resources import durations
from kserve_operator.resources.conditions import Condition
from kserve_operator.resources.fields import int_field
from kserve_operator.resources.kinds import MEMCACHED
from kserve_operator.resources.meta import ObjectMeta
from kserve_operator.resources.status_view import StatusView

MAX_REPLICAS = 100

# A Deployment's pods are named "<name>-<replicaset hash, up to 10>-<5 random>"; the API server
# cuts the generated prefix at 58 characters, so names longer than this lose the dashes the
# default metrics query (and people reading `kubectl get pods`) rely on.
MAX_NAME_LENGTH = 46
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_WINDOW = "5m"

def parse_duration(text: str) -> float:
    """Parse `30s`, `5m`, `1h30m` into seconds; anything else is an InvalidSpec."""
    return durations.parse_duration(text, field="scalingWindow")


def name_problem(name: str) -> str | None:
    """Why a cache cannot have this name (its Service needs a DNS-1035 label), or None."""
    if not _DNS1035_LABEL.match(name):
        return (f"name {name!r} cannot name the cache's Service: use lowercase letters, digits and '-', "
                "starting with a letter (DNS-1035); recreate the cache under such a name")
    if len(name) > MAX_NAME_LENGTH:
        return (f"name {name!r} is {len(name)} characters; at most {MAX_NAME_LENGTH} keep its pods' names "
                "whole (the API server cuts longer generated names); recreate the cache under a shorter name")
    return None


@dataclasses.dataclass(frozen=True)
class MemcachedSpec:
    size: int
    scaling_window_seconds: float
    cold_start_buffer: int
    max_size: int
    target_connections_per_replica: int | None
    metrics_query: str | None

    @property
    def autoscaling(self) -> bool:
        return self.target_connections_per_replica is not None


def parse_spec(spec: Mapping[str, Any] | None) -> MemcachedSpec:
    """Turn the raw spec into a MemcachedSpec, or raise InvalidSpec naming the field."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec is missing")
    if "size" not in spec:
        raise InvalidSpec("size is required")
    size = int_field(spec, "size", low=0, high=MAX_REPLICAS)
    assert size is not None
    buffer = int_field(spec, "coldStartBuffer", low=0, high=MAX_REPLICAS, default=0)
    max_size = int_field(spec, "maxSize", low=1, high=MAX_REPLICAS)
    target = int_field(spec, "targetConnectionsPerReplica", low=1)
    window = parse_duration(spec.get("scalingWindow", DEFAULT_WINDOW))
    query = spec.get("metricsQuery")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise InvalidSpec("metricsQuery must be a non-empty PromQL string")
    if max_size is not None and max_size < size:
        raise InvalidSpec(f"maxSize ({max_size}) must not be smaller than size ({size})")
    return MemcachedSpec(
        size=size,
        scaling_window_seconds=window,
        cold_start_buffer=buffer or 0,
        max_size=max_size if max_size is not None else MAX_REPLICAS,
        target_connections_per_replica=target,
        metrics_query=query,
    )


@dataclasses.dataclass(frozen=True)
class MemcachedStatus(StatusView):
    """A Memcached's status, typed (resources/status_view.py: `parse`, `to_status`, `patch_from`)."""

    KEYS: ClassVar[Mapping[str, str]] = {
        "phase": "phase", "replicas": "replicas", "readyReplicas": "ready_replicas",
        "desiredReplicas": "desired_replicas", "conditions": "conditions", "scaleDown": "scale_down",
        "observedGeneration": "observed_generation", "activeConnections": "active_connections",
        "lastScaleTime": "last_scale_time",
    }

    phase: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    conditions: tuple[Condition, ...] | None = None
    scale_down: Mapping[str, Any] | None = None  # an open scale-down window (planning.memcached.ScaleDownWindow)
    observed_generation: int | None = None
    active_connections: float | None = None
    last_scale_time: str | None = None
    unknown: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Memcached:
    """A Memcached as read: typed metadata, the raw spec (parsed by `spec()`, which may refuse it)
    and its typed status. Parsed once per reconcile; planning takes this, not the dict."""

    meta: ObjectMeta
    raw_spec: Mapping[str, Any] | None
    status: MemcachedStatus

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Memcached:
        return cls(meta=ObjectMeta.parse(body.get("metadata")), raw_spec=body.get("spec"),
                   status=MemcachedStatus.parse(body.get("status")))

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def generation(self) -> int | None:
        return self.meta.generation

    def spec(self) -> MemcachedSpec:
        return parse_spec(self.raw_spec)

    def controller_reference(self) -> dict[str, Any]:
        """The owner reference its Deployment and Service carry."""
        return self.meta.controller_reference_for(MEMCACHED).to_dict()
