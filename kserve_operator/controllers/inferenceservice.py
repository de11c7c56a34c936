"""The InferenceService watcher: an opted-in service gets a ModelPrewarm of its own name.

KServe owns InferenceServices; this controller only reads them. It watches them with
`kopf.on.event` (kopf keeps no state on the watched object that way, so nothing is ever written
to an InferenceService), keeps the derived ModelPrewarm equal to what the predictor asks for
(resources.inferenceservice), removes it when the service opts out or stops naming a model, and
reports through Events on the service. The ModelPrewarm's status and Events say how warming goes.
A ModelPrewarm of the same name that the service does not control is left alone and reported.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import InformerEvent
from kserve_operator.clients.kube import KubeApi, PatchType
from kserve_operator.controllers.core import (
    Outcome,
    ReconcileCore,
    ReconcileResult,
    apply_child,
    post_events,
    remember,
    spawn,
)
from kserve_operator.errors import ApiError
from kserve_operator.planning.events import NORMAL, WARNING, EventPlan
from kserve_operator.planning.ownership import owned_by
from kserve_operator.resources.inferenceservice import ANNOTATION_UNSUPPORTED, desired_prewarm, opted_in
from kserve_operator.resources.inferenceservice_conditions import InferenceServiceEvent
from kserve_operator.resources.kinds import INFERENCE_SERVICE, MODEL_PREWARM, NAMESPACE
from kserve_operator.resources.prewarm import (
    DEFAULT_ACTIVE_DEADLINE_SECONDS,
    DEFAULT_BACKOFF_LIMIT,
    OPT_IN_NAMESPACE_LABEL,
)
from kserve_operator.settings import OperatorSettings

CONTROLLER = "inferenceservice-prewarm"
LOGGER = logging.getLogger(__name__)
EXACT = ("spec",)
MERGED = ("metadata.labels", "metadata.annotations")



@dataclasses.dataclass
class ServiceWatchContext:
    settings: OperatorSettings
    core: ReconcileCore
    # The last problems reported per service: an Event is posted when they change, not per watch event.
    reported: dict[tuple[str, str], frozenset[str]] = dataclasses.field(default_factory=dict)
    namespace_labels: dict[str, str | None] = dataclasses.field(default_factory=dict)

    @property
    def api(self) -> KubeApi:
        return self.core.api


def _with_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """The CRD defaults these two; stating them keeps the live spec equal to the desired one."""
    body["spec"].setdefault("backoffLimit", DEFAULT_BACKOFF_LIMIT)
    body["spec"].setdefault("activeDeadlineSeconds", DEFAULT_ACTIVE_DEADLINE_SECONDS)
    return body


async def _report(ctx: ServiceWatchContext, isvc: Mapping[str, Any], problems: tuple[EventPlan, ...]) -> None:
    meta = isvc["metadata"]
    key = (meta["namespace"], meta["name"])
    seen = frozenset(f"{e.reason}: {e.message}" for e in problems)
    if ctx.reported.get(key) != seen:
        ctx.reported[key] = seen
        await post_events(ctx.api, isvc, problems)


async def _remove(api: KubeApi, isvc: Mapping[str, Any], prewarm: Mapping[str, Any] | None, why: str) -> None:
    if prewarm is None or not owned_by(prewarm, isvc["metadata"]["uid"]):
        return
    meta = prewarm["metadata"]
    if await api.delete(MODEL_PREWARM, meta["name"], namespace=meta["namespace"], uid=meta.get("uid")):
        await post_events(api, isvc, [EventPlan(NORMAL, InferenceServiceEvent.PREWARM_REMOVED,
                                                f"ModelPrewarm {meta['name']} removed: {why}")])


async def reconcile(ctx: ServiceWatchContext, namespace: str, name: str,
                    logger: logging.Logger | Any) -> ReconcileResult:
    api = ctx.api
    isvc = await api.get(INFERENCE_SERVICE, name, namespace)
    if isvc is None or isvc["metadata"].get("deletionTimestamp"):
        ctx.reported.pop((namespace, name), None)
        return ReconcileResult(Outcome.GONE)  # the garbage collector removes the ModelPrewarm it owned
    prewarm = await api.get(MODEL_PREWARM, name, namespace)
    ns = await api.get(NAMESPACE, namespace)
    labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
    if not opted_in(isvc, labels):
        await _remove(api, isvc, prewarm, "the InferenceService is not opted in to pre-warming")
        ctx.reported.pop((namespace, name), None)
        return ReconcileResult(Outcome.OK)
    if prewarm is not None and not owned_by(prewarm, isvc["metadata"]["uid"]):
        message = f"a ModelPrewarm named {name} exists and is not this InferenceService's; it is left alone"
        await _report(ctx, isvc, (EventPlan(WARNING, InferenceServiceEvent.PREWARM_NAME_TAKEN, message),))
        return ReconcileResult(Outcome.INVALID)
    desired = desired_prewarm(isvc)
    problems = tuple(EventPlan(WARNING, InferenceServiceEvent.PREWARM_NOT_POSSIBLE, p) for p in desired.problems)
    await _report(ctx, isvc, problems)
    if desired.body is None:
        await _remove(api, isvc, prewarm, "the predictor names no model to warm")
        return ReconcileResult(Outcome.INVALID)
    body = _with_defaults(desired.body)
    applied, wrote = await apply_child(api, MODEL_PREWARM, prewarm, body, exact=EXACT, merged=MERGED)
    live_annotations = (applied.get("metadata") or {}).get("annotations") or {}
    if ANNOTATION_UNSUPPORTED in live_annotations and ANNOTATION_UNSUPPORTED not in body["metadata"]["annotations"]:
        pointer = "/metadata/annotations/" + ANNOTATION_UNSUPPORTED.replace("~", "~0").replace("/", "~1")
        await api.patch(MODEL_PREWARM, name, [{"op": "remove", "path": pointer}], namespace=namespace,
                        patch_type=PatchType.JSON)
        wrote = True
    if wrote:
        reason, verb = (InferenceServiceEvent.PREWARM_CREATED, "created") if prewarm is None \
            else (InferenceServiceEvent.PREWARM_UPDATED, "updated")
        spec = body["spec"]
        await post_events(api, isvc, [EventPlan(NORMAL, reason, f"ModelPrewarm {name} {verb}: {spec['storageUri']} "
                                                                  f"on {spec['nodeCount']} node(s)")])
        logger.info("InferenceService %s/%s: ModelPrewarm %s", namespace, name, verb)
    return ReconcileResult(Outcome.OK)


async def _run(memo: Any, namespace: str, name: str, logger: Any) -> Outcome:
    """Reconcile on a watch event, as an event of the core (`from_child`): kopf retries no event handler,
    and a timer would put a finalizer on the InferenceService, so the core retries a failed pass after
    the object's backoff (its delayed queue), and an event while it backs off waits for that retry."""
    ctx: ServiceWatchContext = memo.inferenceservices
    return await ctx.core.run(namespace, name, lambda: reconcile(ctx, namespace, name, logger), from_child=True)


async def service_event(body: kopf.Body, type: str | None, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Any event of an InferenceService, the initial listing included: reconcile it."""
    meta = body.get("metadata") or {}
    remember(memo.inferenceservices.api, INFERENCE_SERVICE, body, type)  # the reconcile reads the cache
    if meta.get("namespace") and meta.get("name"):
        await _run(memo, str(meta["namespace"]), str(meta["name"]), logger)


async def prewarm_event(body: kopf.Body, type: str | None, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """A derived ModelPrewarm changed or went away (someone edited or deleted it): restore it."""
    if type is None:
        return
    remember(memo.inferenceservices.api, MODEL_PREWARM, body, type)
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == INFERENCE_SERVICE.kind and meta.get("namespace"):
            await _run(memo, str(meta["namespace"]), str(ref.get("name")), logger)


async def namespace_event(body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any,
                          **_: Any) -> None:
    """A namespace's opt-in label changed: look at its InferenceServices again."""
    ctx: ServiceWatchContext = memo.inferenceservices
    namespace = str((body.get("metadata") or {}).get("name"))
    labelled = (((body.get("metadata") or {}).get("labels") or {}).get(OPT_IN_NAMESPACE_LABEL))
    if type == "DELETED":
        ctx.namespace_labels.pop(namespace, None)
        return
    seen_before = namespace in ctx.namespace_labels
    previous = ctx.namespace_labels.get(namespace)
    ctx.namespace_labels[namespace] = labelled
    # The first listing sets the baseline (the services' own listing covers them); a re-listing
    # after a watch expired still reports a label that changed in the gap.
    if (type is None and not seen_before) or (seen_before and previous == labelled):
        return
    try:
        services = await ctx.api.list(INFERENCE_SERVICE, namespace)
    except ApiError as exc:
        logger.warning("namespace %s (prewarm label %r): could not list InferenceServices: %s", namespace,
                       labelled, exc)
        return
    for isvc in services:
        await _run(memo, namespace, str(isvc["metadata"]["name"]), logger)


async def namespace_changed(memo: Any, event: InformerEvent) -> None:
    """The Namespace informer's subscription: `namespace_event` beside the watch (controllers.core.spawn).
    The informer stored the namespace before telling, so the reconciles it starts read the new labels."""
    spawn(namespace_event(event.obj, event.type, memo, LOGGER),
          f"namespace {(event.obj.get('metadata') or {}).get('name')} {event.type}")


def watch_children(settings: OperatorSettings, cached: CachedKubeApi, memo: Any) -> None:
    """Every Namespace in an informer (a reconcile reads its namespace's opt-in label from memory, not by a
    GET; its answers are authoritative, so the ClusterRole has no `get` on namespaces): a namespace's label
    change, or one that appears after its InferenceServices were reconciled, reaches `namespace_event`."""
    cached.inform(NAMESPACE, authoritative=True).subscribe(functools.partial(namespace_changed, memo))


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Watch only: kopf.on.event keeps no annotations or finalizers on the watched objects. Namespaces are
    watched by an informer (watch_children)."""
    kopf.on.event(INFERENCE_SERVICE.group, INFERENCE_SERVICE.version, INFERENCE_SERVICE.plural,
                  registry=registry)(service_event)
    kopf.on.event(MODEL_PREWARM.group, MODEL_PREWARM.version, MODEL_PREWARM.plural,
                  registry=registry)(prewarm_event)
