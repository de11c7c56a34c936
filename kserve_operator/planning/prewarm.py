"""Plan one ModelPrewarm: which nodes, which Jobs to create or delete, the status and the events.

Pure: the controller observes (the ModelPrewarm, Nodes, its Jobs and their Pods, the service
account and its Secrets) and applies the plan. Decisions made here:

- bad input (a non-S3 URI, several storageUris, a missing service account or Secret) creates no
  Job and says why in `Ready`; no qualifying node leaves it `Pending` with the reasons counted;
- `nodeCount` nodes are chosen, keeping the ones already warm for this model version;
- each chosen node gets one Job whose name follows from the spec (see prewarm_jobs); Jobs of a
  former spec, of a node no longer chosen, or superseded by a re-warm are deleted;
- when one node reports a newer model version (its Job saw new ETags), the nodes holding an
  older one are warmed again with a Job targeting that version;
- a Job removed by its TTL leaves its outcome in `status.nodes`, which counts as done.
Events are planned on transitions only, so a settled ModelPrewarm plans no writes at all.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.planning.events import NORMAL, WARNING, EventPlan
from kserve_operator.planning.node_selection import NodeView, choose_nodes, qualify
from kserve_operator.planning.prewarm_jobs import JobTemplate, NodeProgress, build_job, job_name, node_progress
from kserve_operator.planning.s3_credentials import DEFAULT_KEY_NAMES, S3KeyNames, derive_credentials
from kserve_operator.resources.conditions import (
    DEGRADED,
    FALSE,
    PROGRESSING,
    READY,
    TRUE,
    find_condition,
    set_condition,
)
from kserve_operator.resources.inferenceservice import ANNOTATION_UNSUPPORTED
from kserve_operator.resources.kinds import MODEL_PREWARM
from kserve_operator.resources.meta import ObjectMeta
from kserve_operator.resources.prewarm import (
    ANNOTATION_NODE,
    ANNOTATION_TARGET_VERSION,
    DEFAULT_SERVICE_ACCOUNT,
    FAILED,
    LABEL_SPEC_HASH,
    PENDING,
    WARM,
    WARMING,
    PrewarmSpec,
    parse_spec,
)

# Condition reasons (constants: tools match on them).
REASON_WARM = "Warm"
REASON_WARMING = "Warming"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_UNSUPPORTED_URI = "UnsupportedStorageUri"
REASON_MULTIPLE_URIS = "MultipleStorageUris"
REASON_NO_ACCOUNT = "ServiceAccountNotFound"
REASON_NO_SECRET = "SecretNotFound"  # noqa: S105 (a condition reason)
REASON_NO_NODES = "NoQualifyingNodes"
REASON_FAILED = "PreloadFailed"
REASON_JOBS_RUNNING = "JobsRunning"
REASON_SETTLED = "Settled"
REASON_BLOCKED = "Blocked"
REASON_FEWER_NODES = "FewerNodesThanRequested"
REASON_NODES_FAILED = "NodesFailed"
REASON_AS_EXPECTED = "AsExpected"

# Event reasons.
EVENT_JOBS_CREATED = "PreloadJobsCreated"
EVENT_JOBS_DELETED = "PreloadJobsDeleted"
EVENT_WARM = "ModelWarm"
EVENT_NODE_FAILED = "PreloadFailed"

OK = "ok"
INVALID = "invalid"
WAITING = "waiting"


@dataclasses.dataclass(frozen=True)
class Observed:
    """The world as the controller read it for one ModelPrewarm."""

    prewarm: Mapping[str, Any]
    nodes: Sequence[NodeView]
    jobs: Sequence[Mapping[str, Any]]  # Jobs labelled with this ModelPrewarm and owned by it
    pods: Mapping[str, Sequence[Mapping[str, Any]]]  # Job name -> its Pods
    service_account: Mapping[str, Any] | None
    secrets: Mapping[str, Mapping[str, Any] | None]  # every Secret the account lists


@dataclasses.dataclass(frozen=True)
class PrewarmPlan:
    create: tuple[dict[str, Any], ...]
    delete: tuple[str, ...]
    status: dict[str, Any]
    events: tuple[EventPlan, ...]
    outcome: str  # OK | INVALID | WAITING


def storage_uri_problem(uri: str) -> str | None:
    """Pre-warm reads S3 only: `s3://bucket/key` or `s3://bucket/prefix/`."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f"storageUri {uri!r} has no scheme; pre-warm supports s3:// only"
    if scheme != "s3":
        return f"pre-warm does not support {scheme}:// URIs (only s3://), got {uri}"
    if not rest.split("/", 1)[0]:
        return f"storageUri {uri!r} names no bucket"
    return None


@dataclasses.dataclass(frozen=True)
class _Record:
    """One node's Job, observed or remembered from status."""

    node: str
    job: str
    target: str
    progress: NodeProgress
    entry: Mapping[str, Any] | None = None  # the status entry, when the Job itself is gone


def _finished_sort_key(record: _Record) -> tuple[str, str]:
    return (record.progress.finished_at, record.progress.version)


def _entry(node: str, job: str, progress: NodeProgress) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": node, "phase": progress.phase, "job": job}
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
    return entry


def _blocked_status(
    old: Mapping[str, Any], spec_uri: str, node_count: int, *, reason: str, message: str,
    now: datetime.datetime, generation: int | None, keep_nodes: bool,
) -> dict[str, Any]:
    conditions = list(old.get("conditions") or [])
    conditions = set_condition(conditions, type=READY, status=FALSE, reason=reason, message=message,
                               now=now, generation=generation)
    conditions = set_condition(conditions, type=PROGRESSING, status=FALSE, reason=REASON_BLOCKED, message=message,
                               now=now, generation=generation)
    conditions = set_condition(conditions, type=DEGRADED, status=TRUE, reason=reason, message=message,
                               now=now, generation=generation)
    nodes = list(old.get("nodes") or []) if keep_nodes else []
    invalid = reason in (REASON_INVALID_SPEC, REASON_UNSUPPORTED_URI, REASON_MULTIPLE_URIS)
    return {
        "phase": FAILED if invalid else PENDING,
        "desiredNodes": node_count,
        "warmNodes": sum(1 for n in nodes if n.get("phase") == WARM),
        "qualifyingNodes": None,
        "storageUri": spec_uri,
        "modelVersion": old.get("modelVersion") if keep_nodes else None,
        "nodes": nodes,
        "conditions": conditions,
        "observedGeneration": generation,
    }


def _transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventPlan]:
    events: list[EventPlan] = []
    old_ready = find_condition(list(old.get("conditions") or []), READY) or {}
    new_ready = find_condition(list(new.get("conditions") or []), READY) or {}
    blocking = (REASON_INVALID_SPEC, REASON_UNSUPPORTED_URI, REASON_MULTIPLE_URIS, REASON_NO_ACCOUNT,
                REASON_NO_SECRET, REASON_NO_NODES)
    if new_ready.get("reason") in blocking and (
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
            events.append(EventPlan(WARNING, EVENT_NODE_FAILED,
                                    f"node {node['name']}: {node.get('reason', '')}: {node.get('message', '')}"))
    return events


def plan_prewarm(
    observed: Observed, *, image: str, now: datetime.datetime, key_names: S3KeyNames = DEFAULT_KEY_NAMES,
    s3_defaults: Mapping[str, str] | None = None,
) -> PrewarmPlan:
    body = observed.prewarm
    meta = ObjectMeta.parse(body.get("metadata"))
    old: Mapping[str, Any] = body.get("status") or {}
    generation = meta.generation
    raw_spec = body.get("spec") or {}
    uri = str(raw_spec.get("storageUri") or "")
    raw_count = raw_spec.get("nodeCount")
    count = raw_count if isinstance(raw_count, int) and not isinstance(raw_count, bool) else 1
    all_jobs = tuple(str((j.get("metadata") or {}).get("name")) for j in observed.jobs
                     if not (j.get("metadata") or {}).get("deletionTimestamp"))

    def blocked(reason: str, message: str, outcome: str, *, keep: bool) -> PrewarmPlan:
        status = _blocked_status(old, uri, int(count), reason=reason, message=message, now=now,
                                 generation=generation, keep_nodes=keep)
        return PrewarmPlan((), () if keep else all_jobs, status, tuple(_transition_events(old, status)), outcome)

    unsupported = meta.annotations.get(ANNOTATION_UNSUPPORTED)
    if unsupported:
        return blocked(REASON_MULTIPLE_URIS, unsupported, INVALID, keep=False)
    try:
        spec = parse_spec(raw_spec)
    except InvalidSpec as exc:
        return blocked(REASON_INVALID_SPEC, str(exc), INVALID, keep=False)
    problem = storage_uri_problem(spec.storage_uri)
    if problem is not None:
        return blocked(REASON_UNSUPPORTED_URI, problem, INVALID, keep=False)

    account = spec.service_account_name or DEFAULT_SERVICE_ACCOUNT
    credentials = derive_credentials(
        account_name=account, account_named=spec.service_account_name is not None,
        service_account=observed.service_account, secrets=observed.secrets, key_names=key_names,
        defaults=s3_defaults,
    )
    if credentials.missing_kind is not None:
        reason = REASON_NO_ACCOUNT if credentials.missing_kind == "ServiceAccount" else REASON_NO_SECRET
        where = f"of service account {account} " if credentials.missing_kind == "Secret" else ""
        return blocked(reason, f"{credentials.missing_kind} {credentials.missing_name} {where}not found in "
                       f"namespace {meta.namespace}", WAITING, keep=True)

    template = JobTemplate(namespace=str(meta.namespace), prewarm=meta.name,
                           owner=meta.controller_reference_for(MODEL_PREWARM), spec=spec, image=image,
                           env=credentials.env)
    return _plan_jobs(observed, spec, template, meta, old, now)


def _records(observed: Observed, template: JobTemplate, spec_hash: str, old: Mapping[str, Any]) -> list[_Record]:
    """This spec's Jobs, observed or (once their TTL removed them) remembered in status."""
    prewarm = template.prewarm
    records: list[_Record] = []
    seen: set[str] = set()
    for job in observed.jobs:
        job_meta = job.get("metadata") or {}
        name = str(job_meta.get("name"))
        node = str((job_meta.get("annotations") or {}).get(ANNOTATION_NODE, ""))
        target = str((job_meta.get("annotations") or {}).get(ANNOTATION_TARGET_VERSION, ""))
        if job_meta.get("deletionTimestamp") or (job_meta.get("labels") or {}).get(LABEL_SPEC_HASH) != spec_hash:
            continue
        if not node or job_name(prewarm, node, spec_hash, target) != name:
            continue
        records.append(_Record(node, name, target, node_progress(job, observed.pods.get(name, ()))))
        seen.add(name)
    versions = {""} | {str(n.get("version")) for n in old.get("nodes") or [] if n.get("version")}
    for entry in old.get("nodes") or []:
        node, remembered = str(entry.get("name", "")), str(entry.get("job", ""))
        if remembered in seen or entry.get("phase") not in (WARM, FAILED):
            continue  # only a finished Job's outcome outlives the Job
        found = next((v for v in versions if job_name(prewarm, node, spec_hash, v) == remembered), None)
        if found is None:
            continue  # a former spec's Job
        progress = NodeProgress(str(entry["phase"]), result={"version": entry.get("version", "")},
                                finished_at=str(entry.get("finishedAt", "")))
        records.append(_Record(node, remembered, found, progress, entry=entry))
    return records


def _plan_jobs(
    observed: Observed, spec: PrewarmSpec, template: JobTemplate, meta: ObjectMeta, old: Mapping[str, Any],
    now: datetime.datetime,
) -> PrewarmPlan:
    spec_hash = template.spec_hash()
    records = _records(observed, template, spec_hash, old)
    finished = sorted((r for r in records if r.progress.phase == WARM and r.progress.version), key=_finished_sort_key)
    version = finished[-1].progress.version if finished else (
        str(old.get("modelVersion") or "") if old.get("storageUri") == spec.storage_uri else "")
    warm_before = {str(n.get("name")) for n in old.get("nodes") or []
                   if n.get("phase") == WARM and version and n.get("version") == version
                   and old.get("storageUri") == spec.storage_uri}
    warm_now = {r.node for r in records if r.progress.phase == WARM and r.progress.version in ("", version)}
    qualification = qualify(observed.nodes, spec)
    chosen = choose_nodes(qualification.qualifying, spec.node_count, current={r.node for r in records},
                          warm=warm_now | warm_before)

    creates: list[dict[str, Any]] = []
    created_on: list[str] = []
    entries: list[dict[str, Any]] = []
    keep: set[str] = set()
    for node in chosen:
        mine = [r for r in records if r.node == node.name]
        stale = any(r.progress.phase == WARM and r.progress.version not in ("", version) for r in mine)
        targets = {r.target for r in mine}
        target = version if stale or (version and version in targets) else ("" if "" in targets or not targets
                                                                             else max(targets))
        name = job_name(template.prewarm, node.name, spec_hash, target)
        keep.add(name)
        record = next((r for r in mine if r.job == name), None)
        if record is None:
            job_template = dataclasses.replace(template, target_version=target)
            creates.append(build_job(job_template, node=node.name, hostname=node.hostname))
            created_on.append(node.name)
            entries.append(_entry(node.name, name, NodeProgress(PENDING)))
        elif record.entry is not None:
            entries.append(dict(record.entry))
        else:
            entries.append(_entry(node.name, name, record.progress))
    live = {str((j.get("metadata") or {}).get("name")): j for j in observed.jobs
            if not (j.get("metadata") or {}).get("deletionTimestamp")}
    deletes = tuple(sorted(name for name in live if name not in keep))
    status = _status(spec, meta, old, entries, version, len(qualification.qualifying), qualification.summary(), now)
    events = _transition_events(old, status)
    if creates:
        events.insert(0, EventPlan(NORMAL, EVENT_JOBS_CREATED,
                                   f"preloading {spec.storage_uri} on {', '.join(created_on)}"))
    if deletes:
        events.append(EventPlan(NORMAL, EVENT_JOBS_DELETED,
                                f"removed {len(deletes)} stale Job(s): {', '.join(deletes)}"))
    outcome = WAITING if status["phase"] in (PENDING, WARMING) else OK
    return PrewarmPlan(tuple(creates), deletes, status, tuple(events), outcome)


def _status(
    spec: PrewarmSpec, meta: ObjectMeta, old: Mapping[str, Any], entries: list[dict[str, Any]], version: str,
    qualifying: int, why_not: str, now: datetime.datetime,
) -> dict[str, Any]:
    generation = meta.generation
    phases = [e["phase"] for e in entries]
    warm = phases.count(WARM)
    failed = [e for e in entries if e["phase"] == FAILED]
    if not entries:
        phase = PENDING
    elif warm == len(entries):
        phase = WARM
    elif all(p in (WARM, FAILED) for p in phases):
        phase = FAILED
    elif all(p == PENDING for p in phases):
        phase = PENDING
    else:
        phase = WARMING
    conditions = list(old.get("conditions") or [])

    def put(type: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type=type, status=status, reason=reason, message=message,
                                   now=now, generation=generation)

    if not entries:
        message = f"no node qualifies for {spec.storage_uri}: {why_not}"
        put(READY, FALSE, REASON_NO_NODES, message)
        put(PROGRESSING, FALSE, REASON_BLOCKED, message)
    elif phase == WARM:
        put(READY, TRUE, REASON_WARM, f"{spec.storage_uri} is warm on {warm} node(s)")
        put(PROGRESSING, FALSE, REASON_SETTLED, "every chosen node is warm")
    elif phase == FAILED:
        message = "; ".join(f"{e['name']}: {e.get('reason', '')}: {e.get('message', '')}" for e in failed)
        put(READY, FALSE, REASON_FAILED, message)
        put(PROGRESSING, FALSE, REASON_SETTLED, "every Job finished")
    else:
        put(READY, FALSE, REASON_WARMING, f"{warm} of {len(entries)} node(s) warm")
        put(PROGRESSING, TRUE, REASON_JOBS_RUNNING, f"{len(entries) - warm} preloader Job(s) to finish")
    if failed:
        put(DEGRADED, TRUE, REASON_NODES_FAILED, f"{len(failed)} of {len(entries)} node(s) failed")
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
        "qualifyingNodes": qualifying,
        "storageUri": spec.storage_uri,
        "nodes": sorted(entries, key=lambda e: str(e["name"])),
        "conditions": conditions,
        "observedGeneration": generation,
    }
    status["modelVersion"] = version or None  # None: a merge patch removes a former version
    return status
