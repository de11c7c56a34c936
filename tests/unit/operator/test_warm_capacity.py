"""Capacity-aware canary steps, the ModelPrewarm side (issue 16): how many warm nodes a share
needs, how the canaries' needs reach the ModelPrewarm they name, and that it keeps that many warm."""

from __future__ import annotations

from typing import Any

import pytest

from kserve_operator.clients.informer import Informer, InformerEvent
from kserve_operator.controllers.prewarm_capacity import affected_prewarms, read_demands
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.warm_capacity import (
    BY_CANDIDATE_PREWARM,
    CapacityDemand,
    candidate_prewarm_keys,
    capacity_demands,
    required_warm_nodes,
)
from kserve_operator.resources.kinds import MODEL_CANARY
from tests.unit.operator.test_prewarm_node_index import NoServer
from tests.unit.operator.test_prewarm_plan import condition, world


@pytest.mark.parametrize(("percent", "replicas", "nodes"), [
    (0, 4, 0), (1, 4, 1), (25, 4, 1), (26, 4, 2), (50, 4, 2), (100, 4, 4), (10, 0, 1), (100, 1, 1), (33, 3, 1),
    (34, 3, 2),
])
def test_a_share_needs_ceil_of_its_part_of_the_stable_replicas_and_at_least_one(
        percent: int, replicas: int, nodes: int) -> None:
    assert required_warm_nodes(percent, replicas) == nodes


def canary(name: str, *, prewarm: str | None = None, isvc: str = "mnist-v2", required: Any = None,
           namespace: str = "ml", rv: str = "1") -> dict[str, Any]:
    candidate: dict[str, Any] = {"inferenceService": isvc}
    if prewarm:
        candidate["modelPrewarm"] = prewarm
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
                            "spec": {"candidate": candidate}}
    if required is not None:
        body["status"] = {"capacity": {"requiredWarmNodes": required}}
    return body


def test_the_largest_need_among_the_canaries_naming_the_prewarm_counts() -> None:
    canaries = [canary("a", required=2), canary("b", required=3), canary("c", prewarm="other", required=9),
                canary("d", required=4, namespace="elsewhere"), canary("e", required=True), canary("f", required=0),
                canary("g")]
    assert capacity_demands(canaries, "ml", "mnist-v2") == [CapacityDemand("ModelCanary ml/b", 3),
                                                            CapacityDemand("ModelCanary ml/a", 2)]
    informer = Informer(NoServer(), [MODEL_CANARY], backoff=backoff_delay,
                        indexes={BY_CANDIDATE_PREWARM: candidate_prewarm_keys})
    for body in canaries:
        informer.offer(body)
    assert read_demands([informer], "ml", "other") == [CapacityDemand("ModelCanary ml/c", 9)]
    assert read_demands([informer], "ml", "nobody") == []


def test_a_canary_wakes_its_prewarm_only_when_its_need_changes() -> None:
    seen: dict[tuple[str, str], tuple[str | None, int]] = {}

    def event(type: str | None, body: dict[str, Any]) -> list[tuple[str, str]]:
        return affected_prewarms(InformerEvent(type, body), seen)

    assert event(None, canary("a", required=1)) == []  # the listing: the ModelPrewarms reconcile anyway
    assert event("MODIFIED", canary("a", required=1, rv="2")) == []  # another status field changed
    assert event("MODIFIED", canary("a", required=2, rv="3")) == [("ml", "mnist-v2")]
    assert event("MODIFIED", canary("a", prewarm="v3", required=2, rv="4")) == [("ml", "mnist-v2"), ("ml", "v3")]
    assert event("DELETED", canary("a", prewarm="v3", required=2, rv="5")) == [("ml", "v3")]
    assert event("ADDED", canary("b")) == []  # names one, asks for nothing


def test_the_prewarm_keeps_as_many_nodes_warm_as_the_largest_need_then_gives_them_back() -> None:
    w = world(nodes=4, nodeCount=1)
    w.reconcile()
    assert len(w.jobs) == 1 and w.prewarm["status"]["desiredNodes"] == 1
    w.complete("gpu-1")
    w.reconcile()
    assert condition(w, "Ready")["status"] == "True" and w.settled()

    w.demands = [CapacityDemand("ModelCanary ml/mnist", 3)]
    raised = w.reconcile()
    assert len(raised.create) == 2 and len(w.jobs) == 3  # gpu-1 stays, two more
    status = w.prewarm["status"]
    assert status["desiredNodes"] == 3 and status["warm"] == "1/3"
    assert status["capacityDemand"] == {"nodes": 3, "from": "ModelCanary ml/mnist"}
    assert condition(w, "Ready")["status"] == "False"
    w.complete("gpu-2")
    w.complete("gpu-3")
    w.reconcile()
    assert w.prewarm["status"]["warm"] == "3/3" and condition(w, "Ready")["status"] == "True" and w.settled()

    w.demands = [CapacityDemand("ModelCanary ml/mnist", 1)]  # at or below nodeCount: nodeCount rules
    lowered = w.reconcile()
    assert len(lowered.delete) == 2 and w.prewarm["status"]["desiredNodes"] == 1
    assert "capacityDemand" not in w.prewarm["status"] and w.settled()
