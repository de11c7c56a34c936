"""What holds or refuses a ModelCanary before any weight moves, and its Ready condition (pure).

- The VirtualService's namespace: the canary's own, or one the platform lists (`*`: any).
- `requireWarm`: one warm node of the model the ModelPrewarm asks for releases the candidate,
  whatever the phase says about the other nodes.
- Ready: True only when the share the spec asks for is in force and nothing holds it.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kserve_operator.planning import canary as plan
from kserve_operator.planning.canary import WarmState, next_step
from kserve_operator.planning.canary_gates import route_namespace_problem, warm_state
from kserve_operator.planning.routes.istio import plan_weights
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.canary import CanaryStatus
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason
from kserve_operator.resources.conditions import ConditionStatus, ConditionType
from kserve_operator.settings import parse_settings
from tests.unit.operator.canary_shapes import NAMESPACE, canary_spec, mnist_vs

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
WHERE = "ModelPrewarm models/torch-mnist-v2"


# --- the VirtualService's namespace -----------------------------------------------------------

def test_the_own_namespace_is_always_allowed() -> None:
    assert route_namespace_problem(canary_spec(), ()) is None
    assert route_namespace_problem(canary_spec(virtualService={"name": "mnist", "namespace": NAMESPACE}), ()) is None


def test_another_namespace_is_refused_unless_the_platform_lists_it() -> None:
    spec = canary_spec(virtualService={"name": "gateway", "namespace": "istio-ingress"})
    problem = route_namespace_problem(spec, ())
    assert problem is not None
    assert "VirtualService istio-ingress/gateway" in problem and f"({NAMESPACE})" in problem
    assert "CANARY_ALLOWED_ROUTE_NAMESPACES" in problem and "nothing is written" in problem
    assert route_namespace_problem(spec, ("other", "team-b")) is not None
    assert route_namespace_problem(spec, ("other", "istio-ingress")) is None
    assert route_namespace_problem(spec, ("*",)) is None


def test_the_setting_parses_names_and_star_and_refuses_anything_else() -> None:
    assert parse_settings([], env={}).canary_allowed_route_namespaces == ()
    env = {"CANARY_ALLOWED_ROUTE_NAMESPACES": " istio-ingress, team-b ,"}
    assert parse_settings([], env=env).canary_allowed_route_namespaces == ("istio-ingress", "team-b")
    assert parse_settings(["--canary-allowed-route-namespaces", "*"], env=env).canary_allowed_route_namespaces == (
        "*",)
    with pytest.raises(SystemExit, match="'Team_B' is not a namespace name"):
        parse_settings([], env={"CANARY_ALLOWED_ROUTE_NAMESPACES": "Team_B"})


def test_a_cross_namespace_refusal_is_not_ready_and_warns_once() -> None:
    spec = canary_spec(virtualService={"name": "gateway", "namespace": "istio-ingress"})
    problem = route_namespace_problem(spec, ())
    assert problem is not None
    status = plan.problem_status(None, CanaryReason.CROSS_NAMESPACE_NOT_ALLOWED, problem, generation=1, now=T0,
                                 spec=spec)
    ready = cond.find_condition(status["conditions"], ConditionType.READY)
    assert ready is not None
    assert (ready["status"], ready["reason"]) == (ConditionStatus.FALSE, "CrossNamespaceNotAllowed")
    assert status["phase"] == CanaryPhase.ERROR and "percent" not in status
    assert [(e.type, e.reason) for e in plan.plan_events(None, status)] == [("Warning", "CrossNamespaceNotAllowed")]
    again = plan.problem_status(status, CanaryReason.CROSS_NAMESPACE_NOT_ALLOWED, problem, generation=1, now=T0,
                                spec=spec)
    assert plan.plan_events(status, again) == []


# --- requireWarm ------------------------------------------------------------------------------

def prewarm(phase: str | None, warm_nodes: Any, *, warmed: str | None = "s3://models/mnist-v2",
            wanted: str = "s3://models/mnist-v2") -> dict[str, Any]:
    status: dict[str, Any] = {"warmNodes": warm_nodes, "phase": phase}
    if warmed is not None:
        status["storageUri"] = warmed
    return {"spec": {"storageUri": wanted}, "status": {k: v for k, v in status.items() if v is not None}}


@pytest.mark.parametrize(("body", "warm", "words"), [
    (None, False, "which does not exist yet"),
    ({"spec": {"storageUri": "s3://m"}}, False, "phase not reported yet, 0 warm nodes"),
    (prewarm("Warming", 0), False, "to have a warm node (phase Warming, 0 warm nodes)"),
    (prewarm("Warm", 2), True, "has 2 warm node(s) (phase Warm)"),
    # One node warm, the other failed: the candidate can be served from the warm one.
    (prewarm("PartiallyWarm", 1), True, "has 1 warm node(s) (phase PartiallyWarm)"),
    (prewarm("Failed", 1), True, "(phase Failed)"),
    (prewarm("Failed", 0), False, "(phase Failed, 0 warm nodes)"),
    # A perfect phase without a warm node does not release (a status written by hand, a lost count).
    (prewarm("Warm", 0), False, "0 warm nodes"),
    (prewarm("Warm", True), False, "0 warm nodes"),
    (prewarm("Warm", "2"), False, "0 warm nodes"),
    # Nodes warm with the previous model do not count for the new one.
    (prewarm("Warm", 2, warmed="s3://models/mnist-v1"), False, "hold s3://models/mnist-v1"),
    (prewarm("Warm", 1, warmed=None), True, "has 1 warm node(s)"),
])
def test_one_warm_node_of_the_wanted_model_releases(body: dict[str, Any] | None, warm: bool, words: str) -> None:
    state = warm_state(body, WHERE)
    assert state.warm is warm
    assert words in state.detail and state.detail.startswith(WHERE)


def test_a_partially_warm_model_releases_the_candidate_and_a_cold_one_holds_it() -> None:
    spec = canary_spec(percent=30, requireWarm=True)
    partially = next_step(spec, CanaryStatus(), 1, warm_state(prewarm("PartiallyWarm", 1), WHERE), None, T0)
    assert (partially.percent, partially.phase) == (30, CanaryPhase.ACTIVE)
    cold = next_step(spec, CanaryStatus(percent=30), 1, warm_state(prewarm("PartiallyWarm", 0), WHERE), None, T0)
    assert (cold.percent, cold.phase) == (0, CanaryPhase.WAITING_FOR_MODEL)
    assert "waiting for ModelPrewarm models/torch-mnist-v2 to have a warm node" in cold.message


# --- Ready ------------------------------------------------------------------------------------

def ready_of(old: dict[str, Any] | None, warm: WarmState | None = None, now: datetime.datetime = T0,
             status: CanaryStatus | None = None, **changes: Any) -> dict[str, Any]:
    spec = canary_spec(**changes)
    decision = next_step(spec, status or CanaryStatus.parse(old), 1, warm, None, now)
    weights = plan_weights(mnist_vs(), spec, decision.percent)
    written = plan.plan_status(old, spec, decision, weights, generation=1, now=now, route_version="v1")
    ready = cond.find_condition(written["conditions"], ConditionType.READY)
    assert ready is not None and ready["observedGeneration"] == 1
    return ready


def test_ready_when_the_wanted_share_is_in_force() -> None:
    for percent in (0, 20, 100):
        ready = ready_of(None, percent=percent)
        assert (ready["status"], ready["reason"]) == (ConditionStatus.TRUE, CanaryReason.WEIGHT_IN_FORCE)
        assert f"{percent}% is in force" in ready["message"]


def test_not_ready_while_the_model_is_cold() -> None:
    ready = ready_of(None, WarmState(False, f"{WHERE} to have a warm node"), percent=20, requireWarm=True)
    assert (ready["status"], ready["reason"]) == (ConditionStatus.FALSE, CanaryReason.WAITING_FOR_MODEL)
    assert ready["message"].startswith("0% in force of 20% wanted: the candidate gets 0% until its model is warm")


def test_not_ready_while_stepping_then_ready_at_the_last_step() -> None:
    steps = {"weights": [10, 50], "interval": "1m"}
    first = ready_of(None, percent=50, steps=steps)
    assert (first["status"], first["reason"]) == (ConditionStatus.FALSE, CanaryReason.STEPPING)
    assert first["message"].startswith("10% in force of 50% wanted")
    at_ten = CanaryStatus(percent=10, last_step_time=T0, phase=CanaryPhase.PROGRESSING)
    done = ready_of(None, now=T0 + datetime.timedelta(minutes=1), status=at_ten, percent=50, steps=steps)
    assert (done["status"], done["reason"]) == (ConditionStatus.TRUE, CanaryReason.WEIGHT_IN_FORCE)


def test_not_ready_after_a_rollback() -> None:
    rolled = CanaryStatus(percent=0, rolled_back_generation=1, phase=CanaryPhase.ROLLED_BACK)
    ready = ready_of(None, status=rolled, percent=50,
                     steps={"weights": [10], "interval": "1m", "analysis": {"query": "q", "max": 1}})
    assert (ready["status"], ready["reason"]) == (ConditionStatus.FALSE, CanaryReason.ROLLED_BACK)
