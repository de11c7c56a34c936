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
from kserve_operator.resources.conditions import (
    DEGRADED,
    FALSE,
    PROGRESSING,
    READY,
    TRUE,
    find_condition,
    set_condition,
)
from kserve_operator.resources.prewarm import FAILED, PARTIALLY_WARM, PENDING, WARM, WARMING, PrewarmSpec

# Condition reasons (constants: tools match on them).
REASON_WARM = "Warm"
REASON_WARMING = "Warming"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_UNSUPPORTED_URI = "UnsupportedStorageUri"
REASON_MULTIPLE_URIS = "MultipleStorageUris"
REASON_NO_ACCOUNT = "ServiceAccountNotFound"
REASON_NO_SECRET = "SecretNotFound"  # noqa: S105 (a condition reason)
REASON_NO_SECRET_KEY = "SecretKeyNotFound"  # noqa: S105 (a condition reason)
REASON_NO_NODES = "NoQualifyingNodes"
REASON_FAILED = "PreloadFailed"
REASON_PARTIALLY_WARM = "PartiallyWarm"
REASON_JOBS_RUNNING = "JobsRunning"
REASON_RETRY_SCHEDULED = "RetryScheduled"
REASON_SETTLED = "Settled"
REASON_BLOCKED = "Blocked"
REASON_FEWER_NODES = "FewerNodesThanRequested"
REASON_NODES_FAILED = "NodesFailed"
REASON_AS_EXPECTED = "AsExpected"
INVALID_REASONS = (REASON_INVALID_SPEC, REASON_UNSUPPORTED_URI, REASON_MULTIPLE_URIS)
BLOCKING_REASONS = (*INVALID_REASONS, REASON_NO_ACCOUNT, REASON_NO_SECRET, REASON_NO_SECRET_KEY, REASON_NO_NODES)

# Event reasons.
EVENT_JOBS_CREATED = "PreloadJobsCreated"
EVENT_JOBS_DELETED = "PreloadJobsDeleted"
EVENT_WARM = "ModelWarm"
EVENT_NODE_FAILED = "PreloadFailed"
EVENT_RETRY = "PreloadRetried"


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
    for type, status, why in ((READY, FALSE, reason), (PROGRESSING, FALSE, REASON_BLOCKED), (DEGRADED, TRUE, reason)):
        conditions = set_condition(conditions, type=type, status=status, reason=why, message=message, now=now,
                                   generation=generation)
    nodes = list(old.get("nodes") or []) if keep_nodes else []
    warm = sum(1 for n in nodes if n.get("phase") == WARM)
    return {
        "phase": FAILED if reason in INVALID_REASONS else PENDING,
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
        return PENDING
    warm = phases.count(WARM)
    if warm == len(phases):
        return WARM
    if all(p in (WARM, FAILED) for p in phases):
        return PARTIALLY_WARM if warm else FAILED
    if all(p == PENDING for p in phases):
        return PENDING
    return WARMING


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
    warm = phases.count(WARM)
    failed = [e for e in entries if e["phase"] == FAILED]
    phase = overall_phase(phases)
    conditions = list(old.get("conditions") or [])

    def put(type: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type=type, status=status, reason=reason, message=message,
                                   now=now, generation=generation)

    retries = sorted(str(e["retryAt"]) for e in failed if e.get("retryAt"))
    if not entries:
        message = f"no node qualifies for {spec.storage_uri}: {why_not}"
        put(READY, FALSE, REASON_NO_NODES, message)
        put(PROGRESSING, FALSE, REASON_BLOCKED, message)
    else:
        if warm >= spec.node_count:
            put(READY, TRUE, REASON_WARM, f"{spec.storage_uri} is warm on {warm} node(s)")
        elif phase in (PARTIALLY_WARM, FAILED):
            put(READY, FALSE, REASON_PARTIALLY_WARM if warm else REASON_FAILED,
                f"{warm} of {spec.node_count} node(s) warm; " + "; ".join(_failure_text(e) for e in failed))
        else:
            put(READY, FALSE, REASON_WARMING, f"{warm} of {spec.node_count} node(s) warm")
        running = sum(1 for p in phases if p not in (WARM, FAILED))
        if running:
            put(PROGRESSING, TRUE, REASON_JOBS_RUNNING, f"{running} preloader Job(s) to finish")
        elif retries:
            put(PROGRESSING, TRUE, REASON_RETRY_SCHEDULED, f"{len(retries)} failed node(s) retried from {retries[0]}")
        else:
            put(PROGRESSING, FALSE, REASON_SETTLED, "every Job finished")
    if failed:
        put(DEGRADED, TRUE, REASON_NODES_FAILED, f"{len(failed)} of {len(entries)} node(s) failed: "
            + "; ".join(_failure_text(e) for e in failed))
    elif entries and len(entries) < spec.node_count:
        put(DEGRADED, TRUE, REASON_FEWER_NODES,
            f"{qualifying} qualifying node(s) for nodeCount {spec.node_count}; others: {why_not}")
    elif not entries:
        put(DEGRADED, TRUE, REASON_NO_NODES, f"0 qualifying node(s) for nodeCount {spec.node_count}")
    else:
        put(DEGRADED, FALSE, REASON_AS_EXPECTED, f"{len(entries)} node(s) chosen for nodeCount {spec.node_count}")
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
    old_ready = find_condition(list(old.get("conditions") or []), READY) or {}
    new_ready = find_condition(list(new.get("conditions") or []), READY) or {}
    if new_ready.get("reason") in BLOCKING_REASONS and (
        old_ready.get("reason") != new_ready.get("reason") or old_ready.get("message") != new_ready.get("message")
    ):
        events.append(EventPlan(WARNING, str(new_ready["reason"]), str(new_ready.get("message", ""))))
    if new.get("phase") == WARM and old.get("phase") != WARM:
        figures = ", ".join(
            f"{n['name']}: {n.get('bytes', 0)} bytes in {n.get('seconds', 0)}s ({n.get('gbps', 0)} GB/s, "
            f"cache {n.get('cache', '?')})" for n in new.get("nodes") or []
        )
        events.append(EventPlan(NORMAL, EVENT_WARM, f"warm on {new.get('warmNodes')} node(s): {figures}"))
    old_failed = {(n.get("name"), n.get("job")) for n in old.get("nodes") or [] if n.get("phase") == FAILED}
    for node in new.get("nodes") or []:
        if node.get("phase") == FAILED and (node.get("name"), node.get("job")) not in old_failed:
            events.append(EventPlan(WARNING, EVENT_NODE_FAILED, _failure_text(node)))
    return events
