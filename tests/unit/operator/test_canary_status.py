"""Status, conditions and events of a ModelCanary, and route claims between two of them (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from kserve_operator.planning import canary as plan
from kserve_operator.planning.canary import WarmState, next_step
from kserve_operator.planning.canary_checks import CheckReading, judge
from kserve_operator.planning.canary_claims import Claimant, claim_message, first_claim
from kserve_operator.planning.diff import status_changes
from kserve_operator.planning.events import NORMAL, WARNING
from kserve_operator.planning.routes.istio import plan_weights
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.canary import CanaryStatus
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason
from kserve_operator.resources.conditions import ConditionStatus, ConditionType
from tests.unit.operator.canary_shapes import NAMESPACE, canary_spec, mnist_vs, raw_spec

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def reconcile_once(old: dict[str, Any] | None, now: datetime.datetime, generation: int = 1,
                   warm: WarmState | None = None, **changes: Any) -> dict[str, Any]:
    """What one pass of the controller writes to status, from the pure parts only."""
    spec = canary_spec(**changes)
    decision = next_step(spec, CanaryStatus.parse(old), generation, warm, None, now)
    weights = plan_weights(mnist_vs(), spec, decision.percent)
    return plan.plan_status(old, spec, decision, weights, generation=generation, now=now, route_version="v1")


def strip_none(status: dict[str, Any]) -> dict[str, Any]:
    """What the API server keeps of a merge patch: null removes the key."""
    return {k: v for k, v in status.items() if v is not None}


def test_status_of_an_active_canary() -> None:
    status = reconcile_once(None, T0, generation=4, percent=20)
    assert status["phase"] == CanaryPhase.ACTIVE
    assert (status["percent"], status["stableWeight"], status["candidateWeight"]) == (20, 80, 20)
    assert (status["stable"], status["candidate"]) == ("torch-mnist", "torch-mnist-v2")
    assert status["managedRoutes"] == ["predict", "audited", "http[5]"]
    assert status["virtualService"] == "models/mnist"
    assert status["addedCandidateRoutes"] == ["audited", "http[5]", "predict"]
    assert status["observedGeneration"] == 4 and status["virtualServiceVersion"] == "v1"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type[ConditionType.AVAILABLE]["status"] == ConditionStatus.TRUE
    assert "stable 80% / candidate 20%" in by_type[ConditionType.AVAILABLE]["message"]
    assert by_type[ConditionType.PROGRESSING]["status"] == ConditionStatus.FALSE
    assert by_type[ConditionType.DEGRADED]["reason"] == CanaryReason.AS_EXPECTED


def test_a_settled_canary_plans_an_identical_status() -> None:
    first = strip_none(reconcile_once(None, T0, percent=20))
    later = reconcile_once(first, T0 + datetime.timedelta(hours=1), percent=20)
    assert status_changes(first, later) == {}
    assert plan.plan_events(first, later) == []


def test_waiting_for_the_model_is_said_in_a_condition_and_an_event() -> None:
    cold = WarmState(False, "ModelPrewarm models/torch-mnist-v2 (phase Warming)")
    waiting = strip_none(reconcile_once(None, T0, warm=cold, percent=20, requireWarm=True))
    assert waiting["phase"] == CanaryPhase.WAITING_FOR_MODEL and waiting["percent"] == 0
    progressing = cond.find_condition(waiting["conditions"], ConditionType.PROGRESSING)
    assert progressing is not None and progressing["status"] == ConditionStatus.TRUE
    assert "waiting for ModelPrewarm models/torch-mnist-v2" in progressing["message"]
    assert [e.reason for e in plan.plan_events(None, waiting)] == [CanaryReason.WAITING_FOR_MODEL,
                                                                   CanaryReason.WEIGHTS_CHANGED]
    warm = WarmState(True, "warm")
    released = reconcile_once(waiting, T0, warm=warm, percent=20, requireWarm=True)
    events = plan.plan_events(waiting, released)
    assert [(e.type, e.reason) for e in events] == [(NORMAL, CanaryReason.MODEL_WARM),
                                                    (NORMAL, CanaryReason.WEIGHTS_CHANGED)]
    assert "candidate torch-mnist-v2 20%" in events[1].message


def test_a_rollback_is_degraded_with_a_warning() -> None:
    spec = canary_spec(percent=50, steps={"weights": [10], "interval": "1m",
                                          "analysis": {"query": "q", "max": 0.1}})
    assert spec.steps is not None and spec.steps.analysis is not None
    decision = next_step(spec, CanaryStatus(percent=10, last_step_time=T0, phase=CanaryPhase.PROGRESSING), 3,
                         None, judge(spec.steps.analysis.checks, [CheckReading(0.5)]),
                         T0 + datetime.timedelta(minutes=1))
    old = strip_none(reconcile_once(None, T0, percent=10))
    status = plan.plan_status(old, spec, decision, plan_weights(mnist_vs(), spec, 0), generation=3,
                              now=T0, route_version="v1")
    assert status["phase"] == CanaryPhase.ROLLED_BACK and status["rolledBackGeneration"] == 3
    assert status["analysis"] == {"failedChecks": 1, "lastCheckTime": "2026-01-01T00:01:00Z", "result": "Failed",
                                  "checks": [{"name": "query", "value": 0.5, "max": 0.1, "passed": False,
                                              "result": "Failed", "message": "0.5 is above the maximum 0.1"}]}
    degraded = cond.find_condition(status["conditions"], ConditionType.DEGRADED)
    assert degraded is not None and degraded["status"] == ConditionStatus.TRUE
    assert degraded["reason"] == CanaryReason.ANALYSIS_FAILED
    events = plan.plan_events(old, status)
    assert events[0].type == WARNING and events[0].reason == CanaryReason.ROLLED_BACK
    assert "0.5 is above the maximum 0.1" in events[0].message


def test_a_problem_is_reported_once_and_keeps_the_bookkeeping() -> None:
    active = strip_none(reconcile_once(None, T0, percent=20))
    broken = plan.problem_status(active, CanaryReason.VIRTUAL_SERVICE_NOT_FOUND,
                                 "VirtualService models/mnist does not exist", generation=2, now=T0)
    assert broken["phase"] == CanaryPhase.ERROR and broken["percent"] == 20
    assert broken["managedRoutes"] == active["managedRoutes"]
    available = cond.find_condition(broken["conditions"], ConditionType.AVAILABLE)
    assert available is not None and available["reason"] == CanaryReason.VIRTUAL_SERVICE_NOT_FOUND
    events = plan.plan_events(active, broken)
    assert [(e.type, e.reason) for e in events] == [(WARNING, CanaryReason.VIRTUAL_SERVICE_NOT_FOUND)]
    assert plan.plan_events(broken, plan.problem_status(broken, CanaryReason.VIRTUAL_SERVICE_NOT_FOUND,
                                                        "VirtualService models/mnist does not exist",
                                                        generation=2, now=T0)) == []


def test_the_intent_to_append_is_recorded_before_the_write() -> None:
    weights = plan_weights(mnist_vs(), canary_spec(), 20)
    assert plan.intent_status(None, canary_spec(), weights) == {
        "addedCandidateRoutes": ["audited", "http[5]", "predict"], "virtualService": "models/mnist",
        "routeKind": "VirtualService", "route": "models/mnist", "phase": CanaryPhase.PENDING}
    recorded = {"phase": CanaryPhase.ACTIVE, "addedCandidateRoutes": ["audited", "http[5]", "predict"],
                "virtualService": "models/mnist"}
    assert plan.intent_status(recorded, canary_spec(), weights) is None
    moved = canary_spec(virtualService={"name": "other"})
    assert plan.intent_status(recorded, moved, weights) == {
        "addedCandidateRoutes": ["audited", "http[5]", "predict"], "virtualService": "models/other",
        "routeKind": "VirtualService", "route": "models/other"}


def claimant(name: str, created: str, **changes: Any) -> Claimant:
    return Claimant(NAMESPACE, name, created, raw_spec(**changes))


def test_the_later_of_two_canaries_on_one_route_is_refused_naming_the_first() -> None:
    vs = mnist_vs()
    first = claimant("mnist-a", "2026-01-01T00:00:00Z", routes=["predict"])
    second = claimant("mnist-b", "2026-01-01T00:05:00Z")
    spec_b = canary_spec()
    found = first_claim(second, [first, second], vs, spec_b)
    assert found is not None and found[0] == first and found[1] == "predict"
    assert "already managed by ModelCanary models/mnist-a" in claim_message(found[0], found[1], spec_b)
    assert first_claim(first, [first, second], vs, canary_spec(routes=["predict"])) is None


def test_canaries_on_different_routes_or_services_do_not_conflict() -> None:
    vs = mnist_vs()
    a = claimant("a", "2026-01-01T00:00:00Z", routes=["predict"])
    b = claimant("b", "2026-01-01T00:00:00Z", routes=["audited"])
    c = claimant("c", "2026-01-01T00:00:00Z", virtualService={"name": "other"})
    bad = claimant("d", "2025-01-01T00:00:00Z", percent=500)
    assert first_claim(b, [a, b, c, bad], vs, canary_spec(routes=["audited"])) is None


def test_same_second_is_decided_by_name_so_both_sides_agree() -> None:
    vs = mnist_vs()
    a = claimant("a", "2026-01-01T00:00:00Z")
    b = claimant("b", "2026-01-01T00:00:00Z")
    assert first_claim(a, [a, b], vs, canary_spec()) is None
    found = first_claim(b, [a, b], vs, canary_spec())
    assert found is not None and found[0] == a


def test_a_canary_being_deleted_claims_nothing() -> None:
    vs = mnist_vs()
    leaving = Claimant(NAMESPACE, "a", "2026-01-01T00:00:00Z", raw_spec(), deleting=True)
    b = claimant("b", "2026-01-01T00:05:00Z")
    assert first_claim(b, [leaving, b], vs, canary_spec()) is None
