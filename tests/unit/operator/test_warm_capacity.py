"""Capacity-aware canary steps, the ModelPrewarm side (issue 16): how many warm nodes a share
needs, how the canaries' needs reach the ModelPrewarm they name, and that it keeps that many warm."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from kserve_operator.clients.informer import Informer, InformerEvent
from kserve_operator.controllers.prewarm_capacity import affected_prewarms, read_demands
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.canary import StepDecision, WarmState, next_step
from kserve_operator.planning.canary_checks import CheckReading, judge
from kserve_operator.planning.warm_capacity import (
    BY_CANDIDATE_PREWARM,
    Capacity,
    CapacityDemand,
    candidate_prewarm_keys,
    capacity_demands,
    required_warm_nodes,
)
from kserve_operator.resources.canary import CanaryStatus
from kserve_operator.resources.canary_conditions import CanaryPhase
from kserve_operator.resources.kinds import MODEL_CANARY
from tests.unit.operator.canary_shapes import canary_spec
from tests.unit.operator.test_canary_steps import T0, after
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
    assert event("MODIFIED", canary("a", required=2, rv="3")) == [(("ml", "mnist-v2"), 2)]
    assert event("MODIFIED", canary("a", prewarm="v3", required=3, rv="4")) == [(("ml", "mnist-v2"), 2),
                                                                                (("ml", "v3"), 3)]
    assert event("MODIFIED", canary("a", prewarm="v3", required=1, rv="5")) == [(("ml", "v3"), 3)]  # 3 -> 1
    assert event("DELETED", canary("a", prewarm="v3", required=1, rv="6")) == [(("ml", "v3"), 1)]
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


def test_steps_wait_for_warm_capacity_for_their_share_of_4_stable_replicas() -> None:
    """A stable of 4 replicas stepping 25 -> 50 -> 100: each step waits for ceil(w% x 4) warm nodes,
    and status asks for the next step's nodes while the current one runs (so they warm meanwhile)."""
    spec = canary_spec(percent=100, requireWarm=True, steps={"weights": [25, 50], "interval": "1m"})
    status = CanaryStatus()

    def decide(at: float, warm_nodes: int) -> StepDecision:
        nonlocal status
        capacity = Capacity(warm_nodes=warm_nodes, stable_replicas=4)
        decision = next_step(spec, status, 1, WarmState(True, "warm", warm_nodes), None,
                             T0 + datetime.timedelta(minutes=at), capacity)
        status = after(decision, status)
        return decision

    first = decide(0, 1)
    assert (first.percent, first.phase, first.capacity_percent) == (25, CanaryPhase.PROGRESSING, 50)
    assert Capacity(1, 4).status(first.capacity_percent) == {
        "requiredWarmNodes": 2, "warmNodes": 1, "stableReplicas": 4, "forPercent": 50}
    held = decide(1.5, 1)  # the interval is over, but 50% of 4 replicas needs 2 warm nodes
    assert (held.percent, held.phase, held.reason) == (25, CanaryPhase.WAITING_FOR_CAPACITY, "WaitingForCapacity")
    assert "50% needs the candidate warm on 2 node(s)" in held.message and "1 warm" in held.message
    assert held.capacity_percent == 50
    second = decide(2, 2)  # the ModelPrewarm warmed a second node: the step is taken
    assert (second.percent, second.phase, second.capacity_percent) == (50, CanaryPhase.PROGRESSING, 100)
    assert decide(3.5, 3).phase == CanaryPhase.WAITING_FOR_CAPACITY  # 100% needs all 4
    last = decide(4, 4)
    assert (last.percent, last.phase, last.capacity_percent) == (100, CanaryPhase.PROMOTED, 100)
    lower = dataclasses.replace(spec, percent=25)
    down = next_step(lower, status, 2, WarmState(True, "warm", 1), None, T0, Capacity(1, 4))
    assert down.percent == 25  # going down never waits for capacity


def test_without_steps_a_jump_waits_for_the_whole_share_and_a_warm_gate_asks_for_the_first_step() -> None:
    jump = canary_spec(percent=50, requireWarm=True)
    held = next_step(jump, CanaryStatus(), 1, WarmState(True, "warm", 1), None, T0, Capacity(1, 4))
    assert (held.percent, held.phase, held.capacity_percent) == (0, CanaryPhase.WAITING_FOR_CAPACITY, 50)
    assert next_step(jump, CanaryStatus(), 1, WarmState(True, "warm", 2), None, T0, Capacity(2, 4)).percent == 50
    cold = canary_spec(percent=100, requireWarm=True, steps={"weights": [25, 50], "interval": "1m"})
    waiting = next_step(cold, CanaryStatus(), 1, WarmState(False, "cold"), None, T0, Capacity(0, 4))
    assert (waiting.phase, waiting.capacity_percent) == (CanaryPhase.WAITING_FOR_MODEL, 25)
    assert Capacity(0, 0).holds(0, 10) is not None and Capacity(1, 0).holds(0, 100) is None  # no replicas: 1 node


def test_while_short_of_capacity_the_analysis_goes_on_and_a_failing_candidate_is_still_rolled_back() -> None:
    steps = {"weights": [25, 50], "interval": "1m", "analysis": {"query": "errors", "max": 0.05, "failureLimit": 1}}
    spec = canary_spec(percent=100, requireWarm=True, steps=steps)
    assert spec.steps is not None and spec.steps.analysis is not None
    checks = spec.steps.analysis.checks
    warm, short = WarmState(True, "warm", 1), Capacity(warm_nodes=1, stable_replicas=4)
    first = next_step(spec, CanaryStatus(), 1, warm, None, T0, short)
    status = after(first)
    due = T0 + datetime.timedelta(minutes=1, seconds=1)
    passed = next_step(spec, status, 1, warm, judge(checks, [CheckReading(value=0.01)]), due, short)
    assert (passed.percent, passed.phase) == (25, CanaryPhase.WAITING_FOR_CAPACITY)
    assert passed.last_check_time is not None and passed.requeue_after == pytest.approx(60, abs=1)
    status = after(passed, status)
    early = next_step(spec, status, 1, warm, None, due + datetime.timedelta(seconds=10), short)
    assert early.phase == CanaryPhase.WAITING_FOR_CAPACITY and not early.wants_analysis  # the next check is not due
    later = due + datetime.timedelta(minutes=1, seconds=1)
    failed = next_step(spec, status, 1, warm, judge(checks, [CheckReading(value=0.5)]), later, short)
    assert (failed.percent, failed.phase) == (0, CanaryPhase.ROLLED_BACK)
    enough = Capacity(warm_nodes=2, stable_replicas=4)
    stepped = next_step(spec, status, 1, warm, judge(checks, [CheckReading(value=0.01)]), later, enough)
    assert (stepped.percent, stepped.phase) == (50, CanaryPhase.PROGRESSING)
