"""What the Memcached controller reports: status, conditions and the events to post.

Pure: callers pass the observed state and `now`. Split from planning.memcached (the replica
math and the manifests) so each stays small.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from kserve_operator.planning.events import NORMAL, WARNING, EventPlan
from kserve_operator.planning.memcached import LAST_SCALE_ANNOTATION, ReplicaDecision
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.conditions import ConditionStatus, ConditionType
from kserve_operator.resources.memcached import Memcached, MemcachedStatus
from kserve_operator.resources.memcached_conditions import MemcachedPhase, MemcachedReason


def with_ready(conditions: list[cond.Condition], *, now: datetime.datetime,
               generation: int | None) -> list[cond.Condition]:
    """Ready = Available and not Degraded, for `kubectl wait --for=condition=Ready` and GitOps
    health checks. Its reason is the one that decides: Degraded's problem first, then Available's
    (ReplicasReady when True; ScaledToZero, NoReplicasReady when no replica serves)."""
    available = cond.find_condition(conditions, ConditionType.AVAILABLE) or {}
    degraded = cond.find_condition(conditions, ConditionType.DEGRADED) or {}
    if degraded.get("status") == ConditionStatus.TRUE:
        status, deciding = ConditionStatus.FALSE, degraded
    else:  # callers set Available (healthy reconciles) or Degraded=True (problems) first
        healthy = available.get("status") == ConditionStatus.TRUE
        status, deciding = (ConditionStatus.TRUE if healthy else ConditionStatus.FALSE), available
    return cond.set_condition(conditions, type=ConditionType.READY, status=status, reason=str(deciding.get("reason")),
                              message=str(deciding.get("message")), now=now, generation=generation)


def _phase(replicas: int, ready: int, deployment_replicas: int | None) -> str:
    if replicas == 0 and ready == 0:
        return MemcachedPhase.SCALED_TO_ZERO
    if deployment_replicas is None:
        return MemcachedPhase.PENDING
    if deployment_replicas != replicas or ready != replicas:
        return MemcachedPhase.SCALING
    return MemcachedPhase.RUNNING


def plan_status(
    cache: Memcached,
    decision: ReplicaDecision,
    *,
    deployment: Mapping[str, Any] | None,
    connections: float | None,
    metrics_problem: str | None,
    scaled: bool,
    now: datetime.datetime,
    metrics_reason: str = MemcachedReason.METRICS_UNAVAILABLE,
) -> MemcachedStatus:
    """The status a healthy reconcile writes; identical input gives an identical status.

    `deployment` is the Deployment as it stands after this reconcile applied its change;
    `scaled` says whether this reconcile changed its replicas.
    """
    old = cache.status
    generation = cache.generation
    dep_status = (deployment or {}).get("status") or {}
    dep_replicas = (deployment or {}).get("spec", {}).get("replicas") if deployment else None
    ready = int(dep_status.get("readyReplicas") or 0)
    replicas = decision.replicas
    phase = _phase(replicas, ready, dep_replicas)

    conditions: list[cond.Condition] = list(old.conditions or ())
    if phase == MemcachedPhase.SCALED_TO_ZERO:
        available = (ConditionStatus.FALSE, MemcachedReason.SCALED_TO_ZERO,
                     "scaled to zero after a whole window without connections")
    elif ready > 0:
        available = (ConditionStatus.TRUE, MemcachedReason.REPLICAS_READY, f"{ready}/{replicas} replicas ready")
    else:
        available = (ConditionStatus.FALSE, MemcachedReason.NO_REPLICAS_READY, f"0/{replicas} replicas ready")
    if phase in (MemcachedPhase.SCALING, MemcachedPhase.PENDING):
        progressing = (ConditionStatus.TRUE, MemcachedReason.SCALING, f"{ready}/{replicas} replicas ready")
    elif decision.window is not None:
        progressing = (
            ConditionStatus.FALSE,
            MemcachedReason.SCALE_DOWN_PENDING,
            f"demand is {decision.wanted}; scaling down to {decision.window.replicas} after the window",
        )
    else:
        progressing = (ConditionStatus.FALSE, MemcachedReason.SETTLED, f"running {replicas} replica(s) as wanted")
    if metrics_problem is not None:
        degraded = (ConditionStatus.TRUE, metrics_reason, f"holding {replicas} replica(s): {metrics_problem}")
    else:
        degraded = (ConditionStatus.FALSE, MemcachedReason.AS_EXPECTED, "reconciled")
    for ctype, (value, reason, message) in (
        (ConditionType.AVAILABLE, available),
        (ConditionType.PROGRESSING, progressing),
        (ConditionType.DEGRADED, degraded),
    ):
        conditions = cond.set_condition(
            conditions, type=ctype, status=value, reason=reason, message=message, now=now, generation=generation
        )
    conditions = with_ready(conditions, now=now, generation=generation)

    recorded = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(LAST_SCALE_ANNOTATION)
    return MemcachedStatus(
        phase=phase, replicas=replicas, ready_replicas=ready, desired_replicas=decision.wanted,
        conditions=tuple(conditions), scale_down=decision.window.to_status() if decision.window else None,
        observed_generation=generation if generation is not None else old.observed_generation,
        active_connections=connections if connections is not None else old.active_connections,
        last_scale_time=recorded or (cond.rfc3339(now) if scaled else old.last_scale_time),
        unknown=old.unknown,
    )


_WAITING_FOR: dict[str, str] = {
    MemcachedReason.INVALID_SPEC: "waiting for a valid spec",
    MemcachedReason.NAME_CONFLICT: "waiting for the name to be free",
    MemcachedReason.APPLY_FAILED: "waiting for the API server to accept the change",
    MemcachedReason.INVALID_NAME: "waiting for a cache with a usable name",
    MemcachedReason.RECONCILE_ERROR: "retrying with backoff",
}


def plan_error_status(cache: Memcached, problem: str, now: datetime.datetime,
                      reason: str = MemcachedReason.INVALID_SPEC) -> MemcachedStatus:
    """A problem only a person can fix: say why, keep the rest of the status, change nothing else."""
    old = cache.status
    generation = cache.generation
    conditions: list[cond.Condition] = list(old.conditions or ())
    conditions = cond.set_condition(
        conditions, type=ConditionType.DEGRADED, status=ConditionStatus.TRUE, reason=reason, message=problem,
        now=now, generation=generation,
    )
    conditions = cond.set_condition(
        conditions, type=ConditionType.PROGRESSING, status=ConditionStatus.FALSE, reason=reason,
        message=_WAITING_FOR.get(reason, "waiting"), now=now, generation=generation,
    )
    conditions = with_ready(conditions, now=now, generation=generation)
    return dataclasses.replace(old, phase=MemcachedPhase.ERROR, conditions=tuple(conditions),
                               observed_generation=generation if generation is not None else old.observed_generation)


def plan_events(
    cache: Memcached,
    new_status: MemcachedStatus,
    *,
    previous_replicas: int | None = None,
    decision: ReplicaDecision | None = None,
) -> list[EventPlan]:
    """Events on every scale and on every newly raised problem (not on every tick)."""
    events: list[EventPlan] = []
    if decision is not None and previous_replicas is not None and previous_replicas != decision.replicas:
        verb = "up" if decision.replicas > previous_replicas else "down"
        events.append(EventPlan(
            NORMAL, MemcachedReason.SCALED_UP if verb == "up" else MemcachedReason.SCALED_DOWN,
            f"Scaled {verb} from {previous_replicas} to {decision.replicas} replica(s): {decision.reason}",
        ))
    old_degraded = cond.find_condition(list(cache.status.conditions or ()), ConditionType.DEGRADED)
    new_degraded = cond.find_condition(list(new_status.conditions or ()), ConditionType.DEGRADED)
    if new_degraded and new_degraded["status"] == ConditionStatus.TRUE and (
        old_degraded is None
        or old_degraded.get("status") != ConditionStatus.TRUE
        or old_degraded.get("reason") != new_degraded.get("reason")
    ):
        events.append(EventPlan(WARNING, str(new_degraded["reason"]), str(new_degraded["message"])))
    return events
