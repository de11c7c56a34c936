"""Everything the ModelCanary controller decides: the candidate's share now (warm gate, steps,
analysis, rollback), the status with its conditions, the events, and route claims.

Pure: callers pass what they read (spec, last status, whether the model is warm, the analysis
query's result) and `now`. What holds or refuses a canary before any weight moves (its
ModelPrewarm, the routing object's namespace) is decided in planning/canary_gates.py; the
editing of the routing object itself (an Istio VirtualService or a Gateway API HTTPRoute) in
planning/routes/.

The step walk: with steps, the candidate's share climbs the ladder (each step weight capped at
`percent`, ending at `percent`). The first step (from 0%) is taken at once: there is no candidate
traffic to analyse before it. Every later step waits `interval` since the last step or check,
then needs the analysis to pass. A check out of bounds `failureLimit` times in a row rolls the
candidate back to 0%, and it stays there until the spec changes (tracked by metadata.generation).
Each pass evaluates every check (planning/canary_checks.py): one out of bounds fails the pass;
else a query that errors or finds no data is inconclusive: held, not stepped, not counted as a
failure; else the pass steps. Going down (a lower `percent`, `percent: 0`) is always immediate.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from kserve_operator.planning.canary_checks import AnalysisResult, analysis_status
from kserve_operator.planning.events import NORMAL, WARNING, EventPlan
from kserve_operator.planning.routes.weights import WeightPlan
from kserve_operator.planning.warm_capacity import Capacity
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.canary import CanarySpec, CanaryStatus
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason, CheckResult
from kserve_operator.resources.conditions import ConditionStatus, ConditionType
from kserve_operator.resources.routes import KIND_HTTP_ROUTE, KIND_VIRTUAL_SERVICE, RouteTarget, recorded_route

_NOT_FOUND = {KIND_VIRTUAL_SERVICE: CanaryReason.VIRTUAL_SERVICE_NOT_FOUND,
              KIND_HTTP_ROUTE: CanaryReason.HTTP_ROUTE_NOT_FOUND}
_API_GROUPS = {KIND_VIRTUAL_SERVICE: "Istio's networking.istio.io",
               KIND_HTTP_ROUTE: "the Gateway API's gateway.networking.k8s.io/v1"}


def missing_route(target: RouteTarget, served: bool) -> tuple[str, str]:
    """(reason, message) for a routing object that is not there, or whose kind the cluster does not serve."""
    if served:
        return _NOT_FOUND[target.kind], f"{target.display} does not exist"
    return CanaryReason.ROUTE_KIND_NOT_SERVED, (
        f"the API server does not serve {target.kind}s ({_API_GROUPS[target.kind]}):"
        f" install its CRDs; {target.display} is looked for again at the resync")


@dataclasses.dataclass(frozen=True)
class WarmState:
    """The candidate's model as its ModelPrewarm reports it; `detail` says what is awaited."""

    warm: bool
    detail: str
    nodes: int = 0  # nodes warm with the model the ModelPrewarm asks for


@dataclasses.dataclass(frozen=True)
class StepDecision:
    percent: int  # the candidate's share to put in force
    phase: str
    reason: str  # of the Progressing condition
    message: str
    step: int  # 1-based position on the ladder; 0 at 0%
    last_step_time: datetime.datetime | None
    last_check_time: datetime.datetime | None
    failed_checks: int
    rolled_back_generation: int | None
    analysis: AnalysisResult | None = None  # the checks evaluated by this pass
    wants_analysis: bool = False  # a check is due: evaluate the checks and decide again with their result
    requeue_after: float | None = None  # seconds until the next check is due
    capacity_percent: int = 0  # the share whose warm nodes are asked for now (the next step's, or this one's)


def _whole_second_up(moment: datetime.datetime) -> datetime.datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + datetime.timedelta(seconds=1)


def _position(ladder: tuple[int, ...], share: int) -> int:
    return sum(1 for w in ladder if w <= share)


_SETTLED_REASONS: dict[str, CanaryReason] = {CanaryPhase.PROMOTED: CanaryReason.PROMOTED,
                                             CanaryPhase.ACTIVE: CanaryReason.SETTLED}


def _settled_phase(share: int) -> str:
    return CanaryPhase.PROMOTED if share == 100 else CanaryPhase.ACTIVE


def next_step(
    spec: CanarySpec, status: CanaryStatus, generation: int | None, warm: WarmState | None,
    analysis: AnalysisResult | None, now: datetime.datetime, capacity: Capacity | None = None,
) -> StepDecision:
    """The candidate's share now, and the share whose warm nodes it asks for."""
    decision = _walk(spec, status, generation, warm, analysis, now, capacity)
    if decision.phase == CanaryPhase.ROLLED_BACK:
        return decision
    ladder = spec.ladder() if spec.steps else ()
    ahead = next((share for share in ladder if share > decision.percent), spec.percent)
    return dataclasses.replace(decision, capacity_percent=max(decision.percent, min(ahead, spec.percent)))


def _walk(
    spec: CanarySpec, status: CanaryStatus, generation: int | None, warm: WarmState | None,
    analysis: AnalysisResult | None, now: datetime.datetime, capacity: Capacity | None,
) -> StepDecision:
    """The candidate's share now; see the module docstring for the walk."""
    ladder = spec.ladder()
    current = status.percent
    hold = StepDecision(
        percent=current, phase=CanaryPhase.PROGRESSING, reason=CanaryReason.STEPPING, message="",
        step=_position(ladder, current), last_step_time=status.last_step_time,
        last_check_time=status.last_check_time, failed_checks=status.failed_checks, rolled_back_generation=None,
    )
    replace = dataclasses.replace
    # Status keeps whole seconds: times stored rounded up, so no interval is ever cut short.
    stamp = _whole_second_up(now)

    def wait_from(anchor: datetime.datetime) -> float:
        assert spec.steps is not None
        return spec.steps.interval_seconds + (anchor - now).total_seconds()

    if status.rolled_back_generation is not None and status.rolled_back_generation == generation:
        return replace(hold, percent=0, step=0, phase=CanaryPhase.ROLLED_BACK, reason=CanaryReason.ROLLED_BACK,
                       message="rolled back after failed analysis; change the spec to try again",
                       rolled_back_generation=generation)

    if spec.require_warm and (warm is None or not warm.warm):
        detail = warm.detail if warm else f"ModelPrewarm {spec.namespace}/{spec.model_prewarm} to be Warm"
        return replace(hold, percent=0, step=0, phase=CanaryPhase.WAITING_FOR_MODEL,
                       reason=CanaryReason.WAITING_FOR_MODEL,
                       message=f"the candidate gets 0% until its model is warm: waiting for {detail}",
                       last_step_time=None, last_check_time=None, failed_checks=0)

    def short_of(share: int, **kept: Any) -> StepDecision | None:
        """Held for capacity (woken when the ModelPrewarm reports more warm nodes), or None."""
        waits = capacity.holds(current, share) if capacity is not None else None
        if waits is None:
            return None
        return replace(hold, phase=CanaryPhase.WAITING_FOR_CAPACITY, reason=CanaryReason.WAITING_FOR_CAPACITY,
                       message=waits, **kept)

    def step_to(share: int, message: str) -> StepDecision:
        held = short_of(share)
        if held is not None:
            return held
        phase = _settled_phase(share) if share == spec.percent else CanaryPhase.PROGRESSING
        reason = _SETTLED_REASONS.get(phase, CanaryReason.STEPPING)
        requeue = wait_from(stamp) if spec.steps and phase == CanaryPhase.PROGRESSING else None
        return replace(hold, percent=share, phase=phase, reason=reason, message=message,
                       step=_position(ladder, share), requeue_after=requeue,
                       last_step_time=stamp if share != current else status.last_step_time)

    if spec.steps is None or current >= spec.percent:
        return step_to(spec.percent, f"the candidate gets {spec.percent}%")
    upcoming = next(share for share in ladder if share > current)
    if current == 0:
        return replace(step_to(upcoming, f"first step: the candidate gets {upcoming}%"), failed_checks=0)

    interval = spec.steps.interval_seconds
    anchors = [t for t in (status.last_step_time, status.last_check_time) if t is not None]
    if not anchors:  # the step's start time was lost: start the wait now
        return replace(hold, message=f"at {current}%, next step {upcoming}%", last_step_time=stamp,
                       requeue_after=wait_from(stamp))
    due = max(anchors) + datetime.timedelta(seconds=interval)
    if now < due:
        if status.phase == CanaryPhase.WAITING_FOR_CAPACITY:  # a passing pass was held: still short?
            held = short_of(upcoming, requeue_after=(due - now).total_seconds())
            if held is not None:
                return held
        reason, message = _progress_so_far(status, current, upcoming)
        return replace(hold, reason=reason, message=message, requeue_after=(due - now).total_seconds())

    check = spec.steps.analysis
    if check is None:
        return step_to(upcoming, f"stepped to {upcoming}% after {interval:g}s")
    if analysis is None:
        return replace(hold, reason=CanaryReason.ANALYSIS_PENDING, wants_analysis=True,
                       message=f"at {current}%, checking the analysis before {upcoming}%")
    verdict, summary = analysis.result, analysis.summary()
    if verdict == CheckResult.PASSED:
        # Short of capacity: the pass is recorded and the analysis goes on at the interval (a candidate
        # that starts failing while it waits is still rolled back); the step follows a later pass.
        held = short_of(upcoming, failed_checks=0, last_check_time=stamp, analysis=analysis,
                        requeue_after=wait_from(stamp))
        if held is not None:
            return held
        return replace(step_to(upcoming, f"analysis passed ({summary}); stepped to {upcoming}%"),
                       failed_checks=0, last_check_time=stamp, analysis=analysis)
    if verdict != CheckResult.FAILED:  # inconclusive: neither a pass nor a failure
        return replace(hold, reason=verdict, last_check_time=stamp, requeue_after=wait_from(stamp), analysis=analysis,
                       message=f"held at {current}%: the analysis is inconclusive ({summary}); not counted as a pass")
    failed = status.failed_checks + 1
    if failed >= check.failure_limit:
        return replace(hold, percent=0, step=0, phase=CanaryPhase.ROLLED_BACK, reason=CanaryReason.ROLLED_BACK,
                       message=f"rolled back to 0%: analysis failed {failed} time(s) in a row: {summary}",
                       last_step_time=stamp, last_check_time=stamp, failed_checks=failed,
                       rolled_back_generation=generation, analysis=analysis)
    return replace(hold, reason=CanaryReason.ANALYSIS_FAILED, last_check_time=stamp, failed_checks=failed,
                   analysis=analysis, requeue_after=wait_from(stamp),
                   message=f"held at {current}%: analysis failed ({failed} of {check.failure_limit}): {summary}")


def _progress_so_far(status: CanaryStatus, current: int, upcoming: int) -> tuple[str, str]:
    """While waiting between checks, keep what the last decision said: no status write per tick."""
    previous = cond.find_condition(list(status.conditions), ConditionType.PROGRESSING)
    if status.phase == CanaryPhase.PROGRESSING and previous and previous.get("reason") in (
            CanaryReason.STEPPING, CanaryReason.ANALYSIS_FAILED, CanaryReason.NO_DATA,
            CanaryReason.METRICS_UNAVAILABLE):
        return str(previous.get("reason")), str(previous.get("message"))
    return CanaryReason.STEPPING, f"at {current}%, next step {upcoming}%"


def _backend_names(spec: CanarySpec) -> dict[str, str]:
    return {"stable": spec.stable.display, "candidate": spec.candidate.display}


def plan_status(
    old: Mapping[str, Any] | None, spec: CanarySpec, decision: StepDecision, weights: WeightPlan, *,
    generation: int | None, now: datetime.datetime, route_version: str, capacity: Capacity | None = None,
) -> dict[str, Any]:
    """The whole status after the weights of `weights` are in force."""
    old = old or {}
    conditions: list[cond.Condition] = list(old.get("conditions") or [])
    routes = ", ".join(weights.managed)
    conditions = cond.set_condition(
        conditions, type=ConditionType.AVAILABLE, status=ConditionStatus.TRUE, reason=CanaryReason.WEIGHTS_APPLIED,
        message=(f"{spec.route.display} carries stable "
                 f"{weights.stable_weight}% / candidate {weights.candidate_weight}% on {routes}"),
        now=now, generation=generation)
    moving = decision.phase in (CanaryPhase.WAITING_FOR_MODEL, CanaryPhase.WAITING_FOR_CAPACITY,
                                CanaryPhase.PROGRESSING)
    conditions = cond.set_condition(
        conditions, type=ConditionType.PROGRESSING, status=ConditionStatus.TRUE if moving else ConditionStatus.FALSE,
        reason=decision.reason, message=decision.message, now=now, generation=generation)
    rolled_back = decision.phase == CanaryPhase.ROLLED_BACK
    conditions = cond.set_condition(
        conditions, type=ConditionType.DEGRADED, status=ConditionStatus.TRUE if rolled_back else ConditionStatus.FALSE,
        reason=CanaryReason.ANALYSIS_FAILED if rolled_back else CanaryReason.AS_EXPECTED,
        message=decision.message if rolled_back else "", now=now, generation=generation)
    # Ready: the share the spec asks for is in force and nothing holds it (no wait, step or rollback).
    ready = decision.percent == spec.percent and decision.phase in (CanaryPhase.ACTIVE, CanaryPhase.PROMOTED)
    conditions = cond.set_condition(
        conditions, type=ConditionType.READY, status=ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        reason=CanaryReason.WEIGHT_IN_FORCE if ready else decision.reason,
        message=(f"the candidate's {spec.percent}% is in force" if ready
                 else f"{decision.percent}% in force of {spec.percent}% wanted: {decision.message}"),
        now=now, generation=generation)
    analysis = analysis_status(
        old.get("analysis"), failed_checks=decision.failed_checks, evaluated=decision.analysis,
        last_check=cond.rfc3339(decision.last_check_time) if decision.last_check_time is not None else None)
    status: dict[str, Any] = {
        "phase": decision.phase,
        **_backend_names(spec),
        "percent": decision.percent,
        "stableWeight": weights.stable_weight,
        "candidateWeight": weights.candidate_weight,
        "step": decision.step if spec.steps else 0,
        "steps": len(spec.ladder()) if spec.steps else 0,
        "lastStepTime": cond.rfc3339(decision.last_step_time) if decision.last_step_time else None,
        "lastTransitionTime": _transition(old, decision.phase, now),
        "analysis": analysis if spec.steps and spec.steps.analysis else None,
        "rolledBackGeneration": decision.rolled_back_generation,
        "capacity": capacity.status(decision.capacity_percent) if capacity is not None else None,
        **_route_fields(spec),
        "managedRoutes": list(weights.managed),
        "addedCandidateRoutes": sorted((_added_before(old, spec) - set(weights.removed)) | set(weights.appended)),
        "routeVersion": route_version,
        "virtualServiceVersion": route_version if spec.route.kind == KIND_VIRTUAL_SERVICE else None,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    return status


def _route_fields(spec: CanarySpec) -> dict[str, Any]:
    """Where the managed routes live; `virtualService` too for a VirtualService (its older readers)."""
    return {"routeKind": spec.route.kind, "route": spec.route.ref,
            "virtualService": spec.route.ref if spec.route.kind == KIND_VIRTUAL_SERVICE else None}


def _added_before(old: Mapping[str, Any], spec: CanarySpec) -> set[str]:
    """The routes where we appended the candidate, in the routing object the spec names now."""
    recorded = recorded_route(old)
    if recorded and recorded != (spec.route.kind, spec.route.ref):
        return set()
    return set(old.get("addedCandidateRoutes") or [])


def _transition(old: Mapping[str, Any], phase: str, now: datetime.datetime) -> str:
    previous = old.get("lastTransitionTime")
    return str(previous) if old.get("phase") == phase and previous else cond.rfc3339(now)


def intent_status(old: Mapping[str, Any] | None, spec: CanarySpec, weights: WeightPlan) -> dict[str, Any] | None:
    """Written before a route write that appends the candidate destination, so the release
    knows to remove it even if the status write after the route write is lost."""
    old = old or {}
    known = _added_before(old, spec)
    if set(weights.appended) <= known and recorded_route(old) == (spec.route.kind, spec.route.ref):
        return None
    changes: dict[str, Any] = {"addedCandidateRoutes": sorted(known | set(weights.appended)), **_route_fields(spec)}
    if not old.get("phase"):
        changes["phase"] = CanaryPhase.PENDING
    return changes


def problem_status(
    old: Mapping[str, Any] | None, reason: str, message: str, *, generation: int | None,
    now: datetime.datetime, spec: CanarySpec | None = None,
) -> dict[str, Any]:
    """Phase Error with the problem in Available/Degraded; weights and step bookkeeping unchanged."""
    old = dict(old or {})
    conditions: list[cond.Condition] = list(old.get("conditions") or [])
    conditions = cond.set_condition(conditions, type=ConditionType.AVAILABLE, status=ConditionStatus.FALSE,
                                    reason=reason, message=message, now=now, generation=generation)
    conditions = cond.set_condition(conditions, type=ConditionType.PROGRESSING, status=ConditionStatus.FALSE,
                                    reason=reason,
                                    message="the routes are not touched until this is fixed",
                                    now=now, generation=generation)
    conditions = cond.set_condition(conditions, type=ConditionType.DEGRADED, status=ConditionStatus.TRUE, reason=reason,
                                    message=message, now=now, generation=generation)
    conditions = cond.set_condition(conditions, type=ConditionType.READY, status=ConditionStatus.FALSE, reason=reason,
                                    message=message, now=now, generation=generation)
    return {**old, **(_backend_names(spec) if spec else {}), "phase": CanaryPhase.ERROR,
            "lastTransitionTime": _transition(old, CanaryPhase.ERROR, now),
            "observedGeneration": generation, "conditions": conditions}


def plan_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventPlan]:
    """Events for what changed between two statuses; nothing when nothing did."""
    old = old or {}
    events: list[EventPlan] = []
    old_degraded = cond.find_condition(list(old.get("conditions") or []), ConditionType.DEGRADED) or {}
    degraded = cond.find_condition(list(new.get("conditions") or []), ConditionType.DEGRADED) or {}
    phase, old_phase = new.get("phase"), old.get("phase")
    if phase == CanaryPhase.ERROR:
        if (degraded.get("reason"), degraded.get("message")) != (old_degraded.get("reason"),
                                                                 old_degraded.get("message")):
            events.append(EventPlan(WARNING, str(degraded.get("reason")), str(degraded.get("message"))))
        return events
    progressing = cond.find_condition(list(new.get("conditions") or []), ConditionType.PROGRESSING) or {}
    if phase == CanaryPhase.ROLLED_BACK and old_phase != phase:
        events.append(EventPlan(WARNING, CanaryReason.ROLLED_BACK, str(progressing.get("message"))))
    if phase == CanaryPhase.WAITING_FOR_MODEL and old_phase != phase:
        events.append(EventPlan(NORMAL, CanaryReason.WAITING_FOR_MODEL, str(progressing.get("message"))))
    if old_phase == CanaryPhase.WAITING_FOR_MODEL and phase != old_phase:
        events.append(EventPlan(NORMAL, CanaryReason.MODEL_WARM, "the candidate's model is warm: traffic released"))
    if (new.get("stableWeight"), new.get("candidateWeight")) != (old.get("stableWeight"), old.get("candidateWeight")):
        events.append(EventPlan(NORMAL, CanaryReason.WEIGHTS_CHANGED,
                                f"stable {new.get('stable')} {new.get('stableWeight')}%, candidate "
                                f"{new.get('candidate')} {new.get('candidateWeight')}% on "
                                f"{', '.join(new.get('managedRoutes') or [])}"))
    old_progress = cond.find_condition(list(old.get("conditions") or []), ConditionType.PROGRESSING) or {}
    if (progressing.get("reason") in (CanaryReason.ANALYSIS_FAILED, CanaryReason.NO_DATA,
                                      CanaryReason.METRICS_UNAVAILABLE)
            and progressing.get("message") != old_progress.get("message")):
        events.append(EventPlan(WARNING, str(progressing.get("reason")), str(progressing.get("message"))))
    return events
