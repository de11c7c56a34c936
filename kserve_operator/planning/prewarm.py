"""Plan one ModelPrewarm: which nodes, which Jobs to create or delete, the status and the events.

Pure: the controller observes (the ModelPrewarm, Nodes, its Jobs and their Pods in the platform's
namespace, the service account and its Secrets, the predictor's Pods) and applies the plan.
Decisions made here:

- bad input (a non-S3 URI, several storageUris, a missing service account, Secret or key) creates
  no Job and says why in `Ready`; no qualifying node leaves it `Pending` with the reasons counted;
- `nodeCount` nodes are chosen: nodes where the predictor runs first, then the ones already warm
  for this model version (so warming follows serving, and serving, steered by the placement
  webhook, lands where warming is);
- each chosen node gets one Job whose name follows from the spec (see prewarm_jobs); Jobs of a
  former spec, of a node no longer chosen, or superseded by a re-warm or a retry are deleted;
- when one node reports a newer model version (its Job saw new ETags), the nodes holding an
  older one are warmed again with a Job targeting that version;
- a node whose Job gave up is retried with exponential backoff (jittered, capped by the
  platform), at once when the retry annotation takes a new value;
- a Job removed by its TTL leaves its outcome in `status.nodes`, which counts as done;
- the tenant's S3 credentials are copied into one Secret beside the Jobs only while a Job may
  still need them.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.events import NORMAL, EventPlan
from kserve_operator.planning.node_selection import NodeView, choose_nodes, qualify
from kserve_operator.planning.prewarm_jobs import JobTemplate, NodeProgress, build_job, job_name, node_progress
from kserve_operator.planning.prewarm_status import blocked_status, node_entry, plan_status, transition_events
from kserve_operator.planning.s3_credentials import (
    DEFAULT_KEY_NAMES,
    S3KeyNames,
    derive_credentials,
    relocate_credentials,
)
from kserve_operator.planning.warm_capacity import CapacityDemand
from kserve_operator.resources.conditions import parse_rfc3339, rfc3339
from kserve_operator.resources.inferenceservice import ANNOTATION_UNSUPPORTED, LABEL_SOURCE
from kserve_operator.resources.meta import ObjectMeta
from kserve_operator.resources.prewarm import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_NODE,
    ANNOTATION_TARGET_VERSION,
    DEFAULT_SERVICE_ACCOUNT,
    LABEL_SPEC_HASH,
    RETRY_ANNOTATION,
    PrewarmPlatform,
    PrewarmSpec,
    parse_spec,
)
from kserve_operator.resources.prewarm_conditions import PrewarmPhase, PrewarmReason

OK = "ok"
INVALID = "invalid"
WAITING = "waiting"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclasses.dataclass(frozen=True)
class Observed:
    """The world as the controller read it for one ModelPrewarm."""

    prewarm: Mapping[str, Any]
    nodes: Sequence[NodeView]
    jobs: Sequence[Mapping[str, Any]]  # Jobs labelled with this ModelPrewarm's uid
    pods: Mapping[str, Sequence[Mapping[str, Any]]]  # Job name -> its Pods
    service_account: Mapping[str, Any] | None
    secrets: Mapping[str, Mapping[str, Any] | None]  # every Secret the account lists
    serving_pods: Sequence[Mapping[str, Any]] = ()  # the predictor's Pods, for a derived ModelPrewarm
    nodes_excluded: Mapping[str, int] = dataclasses.field(default_factory=dict)  # why not -> Nodes not read
    demands: Sequence[CapacityDemand] = ()  # canaries asking for more warm nodes, largest first


@dataclasses.dataclass(frozen=True)
class CredentialCopy:
    """The Secret beside the Jobs holding the tenant's S3 values (owned by the Jobs that use it)."""

    name: str
    data: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class PrewarmPlan:
    create: tuple[dict[str, Any], ...]
    delete: tuple[str, ...]
    status: dict[str, Any]
    events: tuple[EventPlan, ...]
    outcome: str  # OK | INVALID | WAITING
    credentials: CredentialCopy | None = None  # wanted now (create or bring up to date)
    drop_credentials: bool = False  # no Job needs them any more: delete the copy


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


def credentials_name(prewarm: str, uid: str) -> str:
    """`<prewarm>-<hash of the uid>-s3`: unique in the shared namespace, at most 63 characters."""
    digest = hashlib.sha256(uid.encode()).hexdigest()[:10]
    readable = _NOT_DNS.sub("-", prewarm.lower()).strip("-")[:40].rstrip("-")
    return f"{readable}-{digest}-s3" if readable else f"p-{digest}-s3"


@dataclasses.dataclass(frozen=True)
class _Record:
    """One node's Job, observed or remembered from status."""

    node: str
    job: str
    target: str
    attempt: int
    progress: NodeProgress
    entry: Mapping[str, Any] | None = None  # the status entry, when the Job itself is gone


def plan_prewarm(
    observed: Observed, *, platform: PrewarmPlatform, now: datetime.datetime,
    key_names: S3KeyNames = DEFAULT_KEY_NAMES, s3_defaults: Mapping[str, str] | None = None,
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
        status = blocked_status(old, uri, int(count), reason=reason, message=message, now=now,
                                generation=generation, keep_nodes=keep)
        return PrewarmPlan((), () if keep else all_jobs, status, tuple(transition_events(old, status)), outcome,
                           drop_credentials=not keep)

    unsupported = meta.annotations.get(ANNOTATION_UNSUPPORTED)
    if unsupported:
        return blocked(PrewarmReason.MULTIPLE_URIS, unsupported, INVALID, keep=False)
    try:
        spec = parse_spec(raw_spec)
    except InvalidSpec as exc:
        return blocked(PrewarmReason.INVALID_SPEC, str(exc), INVALID, keep=False)
    problem = storage_uri_problem(spec.storage_uri)
    if problem is not None:
        return blocked(PrewarmReason.UNSUPPORTED_URI, problem, INVALID, keep=False)
    # A canary stepping its candidate up needs more warm nodes than nodeCount: keep that many.
    demand = observed.demands[0] if observed.demands else None
    raised = demand if demand is not None and demand.nodes > spec.node_count else None
    if raised is not None:
        spec = dataclasses.replace(spec, node_count=raised.nodes)

    account = spec.service_account_name or DEFAULT_SERVICE_ACCOUNT
    credentials = derive_credentials(
        account_name=account, account_named=spec.service_account_name is not None,
        service_account=observed.service_account, secrets=observed.secrets, key_names=key_names,
        defaults=s3_defaults,
    )
    if credentials.missing_kind is not None:
        reason = PrewarmReason.NO_ACCOUNT if credentials.missing_kind == "ServiceAccount" else PrewarmReason.NO_SECRET
        where = f"of service account {account} " if credentials.missing_kind == "Secret" else ""
        return blocked(reason, f"{credentials.missing_kind} {credentials.missing_name} {where}not found in "
                       f"namespace {meta.namespace}", WAITING, keep=True)
    copy_name = credentials_name(meta.name, meta.uid or "")
    relocated = relocate_credentials(credentials.env, observed.secrets, copy_name)
    if relocated.missing is not None:
        return blocked(PrewarmReason.NO_SECRET_KEY, f"{relocated.missing} not found in namespace {meta.namespace}",
                       WAITING, keep=True)
    template = JobTemplate(owner_namespace=str(meta.namespace), prewarm=meta.name, owner_uid=meta.uid or "",
                           spec=spec, platform=platform, env=relocated.env)
    copy = CredentialCopy(copy_name, relocated.data) if relocated.data else None
    planned = _plan_jobs(observed, spec, template, meta, old, now, copy)
    planned.status["capacityDemand"] = {"nodes": raised.nodes, "from": raised.source} if raised else None
    return planned


def _records(observed: Observed, template: JobTemplate, spec_hash: str, old: Mapping[str, Any]) -> list[_Record]:
    """This spec's Jobs, observed or (once their TTL removed them) remembered in status."""
    prewarm = template.prewarm
    records: list[_Record] = []
    seen: set[str] = set()
    for job in observed.jobs:
        job_meta = job.get("metadata") or {}
        annotations = job_meta.get("annotations") or {}
        name = str(job_meta.get("name"))
        node = str(annotations.get(ANNOTATION_NODE, ""))
        target = str(annotations.get(ANNOTATION_TARGET_VERSION, ""))
        attempt_text = str(annotations.get(ANNOTATION_ATTEMPT, "0"))
        attempt = int(attempt_text) if attempt_text.isdigit() else 0
        if job_meta.get("deletionTimestamp") or (job_meta.get("labels") or {}).get(LABEL_SPEC_HASH) != spec_hash:
            continue
        if not node or job_name(prewarm, node, spec_hash, target, attempt) != name:
            continue
        records.append(_Record(node, name, target, attempt, node_progress(job, observed.pods.get(name, ()))))
        seen.add(name)
    versions = {""} | {str(n.get("version")) for n in old.get("nodes") or [] if n.get("version")}
    for entry in old.get("nodes") or []:
        node, remembered = str(entry.get("name", "")), str(entry.get("job", ""))
        if remembered in seen or entry.get("phase") not in (PrewarmPhase.WARM, PrewarmPhase.FAILED):
            continue  # only a finished Job's outcome outlives the Job
        tries = entry.get("attempts")
        attempt = tries - 1 if isinstance(tries, int) and tries > 0 else 0
        found = next((v for v in versions if job_name(prewarm, node, spec_hash, v, attempt) == remembered), None)
        if found is None:
            continue  # a former spec's Job
        progress = NodeProgress(str(entry["phase"]), result={"version": entry.get("version", "")},
                                reason=str(entry.get("reason", "")), message=str(entry.get("message", "")),
                                finished_at=str(entry.get("finishedAt", "")))
        records.append(_Record(node, remembered, found, attempt, progress, entry=entry))
    return records


def _retry_at(record: _Record, old_nodes: Sequence[Mapping[str, Any]], uid: str, platform: PrewarmPlatform,
              now: datetime.datetime) -> datetime.datetime:
    """When a failed node's next attempt is due: backoff from when its Job failed, with a jitter
    seeded by the node and attempt, so every reconcile computes the same moment."""
    delay = backoff_delay(record.attempt, base=platform.retry_base_seconds, cap=platform.retry_max_seconds,
                          rng=random.Random(f"{uid}/{record.node}/{record.attempt}"))
    if record.progress.finished_at:
        return parse_rfc3339(record.progress.finished_at) + datetime.timedelta(seconds=delay)
    remembered = next((str(n["retryAt"]) for n in old_nodes
                       if n.get("job") == record.job and n.get("retryAt")), None)
    return parse_rfc3339(remembered) if remembered else now + datetime.timedelta(seconds=delay)


def serving_nodes(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """The nodes the predictor's live Pods are bound to, one entry per Pod."""
    nodes: list[str] = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            nodes.append(str(node))
    return nodes


def _plan_jobs(
    observed: Observed, spec: PrewarmSpec, template: JobTemplate, meta: ObjectMeta, old: Mapping[str, Any],
    now: datetime.datetime, copy: CredentialCopy | None,
) -> PrewarmPlan:
    spec_hash = template.spec_hash()
    records = _records(observed, template, spec_hash, old)
    finished = sorted((r for r in records if r.progress.phase == PrewarmPhase.WARM and r.progress.version),
                      key=lambda r: (r.progress.finished_at, r.progress.version))
    version = finished[-1].progress.version if finished else (
        str(old.get("modelVersion") or "") if old.get("storageUri") == spec.storage_uri else "")
    warm_before = {str(n.get("name")) for n in old.get("nodes") or []
                   if n.get("phase") == PrewarmPhase.WARM and version and n.get("version") == version
                   and old.get("storageUri") == spec.storage_uri}
    warm_now = {r.node for r in records
                if r.progress.phase == PrewarmPhase.WARM and r.progress.version in ("", version)}
    follows = bool(meta.labels.get(LABEL_SOURCE))
    serving = serving_nodes(observed.serving_pods) if follows else []
    qualification = qualify(observed.nodes, spec, observed.nodes_excluded)
    chosen = choose_nodes(qualification.qualifying, spec.node_count, current={r.node for r in records},
                          warm=warm_now | warm_before, serving=serving)
    request = meta.annotations.get(RETRY_ANNOTATION)
    retry_now = request is not None and request != old.get("retryRequest")
    old_nodes: Sequence[Mapping[str, Any]] = old.get("nodes") or []

    creates: list[dict[str, Any]] = []
    created_on: list[str] = []
    retried: list[str] = []
    entries: list[dict[str, Any]] = []
    keep: set[str] = set()
    for node in chosen:
        mine = [r for r in records if r.node == node.name]
        stale = any(r.progress.phase == PrewarmPhase.WARM and r.progress.version not in ("", version) for r in mine)
        targets = {r.target for r in mine}
        target = version if stale or (version and version in targets) else ("" if "" in targets or not targets
                                                                             else max(targets))
        attempt = max((r.attempt for r in mine if r.target == target), default=0)
        record = next((r for r in mine if r.target == target and r.attempt == attempt), None)
        retry_at = ""
        if record is not None and record.progress.phase == PrewarmPhase.FAILED:
            due = _retry_at(record, old_nodes, template.owner_uid, template.platform, now)
            if retry_now or now >= due:
                attempt, record = attempt + 1, None
                retried.append(node.name)
            else:
                retry_at = rfc3339(due)
        name = job_name(template.prewarm, node.name, spec_hash, target, attempt)
        keep.add(name)
        if record is None:
            job_template = dataclasses.replace(template, target_version=target, attempt=attempt)
            creates.append(build_job(job_template, node=node.name, hostname=node.hostname))
            created_on.append(node.name)
            entries.append(node_entry(node.name, node.hostname, name, NodeProgress(PrewarmPhase.PENDING),
                                      attempts=attempt + 1 if attempt else 0))
        else:
            entries.append(node_entry(node.name, node.hostname, name, record.progress,
                                      attempts=attempt + 1
                                      if attempt or record.progress.phase == PrewarmPhase.FAILED else 0,
                                      retry_at=retry_at) if record.entry is None or retry_at
                           else dict(record.entry))
    if any(e["phase"] != PrewarmPhase.WARM for e in entries):
        # Make before break: a warm node left for one where the predictor serves stays warm (its
        # Job and entry kept) until every chosen node is, so the placement webhook always has
        # somewhere to send new Pods.
        chosen_names = {node.name for node in chosen}
        still_qualifying = {node.name: node for node in qualification.qualifying}
        for record in records:
            if record.node not in chosen_names and record.node in still_qualifying \
                    and record.progress.phase == PrewarmPhase.WARM \
                    and record.progress.version in ("", version) and record.job not in keep:
                keep.add(record.job)
                entries.append(dict(record.entry) if record.entry is not None else node_entry(
                    record.node, still_qualifying[record.node].hostname, record.job, record.progress,
                    attempts=record.attempt + 1 if record.attempt else 0))
                chosen_names.add(record.node)
    live = {str((j.get("metadata") or {}).get("name")): j for j in observed.jobs
            if not (j.get("metadata") or {}).get("deletionTimestamp")}
    deletes = tuple(sorted(name for name in live if name not in keep))
    warm_names = {e["name"] for e in entries if e["phase"] == PrewarmPhase.WARM}
    on_warm = sum(1 for n in serving if n in warm_names)
    status = plan_status(spec, meta.generation, old, entries, version, len(qualification.qualifying),
                         qualification.summary(), now, serving=(on_warm, len(serving)) if follows else None)
    if request is not None:
        status["retryRequest"] = request
    events = transition_events(old, status)
    if retried:
        events.insert(0, EventPlan(NORMAL, PrewarmReason.RETRIED, f"retrying {', '.join(retried)}"
                                   + (f" ({RETRY_ANNOTATION}={request})" if retry_now else " after backoff")))
    if creates:
        events.insert(0, EventPlan(NORMAL, PrewarmReason.JOBS_CREATED,
                                   f"preloading {spec.storage_uri} on {', '.join(created_on)}"))
    if deletes:
        events.append(EventPlan(NORMAL, PrewarmReason.JOBS_DELETED,
                                f"removed {len(deletes)} stale Job(s): {', '.join(deletes)}"))
    unfinished = bool(creates) or any(e["phase"] in (PrewarmPhase.PENDING, PrewarmPhase.WARMING) for e in entries)
    unsettled = status["phase"] in (PrewarmPhase.PENDING, PrewarmPhase.WARMING) or status.get("nextRetryAt")
    outcome = WAITING if unsettled else OK
    return PrewarmPlan(tuple(creates), deletes, status, tuple(events), outcome,
                       credentials=copy if unfinished else None, drop_credentials=not unfinished)
