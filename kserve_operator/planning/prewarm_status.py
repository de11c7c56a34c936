"""A ModelPrewarm's status and Events from its nodes' progress: what a data scientist reads.

Partial success reads as such: `warm: 1/2`, phase `PartiallyWarm` when some nodes are warm and
others failed for good, `Ready` true once at least `nodeCount` nodes are warm (so `kubectl wait
--for=condition=Ready` means "as warm as asked"), `Degraded` naming each failed node with the
preloader's own reason and when it is retried. Events are planned on transitions only, so a
settled ModelPrewarm plans no writes.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.planning.events import NORMAL, WARNING, EventPlan
from kserve_operator.planning.prewarm_jobs import NodeProgress
from kserve_operator.resources.conditions import ConditionStatus, ConditionType, find_condition, set_condition
from kserve_operator.resources.prewarm import PrewarmSpec
from kserve_operator.resources.prewarm_conditions import BLOCKING_REASONS, INVALID_REASONS, PrewarmPhase, PrewarmReason


def node_entry(node: str, hostname: str, job: str, progress: NodeProgress, *, attempts: int = 0,
               retry_at: str = "") -> dict[str, Any]:
    """One `status.nodes[]` entry: the phase, the Job, and the preloader's figures."""
    entry: dict[str, Any] = {"name": node, "phase": progress.phase, "job": job}
    if hostname and hostname != node:
        entry["hostname"] = hostname
    result = progress.result or {}
    for key in ("bytes", "files"):
        if isinstance(result.get(key), int):
            entry[key] = result[key]
    seconds = result.get("seconds")
    total = seconds.get("total") if isinstance(seconds, Mapping) else seconds
    if isinstance(total, int | float) and not isinstance(total, bool):
        entry["seconds"] = round(float(total), 3)
    if isinstance(result.get("gbps"), int | float):
        entry["gbps"] = round(float(result["gbps"]), 3)
    for key in ("device", "cache", "version"):
        if result.get(key):
            entry[key] = str(result[key])
    if progress.reason:
        entry["reason"] = progress.reason
    if progress.message:
        entry["message"] = progress.message[:1000]
    if progress.finished_at:
        entry["finishedAt"] = progress.finished_at
    if attempts:
        entry["attempts"] = attempts
    if retry_at:
        entry["retryAt"] = retry_at
    return entry


def blocked_status(
    old: Mapping[str, Any], spec_uri: str, node_count: int, *, reason: str, message: str,
    now: datetime.datetime, generation: int | None, keep_nodes: bool,
) -> dict[str, Any]:
    """Nothing can run (bad input, a missing Secret): say why; keep what is warm if it still is."""
    conditions = list(old.get("conditions") or [])
    for type, status, why in ((ConditionType.READY, ConditionStatus.FALSE, reason),
                              (ConditionType.PROGRESSING, ConditionStatus.FALSE, PrewarmReason.BLOCKED),
                              (ConditionType.DEGRADED, ConditionStatus.TRUE, reason)):
        conditions = set_condition(conditions, type=type, status=status, reason=why, message=message, now=now,
                                   generation=generation)
    nodes = list(old.get("nodes") or []) if keep_nodes else []
    warm = sum(1 for n in nodes if n.get("phase") == PrewarmPhase.WARM)
    return {
        "phase": PrewarmPhase.FAILED if reason in INVALID_REASONS else PrewarmPhase.PENDING,
        "desiredNodes": node_count,
        "warmNodes": warm,
        "warm": f"{warm}/{node_count}",
        "qualifyingNodes": None,
        "storageUri": spec_uri,
        "modelVersion": old.get("modelVersion") if keep_nodes else None,
        "nodes": nodes,
        "nextRetryAt": None,
        "conditions": conditions,
        "observedGeneration": generation,
    }


def overall_phase(phases: Sequence[str]) -> str:
    if not phases:
        return PrewarmPhase.PENDING
    warm = phases.count(PrewarmPhase.WARM)
    if warm == len(phases):
        return PrewarmPhase.WARM
    if all(p in (PrewarmPhase.WARM, PrewarmPhase.FAILED) for p in phases):
        return PrewarmPhase.PARTIALLY_WARM if warm else PrewarmPhase.FAILED
    if all(p == PrewarmPhase.PENDING for p in phases):
        return PrewarmPhase.PENDING
    return PrewarmPhase.WARMING


def _failure_text(entry: Mapping[str, Any]) -> str:
    retry = f" (attempt {entry.get('attempts', 1)}; retried at {entry['retryAt']})" if entry.get("retryAt") else ""
    return f"{entry['name']}: {entry.get('reason', '')}: {entry.get('message', '')}{retry}"


def plan_status(
    spec: PrewarmSpec, generation: int | None, old: Mapping[str, Any], entries: list[dict[str, Any]], version: str,
    qualifying: int, why_not: str, now: datetime.datetime, *, serving: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The status of a ModelPrewarm whose Jobs could be planned. `serving` is (predictor Pods on
    warm nodes, predictor Pods) when the ModelPrewarm follows an InferenceService."""
    phases = [e["phase"] for e in entries]
    warm = phases.count(PrewarmPhase.WARM)
    failed = [e for e in entries if e["phase"] == PrewarmPhase.FAILED]
    phase = overall_phase(phases)
    conditions = list(old.get("conditions") or [])

    def put(type: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type=type, status=status, reason=reason, message=message,
                                   now=now, generation=generation)

    retries = sorted(str(e["retryAt"]) for e in failed if e.get("retryAt"))
    if not entries:
        message = f"no node qualifies for {spec.storage_uri}: {why_not}"
        put(ConditionType.READY, ConditionStatus.FALSE, PrewarmReason.NO_NODES, message)
        put(ConditionType.PROGRESSING, ConditionStatus.FALSE, PrewarmReason.BLOCKED, message)
    else:
        if warm >= spec.node_count:
            put(ConditionType.READY, ConditionStatus.TRUE, PrewarmReason.WARM,
                f"{spec.storage_uri} is warm on {warm} node(s)")
        elif phase in (PrewarmPhase.PARTIALLY_WARM, PrewarmPhase.FAILED):
            put(ConditionType.READY, ConditionStatus.FALSE,
                PrewarmReason.PARTIALLY_WARM if warm else PrewarmReason.PRELOAD_FAILED,
                f"{warm} of {spec.node_count} node(s) warm; " + "; ".join(_failure_text(e) for e in failed))
        else:
            put(ConditionType.READY, ConditionStatus.FALSE, PrewarmReason.WARMING,
                f"{warm} of {spec.node_count} node(s) warm")
        running = sum(1 for p in phases if p not in (PrewarmPhase.WARM, PrewarmPhase.FAILED))
        if running:
            put(ConditionType.PROGRESSING, ConditionStatus.TRUE, PrewarmReason.JOBS_RUNNING,
                f"{running} preloader Job(s) to finish")
        elif retries:
            put(ConditionType.PROGRESSING, ConditionStatus.TRUE, PrewarmReason.RETRY_SCHEDULED,
                f"{len(retries)} failed node(s) retried from {retries[0]}")
        else:
            put(ConditionType.PROGRESSING, ConditionStatus.FALSE, PrewarmReason.SETTLED, "every Job finished")
    if failed:
        put(ConditionType.DEGRADED, ConditionStatus.TRUE, PrewarmReason.NODES_FAILED,
            f"{len(failed)} of {len(entries)} node(s) failed: " + "; ".join(_failure_text(e) for e in failed))
    elif entries and len(entries) < spec.node_count:
        put(ConditionType.DEGRADED, ConditionStatus.TRUE, PrewarmReason.FEWER_NODES,
            f"{qualifying} qualifying node(s) for nodeCount {spec.node_count}; others: {why_not}")
    elif not entries:
        put(ConditionType.DEGRADED, ConditionStatus.TRUE, PrewarmReason.NO_NODES,
            f"0 qualifying node(s) for nodeCount {spec.node_count}")
    else:
        put(ConditionType.DEGRADED, ConditionStatus.FALSE, PrewarmReason.AS_EXPECTED,
            f"{len(entries)} node(s) chosen for nodeCount {spec.node_count}")
    status: dict[str, Any] = {
        "phase": phase,
        "desiredNodes": spec.node_count,
        "warmNodes": warm,
        "warm": f"{warm}/{spec.node_count}",
        "qualifyingNodes": qualifying,
        "storageUri": spec.storage_uri,
        "nodes": sorted(entries, key=lambda e: str(e["name"])),
        "nextRetryAt": retries[0] if retries else None,
        "conditions": conditions,
        "observedGeneration": generation,
        "servingPods": serving[1] if serving else None,
        "servingOnWarmNodes": f"{serving[0]}/{serving[1]}" if serving else None,
    }
    status["modelVersion"] = version or None  # None: a merge patch removes a former version
    return status


def transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventPlan]:
    """Warnings for a newly blocked or failed node, ModelWarm when the phase turns Warm."""
    events: list[EventPlan] = []
    old_ready = find_condition(list(old.get("conditions") or []), ConditionType.READY) or {}
    new_ready = find_condition(list(new.get("conditions") or []), ConditionType.READY) or {}
    if new_ready.get("reason") in BLOCKING_REASONS and (
        old_ready.get("reason") != new_ready.get("reason") or old_ready.get("message") != new_ready.get("message")
    ):
        events.append(EventPlan(WARNING, str(new_ready["reason"]), str(new_ready.get("message", ""))))
    if new.get("phase") == PrewarmPhase.WARM and old.get("phase") != PrewarmPhase.WARM:
        figures = ", ".join(
            f"{n['name']}: {n.get('bytes', 0)} bytes in {n.get('seconds', 0)}s ({n.get('gbps', 0)} GB/s, "
            f"cache {n.get('cache', '?')})" for n in new.get("nodes") or []
        )
        events.append(EventPlan(NORMAL, PrewarmReason.MODEL_WARM, f"warm on {new.get('warmNodes')} node(s): {figures}"))
    old_failed = {(n.get("name"), n.get("job")) for n in old.get("nodes") or []
                  if n.get("phase") == PrewarmPhase.FAILED}
    for node in new.get("nodes") or []:
        if node.get("phase") == PrewarmPhase.FAILED and (node.get("name"), node.get("job")) not in old_failed:
            events.append(EventPlan(WARNING, PrewarmReason.PRELOAD_FAILED, _failure_text(node)))
    return events
