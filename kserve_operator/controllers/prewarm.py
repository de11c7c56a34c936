"""The ModelPrewarm controller: one preloader Job per chosen node, status from their Pods.

Every trigger (create/resume/change of a ModelPrewarm, the periodic resync, an event of one of its
Jobs or their Pods, a Node whose labels, taints, schedulability or allocatable changed) runs the
same level-based `reconcile`: read the ModelPrewarm, the Nodes, its Jobs and their Pods, the
service account and its Secrets; ask `planning.prewarm` what should be; create the missing
Jobs, delete the stale ones, write the status keys that changed, post the planned Events (on
the ModelPrewarm and, for a derived one, on its InferenceService). A settled ModelPrewarm
reads and writes nothing back.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import Informer, InformerEvent, Subscriber, label_index, label_index_name
from kserve_operator.clients.kube import KubeApi
from kserve_operator.controllers.core import (
    Outcome,
    ReconcileCore,
    ReconcileResult,
    Resync,
    cleanup_within,
    now,
    post_events,
    remember,
    spawn,
    write_status,
)
from kserve_operator.controllers.prewarm_capacity import affected_prewarms, read_demands
from kserve_operator.controllers.prewarm_credentials import apply_credentials, read_credentials
from kserve_operator.controllers.prewarm_nodes import candidate_nodes, node_fingerprint
from kserve_operator.errors import ApiError
from kserve_operator.planning import prewarm as plan
from kserve_operator.planning.node_interest import NodeInterest, is_short, nodes_in_status
from kserve_operator.planning.node_selection import EXTENDED_RESOURCE_INDEX, offered_extended_resources
from kserve_operator.planning.warm_capacity import BY_CANDIDATE_PREWARM, candidate_prewarm_keys
from kserve_operator.resources.inferenceservice import LABEL_SOURCE
from kserve_operator.resources.kinds import (
    INFERENCE_SERVICE,
    JOB,
    MODEL_CANARY,
    MODEL_PREWARM,
    NODE,
    POD,
    SECRET,
    SERVICE_ACCOUNT,
)
from kserve_operator.resources.prewarm import (
    LABEL_COMPONENT,
    LABEL_ISVC,
    LABEL_JOB_NAME,
    LABEL_PREWARM,
    LABEL_PREWARM_NAMESPACE,
    LABEL_PREWARM_UID,
    PREDICTOR,
    PrewarmPlatform,
    PrewarmStatus,
)
from kserve_operator.settings import FINALIZER, OperatorSettings

CONTROLLER = "modelprewarm"
LOGGER = logging.getLogger(__name__)
PREDICTOR_SELECTOR = f"{LABEL_ISVC},{LABEL_COMPONENT}={PREDICTOR}"
OUTCOMES = {plan.OK: Outcome.OK, plan.INVALID: Outcome.INVALID, plan.WAITING: Outcome.WAITING}


@dataclasses.dataclass
class PrewarmContext:
    """What the handlers share (kopf's memo): settings, the core, and what Nodes looked like."""

    settings: OperatorSettings
    core: ReconcileCore
    known: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # ModelPrewarms reconciled
    node_fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    nodes: Informer | None = None  # every Node, indexed by the extended resources it offers
    node_interest: NodeInterest = dataclasses.field(default_factory=NodeInterest)
    canaries: list[Informer] = dataclasses.field(default_factory=list)  # indexed by the ModelPrewarm they name
    objects: list[Informer] = dataclasses.field(default_factory=list)  # the ModelPrewarms (watch_children)
    demands_seen: dict[tuple[str, str], tuple[str | None, int]] = dataclasses.field(default_factory=dict)
    # The resourceVersion each Job and Pod of ours was last seen at: a re-listing (after a watch
    # expired) reports every object again as "initial"; those that changed in the gap still count.
    child_versions: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict)
    # The tenant's service account and Secrets as last read, per ModelPrewarm uid: (generation,
    # account, secrets, whether that plan was at rest). Secrets are never watched (that would need
    # list/watch on Secrets in every namespace); a reconcile at rest plans with these and reads fresh
    # only when the plan acts on them; one that was not at rest reads fresh at once (one plan).
    credentials: dict[str, tuple[int | None, Mapping[str, Any] | None, dict[str, Mapping[str, Any] | None], bool]] \
        = dataclasses.field(default_factory=dict)

    @property
    def api(self) -> KubeApi:
        return self.core.api


async def observe(api: KubeApi, body: Mapping[str, Any], platform: PrewarmPlatform,
                  credentials: tuple[Mapping[str, Any] | None, dict[str, Mapping[str, Any] | None]] | None = None,
                  node_informer: Informer | None = None) -> plan.Observed:
    """Everything the plan needs (from the informers' caches, through `api`): reconciles are level-based.
    `credentials`: the account and Secrets as last read, or None to read them now."""
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta.get("uid", "")
    nodes, excluded = await candidate_nodes(api, node_informer, body)
    jobs = await api.list(JOB, platform.namespace, label_selector=f"{LABEL_PREWARM_UID}={uid}")
    pods: dict[str, list[dict[str, Any]]] = {}
    names = sorted(str(j["metadata"]["name"]) for j in jobs)
    if names:
        selector = f"{LABEL_PREWARM_UID}={uid},{LABEL_JOB_NAME} in ({','.join(names)})"
        for pod in await api.list(POD, platform.namespace, label_selector=selector):
            job = str(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB_NAME, ""))
            pods.setdefault(job, []).append(pod)
    account, secrets = credentials if credentials is not None else await read_credentials(api, body)
    serving: list[dict[str, Any]] = []
    source = (meta.get("labels") or {}).get(LABEL_SOURCE)
    if source:
        serving = await api.list(POD, namespace, label_selector=f"{LABEL_ISVC}={source},{LABEL_COMPONENT}={PREDICTOR}")
    return plan.Observed(prewarm=body, nodes=nodes, jobs=jobs, pods=pods, service_account=account, secrets=secrets,
                         serving_pods=serving, nodes_excluded=excluded)


async def delete_jobs(api: KubeApi, platform: PrewarmPlatform, selector: str, copy: str | None = None) -> int:
    """Delete a ModelPrewarm's Jobs (their Pods follow through owner references) and its copy of
    the S3 credentials."""
    jobs = await api.list(JOB, platform.namespace, label_selector=selector)
    for job in jobs:
        await api.delete(JOB, job["metadata"]["name"], namespace=platform.namespace, propagation="Background")
    if copy is not None:
        await api.delete(SECRET, copy, namespace=platform.namespace)
    return len(jobs)


def _owning_service(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The InferenceService a derived ModelPrewarm belongs to, as an Event's involved object."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == INFERENCE_SERVICE.kind \
                and ref.get("apiVersion") == INFERENCE_SERVICE.api_version:
            return {"apiVersion": ref["apiVersion"], "kind": ref["kind"],
                    "metadata": {"name": ref.get("name"), "namespace": meta.get("namespace"), "uid": ref.get("uid")}}
    return None


async def reconcile(ctx: PrewarmContext, namespace: str, name: str,
                    logger: logging.Logger | Any) -> ReconcileResult:
    """Observe -> plan -> apply. Raises ApiError for the core to classify."""
    api, platform = ctx.api, ctx.settings.prewarm_platform
    body = await api.get(MODEL_PREWARM, name, namespace)
    if body is None:
        ctx.known.discard((namespace, name))
        ctx.node_interest.forget((namespace, name))
        # Gone without its finalizer (removed by hand): its Jobs in the platform's namespace are orphans.
        await delete_jobs(api, platform, f"{LABEL_PREWARM_NAMESPACE}={namespace},{LABEL_PREWARM}={name}")
        return ReconcileResult(Outcome.GONE)
    if body["metadata"].get("deletionTimestamp"):
        return ReconcileResult(Outcome.GONE)  # the finalizer's handler cleans up
    ctx.known.add((namespace, name))
    uid, generation = str(body["metadata"].get("uid", "")), body["metadata"].get("generation")
    memo = ctx.credentials.get(uid)
    remembered = (memo[1], memo[2]) if memo is not None and memo[0] == generation and memo[3] else None
    observed = await observe(api, body, platform, remembered, ctx.nodes)
    observed = dataclasses.replace(observed, demands=read_demands(ctx.canaries, namespace, name))
    moment = now()
    decided = plan.plan_prewarm(observed, platform=platform, now=moment)
    acts = bool(decided.create) or decided.credentials is not None or decided.outcome == plan.WAITING
    if remembered is not None and acts:  # the plan acts on the credentials (or waits for them): read fresh
        account, secrets = await read_credentials(api, body)
        observed = dataclasses.replace(observed, service_account=account, secrets=secrets)
        decided = plan.plan_prewarm(observed, platform=platform, now=moment)
        acts = bool(decided.create) or decided.credentials is not None or decided.outcome == plan.WAITING
    ctx.credentials[uid] = (generation, observed.service_account, dict(observed.secrets), not acts)
    creates = decided.create
    if creates and FINALIZER not in (body["metadata"].get("finalizers") or []):
        # Jobs outside the namespace are cleaned up by the finalizer only: none before it is on.
        logger.info("ModelPrewarm %s/%s: waiting for the finalizer before creating Jobs", namespace, name)
        return ReconcileResult(Outcome.WAITING)
    live = [j for j in observed.jobs if j["metadata"]["name"] not in decided.delete
            and not j["metadata"].get("deletionTimestamp")]
    copy_name = plan.credentials_name(name, uid)
    # Listed by our label (the informer of the pre-warm namespace's copies answers, also when there is none).
    copy = next((s for s in await api.list(SECRET, platform.namespace, label_selector=f"{LABEL_PREWARM_UID}={uid}")
                 if s["metadata"]["name"] == copy_name), None)
    if creates:
        copy = await apply_credentials(api, decided, body, live, platform, copy)
    for job in creates:
        try:
            live.append(await api.create(JOB, job))
        except ApiError as exc:
            if not exc.conflict:
                raise
            # 409 AlreadyExists: created by a reconcile that died before it could record it; the
            # next reconcile lists it (and makes it an owner of the credential copy).
        logger.info("ModelPrewarm %s/%s: created Job %s/%s", namespace, name, platform.namespace,
                    job["metadata"]["name"])
    await apply_credentials(api, decided, body, live, platform, copy)
    for job_name in decided.delete:
        await api.delete(JOB, job_name, namespace=platform.namespace, propagation="Background")
        logger.info("ModelPrewarm %s/%s: deleted stale Job %s", namespace, name, job_name)
    status = PrewarmStatus.parse(body.get("status")).with_changes(decided.status)
    await write_status(api, MODEL_PREWARM, body, status.patch_from(body.get("status")))
    ctx.node_interest.record((namespace, name), nodes_in_status(decided.status),
                             short=is_short(decided.status, body.get("spec")))
    if decided.events:
        await post_events(api, body, decided.events)
        service = _owning_service(body)
        if service is not None:
            await post_events(api, service, decided.events)
    # A failed node's retry is due at status.nextRetryAt: looked at again then, not at the next resync.
    return ReconcileResult(OUTCOMES[decided.outcome], requeue_after=status.retry_in(moment))


async def prewarm_deleted(body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger,
                          runtime: datetime.timedelta, **_: Any) -> None:
    """The finalizer's cleanup: the Jobs live in another namespace, out of the garbage
    collector's reach from here (owner references cannot cross namespaces)."""
    assert namespace is not None
    ctx: PrewarmContext = memo.prewarm
    # Its deletionTimestamp, in the cache before any reconcile a child's event starts reads it there.
    remember(ctx.api, MODEL_PREWARM, body)
    platform = ctx.settings.prewarm_platform
    uid = str((body.get("metadata") or {}).get("uid", ""))
    deleted = await cleanup_within(f"deleting the preloader Jobs of {namespace}/{name}",
                                   lambda: delete_jobs(ctx.api, platform, f"{LABEL_PREWARM_UID}={uid}",
                                                       plan.credentials_name(name, uid)),
                                   runtime=runtime, give_up_after=ctx.settings.finalizer_timeout_seconds,
                                   logger=logger)
    ctx.known.discard((namespace, name))
    ctx.node_interest.forget((namespace, name))
    ctx.core.forget((namespace, name))
    ctx.credentials.pop(uid, None)
    if deleted:
        logger.info("ModelPrewarm %s/%s: deleted %d preloader Job(s) in %s", namespace, name, deleted,
                    platform.namespace)


async def _run(memo: Any, namespace: str, name: str, logger: Any, retry: int, *,
               raise_permanent: bool = False, from_child: bool = False) -> Outcome:
    ctx: PrewarmContext = memo.prewarm
    return await ctx.core.run(namespace, name, lambda: reconcile(ctx, namespace, name, logger),
                              retry=retry, raise_permanent=raise_permanent, from_child=from_child)


async def prewarm_changed(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, retry: int,
                          body: kopf.Body | None = None, **_: Any) -> None:
    """Create, resume and changes of the spec or annotations: reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    if body is not None:
        remember(memo.prewarm.api, MODEL_PREWARM, body)
    await _run(memo, namespace, name, logger, retry, raise_permanent=True)


async def prewarm_resync(namespace: str, name: str, memo: Any) -> None:
    """The periodic re-check: a Secret created later, a missed event. An event's pass: skipped while
    the object backs off; failures are retried by the core."""
    await _run(memo, namespace, name, LOGGER, 0, from_child=True)


def resync(memo: Any) -> Resync:
    """Every ModelPrewarm the informer holds, once per resync interval (core.Resync)."""
    return Resync(memo.prewarm.objects, lambda namespace, name: spawn(
        prewarm_resync(namespace, name, memo), f"prewarm resync {namespace}/{name}"))


async def job_or_pod_changed(body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any,
                             **_: Any) -> None:
    """A Job of ours or one of its Pods changed: reconcile the ModelPrewarm its labels name.

    A listing (`type is None`: at start-up, or after a watch expired) reconciles only for objects
    that changed since last seen, and for ModelPrewarms not reconciled yet only to find orphans
    (the others' own first reconcile reads everything fresh anyway)."""
    ctx: PrewarmContext = memo.prewarm
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    owner, namespace = labels.get(LABEL_PREWARM), labels.get(LABEL_PREWARM_NAMESPACE)
    if not owner or not namespace or meta.get("namespace") != ctx.settings.prewarm_namespace:
        return
    key = (str(body.get("kind")), str(meta.get("namespace")), str(meta.get("name")))
    version = str(meta.get("resourceVersion") or "")
    previous = ctx.child_versions.pop(key, None) if type == "DELETED" else ctx.child_versions.get(key)
    if type != "DELETED":
        ctx.child_versions[key] = version
    if type is None and (previous == version or
                         ((str(namespace), str(owner)) not in ctx.known and body.get("kind") != JOB.kind)):
        return
    await _run(memo, str(namespace), str(owner), logger, 0, from_child=True)


async def predictor_pod_changed(body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any,
                                **_: Any) -> None:
    """A predictor Pod was bound, moved or went away: its ModelPrewarm follows where it serves."""
    ctx: PrewarmContext = memo.prewarm
    meta = body.get("metadata") or {}
    namespace, service = meta.get("namespace"), (meta.get("labels") or {}).get(LABEL_ISVC)
    if not namespace or not service or (str(namespace), str(service)) not in ctx.known:
        return
    key = ("predictor", str(namespace), str(meta.get("name")))
    gone = type == "DELETED" or meta.get("deletionTimestamp")
    placed = "" if gone else str((body.get("spec") or {}).get("nodeName") or "")
    if ctx.child_versions.get(key, "") == placed:
        return
    if placed:
        ctx.child_versions[key] = placed
    else:
        ctx.child_versions.pop(key, None)
    await _run(memo, str(namespace), str(service), logger, 0, from_child=True)


async def node_changed(body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any,
                       **_: Any) -> None:
    """A Node came, went, or changed what qualification reads: the ModelPrewarms it can affect
    (those with a Job or an entry on it, those short of Nodes) look again; the others keep theirs."""
    ctx: PrewarmContext = memo.prewarm
    name = str((body.get("metadata") or {}).get("name"))
    if type == "DELETED":
        ctx.node_fingerprints.pop(name, None)
    else:
        fingerprint = node_fingerprint(body)
        previous = ctx.node_fingerprints.get(name)
        ctx.node_fingerprints[name] = fingerprint
        # A listing (type None) at start-up sets the baseline; a re-listing after a watch expired
        # still reports a node that changed in the gap.
        if previous == fingerprint or (type is None and previous is None):
            return
    for namespace, prewarm in ctx.node_interest.affected(name):
        if (namespace, prewarm) in ctx.known:
            await _run(memo, namespace, prewarm, logger, 0, from_child=True)


async def account_changed(body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any,
                          **_: Any) -> None:
    """A tenant's ServiceAccount came, changed or went (its informer answers every read of one): the
    ModelPrewarms of its namespace look again; one waiting for it reads it now (the others plan at rest)."""
    if type is None:  # the listing: the ModelPrewarms' own listing covers them
        return
    ctx: PrewarmContext = memo.prewarm
    namespace = (body.get("metadata") or {}).get("namespace")
    for owner_namespace, prewarm in sorted(ctx.known):
        if owner_namespace == namespace:
            await _run(memo, owner_namespace, prewarm, logger, 0, from_child=True)


async def canary_demand_changed(event: InformerEvent, memo: Any) -> None:
    """A canary now asks for more (or fewer) warm nodes than the ModelPrewarm it names keeps anyway
    (nodeCount): that ModelPrewarm looks again (read from the informer: no request)."""
    ctx: PrewarmContext = memo.prewarm
    for (namespace, prewarm), need in affected_prewarms(event, ctx.demands_seen):
        body = await ctx.api.get(MODEL_PREWARM, prewarm, namespace) if (namespace, prewarm) in ctx.known else None
        count = ((body or {}).get("spec") or {}).get("nodeCount") or 1
        if body is not None and (not isinstance(count, int) or need > count):  # at or below nodeCount: no change
            spawn(_run(memo, namespace, prewarm, LOGGER, 0, from_child=True), f"capacity {namespace}/{prewarm}")


def _beside_the_watch(handler: Callable[..., Awaitable[None]], memo: Any) -> Subscriber:
    """An informer subscription running `handler` as kopf's on.event ran it, beside the watch (core.spawn)."""

    async def subscriber(event: InformerEvent) -> None:
        meta = event.obj.get("metadata") or {}
        spawn(handler(event.obj, event.type, memo, LOGGER),
              f"{handler.__name__} {meta.get('namespace') or ''}/{meta.get('name')} {event.type}")

    return subscriber


def watch_children(settings: OperatorSettings, cached: CachedKubeApi, memo: Any) -> None:
    """Informers, each selected on the server: the ModelPrewarms; in the pre-warm namespace only, the
    Jobs, their Pods and the credential copies (labelled with a ModelPrewarm uid, indexed by it); the
    predictors' Pods (labelled with their InferenceService and component=predictor); every Node.
    Reconciles read them from memory; their events reach the handlers below. The tenants' service
    accounts (the watched namespaces; authoritative: no `get`) too, so a pre-warm whose Job waits
    reads nothing; their Secrets are never watched (read by name only when the plan acts on them)."""
    platform = settings.prewarm_namespace
    by_uid = {label_index_name(LABEL_PREWARM_UID): label_index(LABEL_PREWARM_UID)}
    # Authoritative: a miss is the answer (the InferenceService watcher creates a ModelPrewarm it
    # does not find without a GET first; a create racing someone else's meets 409 and is retried).
    memo.prewarm.objects = cached.inform_namespaces(MODEL_PREWARM, settings.namespaces, authoritative=True)
    for child in (JOB, POD):
        cached.inform(child, namespace=platform, label_selector=LABEL_PREWARM_UID,
                      indexes=by_uid).subscribe(_beside_the_watch(job_or_pod_changed, memo))
    cached.inform(SECRET, namespace=platform, label_selector=LABEL_PREWARM_UID, indexes=by_uid)
    for accounts in cached.inform_namespaces(SERVICE_ACCOUNT, settings.namespaces, authoritative=True):
        accounts.subscribe(_beside_the_watch(account_changed, memo))
    for informer in cached.inform_namespaces(POD, settings.namespaces, label_selector=PREDICTOR_SELECTOR,
                                             indexes={label_index_name(LABEL_ISVC): label_index(LABEL_ISVC)}):
        informer.subscribe(_beside_the_watch(predictor_pod_changed, memo))
    memo.prewarm.canaries = cached.inform_namespaces(MODEL_CANARY, settings.namespaces,
                                                     indexes={BY_CANDIDATE_PREWARM: candidate_prewarm_keys})
    for canaries in memo.prewarm.canaries:
        canaries.subscribe(lambda event: canary_demand_changed(event, memo))
    memo.prewarm.nodes = cached.inform(NODE, indexes={EXTENDED_RESOURCE_INDEX: offered_extended_resources})
    memo.prewarm.nodes.subscribe(_beside_the_watch(node_changed, memo))


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers. Nodes, Jobs and Pods are watched by informers (watch_children)."""
    resource = (MODEL_PREWARM.group, MODEL_PREWARM.version, MODEL_PREWARM.plural)
    kopf.on.resume(*resource, registry=registry)(prewarm_changed)
    kopf.on.create(*resource, registry=registry)(prewarm_changed)
    kopf.on.update(*resource, registry=registry)(prewarm_changed)
    kopf.on.delete(*resource, registry=registry)(prewarm_deleted)
    # The resync: one task for every ModelPrewarm (`resync`, started by the operator), not a kopf timer each.
