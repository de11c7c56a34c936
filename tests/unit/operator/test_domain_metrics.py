"""Domain metrics from ModelPrewarm and ModelCanary statuses: gauges follow the status, counters
count the transitions seen, and an object's series go when it goes (or its status drops them)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import prometheus_client
import pytest

from kserve_operator.controllers.domain_metrics import DELETED, DomainMetrics, register
from kserve_operator.planning import domain_metrics as dm


@pytest.fixture
def metrics() -> tuple[DomainMetrics, prometheus_client.CollectorRegistry]:
    registry = prometheus_client.CollectorRegistry()
    return DomainMetrics(registry), registry


def value(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def series(registry: prometheus_client.CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name == name]


def prewarm(status: dict[str, Any], name: str = "llama") -> dict[str, Any]:
    return {"metadata": {"namespace": "team-a", "name": name}, "spec": {"storageUri": "s3://models/llama/"},
            "status": status}


def canary(phase: str, percent: int, failed: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "percent": percent}
    if failed is not None:
        status["analysis"] = {"failedChecks": failed}
    return {"metadata": {"namespace": "team-a", "name": "mnist"}, "status": status}


NODE_A = {"name": "gpu-a", "phase": "Warm", "seconds": 12.5, "bytes": 16_000_000_000}
NODE_B = {"name": "gpu-b", "phase": "Failed", "reason": "OutOfMemory"}


def test_prewarm_gauges_per_node_and_per_model(metrics: tuple[DomainMetrics, Any]) -> None:
    domain, registry = metrics
    domain.observe_prewarm("ADDED", prewarm({"storageUri": "s3://models/llama/", "warmNodes": 1, "desiredNodes": 2,
                                             "nodes": [NODE_A, NODE_B]}))
    node = {"namespace": "team-a", "modelprewarm": "llama", "node": "gpu-a"}
    assert value(registry, dm.PREWARM_LOAD_SECONDS, **node) == 12.5
    assert value(registry, dm.PREWARM_LOAD_BYTES, **node) == 16e9
    assert series(registry, dm.PREWARM_LOAD_SECONDS) == [node]  # a failed node loaded nothing: no sample
    model = {"namespace": "team-a", "modelprewarm": "llama", "model": "s3://models/llama/"}
    assert value(registry, dm.PREWARM_WARM_NODES, **model) == 1
    assert value(registry, dm.PREWARM_DESIRED_NODES, **model) == 2


def test_series_the_status_no_longer_carries_go(metrics: tuple[DomainMetrics, Any]) -> None:
    domain, registry = metrics
    domain.observe_prewarm("ADDED", prewarm({"storageUri": "s3://models/llama/", "warmNodes": 1,
                                             "nodes": [NODE_A]}))
    domain.observe_prewarm("MODIFIED", prewarm({"storageUri": "s3://models/llama-v2/", "warmNodes": 0,
                                                "nodes": [{"name": "gpu-c", "phase": "Warming"}]}))
    assert series(registry, dm.PREWARM_LOAD_SECONDS) == []
    assert [s["model"] for s in series(registry, dm.PREWARM_WARM_NODES)] == ["s3://models/llama-v2/"]


def test_a_deleted_object_takes_its_series_and_leaves_the_others(metrics: tuple[DomainMetrics, Any]) -> None:
    domain, registry = metrics
    domain.observe_prewarm(None, prewarm({"warmNodes": 2, "nodes": [NODE_A]}, name="llama"))
    domain.observe_prewarm(None, prewarm({"warmNodes": 1, "nodes": [NODE_A]}, name="mistral"))
    domain.observe_prewarm(DELETED, prewarm({"warmNodes": 2, "nodes": [NODE_A]}, name="llama"))
    assert {s["modelprewarm"] for s in series(registry, dm.PREWARM_WARM_NODES)} == {"mistral"}
    assert {s["modelprewarm"] for s in series(registry, dm.PREWARM_LOAD_BYTES)} == {"mistral"}
    domain.observe_canary("ADDED", canary("Active", 20))
    domain.observe_canary(DELETED, canary("Active", 20))
    assert series(registry, dm.CANARY_WEIGHT) == []


def test_malformed_status_values_give_no_sample(metrics: tuple[DomainMetrics, Any]) -> None:
    domain, registry = metrics
    domain.observe_prewarm("ADDED", prewarm({"warmNodes": "2", "nodes": [
        {"name": "gpu-a", "seconds": True, "bytes": "1Gi"}, "not-a-node", {"seconds": 3}]}))
    assert series(registry, dm.PREWARM_WARM_NODES) == series(registry, dm.PREWARM_LOAD_SECONDS) == []
    domain.observe_canary("ADDED", {"metadata": {"namespace": "team-a", "name": "new"}})
    assert series(registry, dm.CANARY_WEIGHT) == []


def test_canary_weight_failures_and_rollbacks(metrics: tuple[DomainMetrics, Any]) -> None:
    domain, registry = metrics
    labels = {"namespace": "team-a", "modelcanary": "mnist"}
    domain.observe_canary(None, canary("Progressing", 10, failed=0))
    assert value(registry, dm.CANARY_WEIGHT, **labels) == 10
    domain.observe_canary("MODIFIED", canary("Progressing", 10, failed=1))
    domain.observe_canary("MODIFIED", canary("Progressing", 10, failed=1))  # the same status again
    domain.observe_canary("MODIFIED", canary("Progressing", 25, failed=0))  # a pass resets the streak
    domain.observe_canary("MODIFIED", canary("Progressing", 25, failed=2))  # two failures seen at once
    assert value(registry, dm.CANARY_ANALYSIS_FAILURES, **labels) == 3
    assert value(registry, dm.CANARY_ROLLBACKS, **labels) is None
    domain.observe_canary("MODIFIED", canary("RolledBack", 0, failed=3))
    domain.observe_canary("MODIFIED", canary("RolledBack", 0, failed=3))
    assert value(registry, dm.CANARY_ROLLBACKS, **labels) == 1
    assert value(registry, dm.CANARY_ANALYSIS_FAILURES, **labels) == 4
    assert value(registry, dm.CANARY_WEIGHT, **labels) == 0
    domain.observe_canary(DELETED, canary("RolledBack", 0, failed=3))
    assert series(registry, dm.CANARY_ROLLBACKS) == series(registry, dm.CANARY_ANALYSIS_FAILURES) == []


def test_a_first_sighting_counts_nothing(metrics: tuple[DomainMetrics, Any]) -> None:
    """The operator restarts while a canary is rolled back: not a new rollback, not new failures."""
    domain, registry = metrics
    domain.observe_canary(None, canary("RolledBack", 0, failed=3))
    assert series(registry, dm.CANARY_ROLLBACKS) == series(registry, dm.CANARY_ANALYSIS_FAILURES) == []
    domain.observe_canary(DELETED, canary("RolledBack", 0, failed=3))  # nothing to remove: no error


def test_the_watch_handlers_feed_the_collectors() -> None:
    registry = kopf.OperatorRegistry()
    collectors = prometheus_client.CollectorRegistry()
    register(registry, DomainMetrics(collectors))
    handlers: dict[Any, Any] = {h.selector.any_name: h.fn for h in registry._watching.get_all_handlers()
                                if h.selector}
    assert sorted(handlers) == ["modelcanaries", "modelprewarms"]
    asyncio.run(handlers["modelprewarms"](body=prewarm({"warmNodes": 2}), type="ADDED"))
    asyncio.run(handlers["modelcanaries"](body=canary("Active", 30), type="ADDED"))
    assert value(collectors, dm.PREWARM_WARM_NODES, namespace="team-a", modelprewarm="llama",
                 model="s3://models/llama/") == 2
    assert value(collectors, dm.CANARY_WEIGHT, namespace="team-a", modelcanary="mnist") == 30
