"""The ModelPrewarm controller: one preloader Job per chosen node, status from their Pods.

Every trigger (create/resume/change of a ModelPrewarm, the resync timer, an event of one of its
Jobs or their Pods, a Node whose labels, taints, schedulability or allocatable changed) runs the
same level-based `reconcile`: read the ModelPrewarm, the Nodes, its Jobs and their Pods, the
service account and its Secrets; ask `planning.prewarm` what should be; create the missing
Jobs, delete the stale ones, write the status keys that changed, post the planned Events (on
the ModelPrewarm and, for a derived one, on its InferenceService). A settled ModelPrewarm
reads and writes nothing back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kserve_operator.clients.kube import KubeApi
from kserve_operator.controllers.core import Outcome, ReconcileCore, now, patch_status, post_events
from kserve_operator.errors import ApiError
from kserve_operator.planning import prewarm as plan
from kserve_operator.planning.node_selection import NodeView
from kserve_operator.planning.ownership import owned_by
from kserve_operator.planning.s3_credentials import listed_secrets
from kserve_operator.resources.kinds import INFERENCE_SERVICE, JOB, MODEL_PREWARM, NODE, POD, SECRET, SERVICE_ACCOUNT
from kserve_operator.resources.prewarm import DEFAULT_SERVICE_ACCOUNT, LABEL_JOB_NAME, LABEL_PREWARM
from kserve_operator.settings import OperatorSettings

CONTROLLER = "modelprewarm"
OUTCOMES = {plan.OK: Outcome.OK, plan.INVALID: Outcome.INVALID, plan.WAITING: Outcome.WAITING}


@dataclasses.dataclass
class PrewarmContext:
    """What the handlers share (kopf's memo): settings, the core, and what Nodes looked like."""

    settings: OperatorSettings
    core: ReconcileCore
    known: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # ModelPrewarms reconciled
    node_fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)
    # The resourceVersion each Job and Pod of ours was last seen at: a re-listing (after a watch
    # expired) reports every object again as "initial"; those that changed in the gap still count.
    child_versions: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict)

    @property
    def api(self) -> KubeApi:
        return self.core.api


async def observe(api: KubeApi, body: Mapping[str, Any]) -> plan.Observed:
    """Everything the plan needs, read fresh: reconciles are level-based, not event-based."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    nodes = [NodeView.parse(n) for n in await api.list(NODE)]
    jobs = [j for j in await api.list(JOB, namespace, label_selector=f"{LABEL_PREWARM}={name}") if owned_by(j, uid)]
    pods: dict[str, list[dict[str, Any]]] = {}
    names = sorted(str(j["metadata"]["name"]) for j in jobs)
    if names:
        selector = f"{LABEL_JOB_NAME} in ({','.join(names)})"
        for pod in await api.list(POD, namespace, label_selector=selector):
            job = str(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_JOB_NAME, ""))
            pods.setdefault(job, []).append(pod)
    account_name = (body.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
    account = await api.get(SERVICE_ACCOUNT, str(account_name), namespace)
    secrets: dict[str, Mapping[str, Any] | None] = {}
    for secret in listed_secrets(account or {}):
        secrets[secret] = await api.get(SECRET, secret, namespace)
    return plan.Observed(prewarm=body, nodes=nodes, jobs=jobs, pods=pods, service_account=account, secrets=secrets)


def _owning_service(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The InferenceService a derived ModelPrewarm belongs to, as an Event's involved object."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == INFERENCE_SERVICE.kind \
                and ref.get("apiVersion") == INFERENCE_SERVICE.api_version:
            return {"apiVersion": ref["apiVersion"], "kind": ref["kind"],
                    "metadata": {"name": ref.get("name"), "namespace": meta.get("namespace"), "uid": ref.get("uid")}}
    return None


async def reconcile(ctx: PrewarmContext, namespace: str, name: str, logger: logging.Logger | Any) -> Outcome:
    """Observe -> plan -> apply. Raises ApiError for the core to classify."""
    api = ctx.api
    body = await api.get(MODEL_PREWARM, name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.known.discard((namespace, name))
        return Outcome.GONE  # its Jobs go with it: the garbage collector follows the owner references
    ctx.known.add((namespace, name))
    observed = await observe(api, body)
    decided = plan.plan_prewarm(observed, image=ctx.settings.preloader_image, now=now())
    for job in decided.create:
        try:
            await api.create(JOB, job)
        except ApiError as exc:
            if not exc.conflict:
                raise
            # 409 AlreadyExists: created by a reconcile that died before it could record it.
        logger.info("ModelPrewarm %s/%s: created Job %s", namespace, name, job["metadata"]["name"])
    for job_name in decided.delete:
        await api.delete(JOB, job_name, namespace=namespace, propagation="Background")
        logger.info("ModelPrewarm %s/%s: deleted stale Job %s", namespace, name, job_name)
    await patch_status(api, MODEL_PREWARM, body, decided.status)
    if decided.events:
        await post_events(api, body, decided.events)
        service = _owning_service(body)
        if service is not None:
            await post_events(api, service, decided.events)
    return OUTCOMES[decided.outcome]


async def _run(memo: Any, namespace: str, name: str, logger: Any, retry: int, *,
               raise_permanent: bool = False, from_child: bool = False) -> Outcome:
    ctx: PrewarmContext = memo.prewarm
    return await ctx.core.run(namespace, name, lambda: reconcile(ctx, namespace, name, logger),
                              retry=retry, raise_permanent=raise_permanent, from_child=from_child)


async def prewarm_changed(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, retry: int,
                          **_: Any) -> None:
    """Create, resume and changes of the spec or annotations: reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    await _run(memo, namespace, name, logger, retry, raise_permanent=True)


async def prewarm_resync(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The periodic re-check: a Secret created later, a missed event."""
    assert namespace is not None
    await _run(memo, namespace, name, logger, 0)


async def job_or_pod_changed(body: kopf.Body, type: str | None, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """A Job of ours or one of its Pods changed: reconcile the ModelPrewarm named on its label.

    A listing (`type is None`: at start-up, or after a watch expired) reconciles only for objects
    that changed since last seen, and only for ModelPrewarms already reconciled once (the others'
    own first reconcile reads everything fresh anyway)."""
    ctx: PrewarmContext = memo.prewarm
    meta = body.get("metadata") or {}
    owner, namespace = (meta.get("labels") or {}).get(LABEL_PREWARM), meta.get("namespace")
    if not owner or not namespace:
        return
    key = (str(body.get("kind")), str(namespace), str(meta.get("name")))
    version = str(meta.get("resourceVersion") or "")
    previous = ctx.child_versions.pop(key, None) if type == "DELETED" else ctx.child_versions.get(key)
    if type != "DELETED":
        ctx.child_versions[key] = version
    if type is None and (previous == version or (str(namespace), str(owner)) not in ctx.known):
        return
    await _run(memo, namespace, str(owner), logger, 0, from_child=True)


def node_fingerprint(body: Mapping[str, Any]) -> str:
    """What qualification reads of a Node; heartbeats and conditions leave it unchanged."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    return json.dumps([meta.get("labels"), spec.get("taints"), spec.get("unschedulable"),
                       (body.get("status") or {}).get("allocatable"), bool(meta.get("deletionTimestamp"))],
                      sort_keys=True)


async def node_changed(body: kopf.Body, type: str | None, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """A Node came, went, or changed what qualification reads: every ModelPrewarm looks again."""
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
    for namespace, prewarm in sorted(ctx.known):
        await _run(memo, namespace, prewarm, logger, 0, from_child=True)


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers. Nodes, Jobs and Pods are only watched (kopf.on.event writes nothing)."""
    resource = (MODEL_PREWARM.group, MODEL_PREWARM.version, MODEL_PREWARM.plural)
    kopf.on.resume(*resource, registry=registry)(prewarm_changed)
    kopf.on.create(*resource, registry=registry)(prewarm_changed)
    kopf.on.update(*resource, registry=registry)(prewarm_changed)
    kopf.timer(*resource, interval=settings.resync_seconds, initial_delay=settings.resync_seconds,
               registry=registry)(prewarm_resync)
    for child in (JOB, POD):
        kopf.on.event(child.group, child.version, child.plural, labels={LABEL_PREWARM: kopf.PRESENT},
                      registry=registry)(job_or_pod_changed)
    kopf.on.event(NODE.group, NODE.version, NODE.plural, registry=registry)(node_changed)
