"""The Memcached controller: thin kopf handlers around one level-based reconcile on the core.

Every trigger (create/resume/spec change, the periodic resync, a change of an owned Deployment)
runs the same `reconcile`: read the Memcached, its Deployment and the metric, ask
`planning.memcached` what should be, then write only what differs (controllers.core).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from kserve_operator import observability
from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import Informer, InformerEvent
from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.controllers.core import (
    ChildExists,
    Outcome,
    ReconcileCore,
    ReconcileResult,
    Resync,
    apply_child,
    cleanup_within,
    now,
    post_events,
    read_child,
    remember,
    spawn,
    write_status,
)
from kserve_operator.errors import ApiError, InvalidSpec, MetricsUnavailable, NoSamples
from kserve_operator.planning import memcached as plan
from kserve_operator.planning import memcached_status
from kserve_operator.planning.ownership import ownership_problem
from kserve_operator.resources.conditions import rfc3339
from kserve_operator.resources.kinds import DEPLOYMENT, MEMCACHED, SERVICE
from kserve_operator.resources.memcached import Memcached, MemcachedSpec, name_problem
from kserve_operator.resources.memcached_conditions import MemcachedReason
from kserve_operator.settings import FINALIZER, OperatorSettings

CONTROLLER = "memcached"
DEPLOYMENT_EXACT = ("spec.replicas", "spec.selector", "spec.template")
SERVICE_EXACT = ("spec.selector", "spec.ports")
MERGED = ("metadata.labels", "metadata.annotations")
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={plan.MANAGED_BY}"  # the server filters the child watches
LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass
class MemcachedContext:
    """What the handlers share (kopf's memo): settings, the reconcile core and Prometheus."""

    settings: OperatorSettings
    core: ReconcileCore
    prometheus: PrometheusClient | None
    # Memcacheds whose child names a create found taken by an object outside the child informers
    # (someone else's, or ours without our label): their children are read from the server until a
    # pass finds no conflict.
    names_taken: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    objects: list[Informer] = dataclasses.field(default_factory=list)  # the Memcacheds (watch_children)

    @property
    def api(self) -> KubeApi:
        return self.core.api


async def _observe_connections(ctx: MemcachedContext, namespace: str, name: str, spec: MemcachedSpec) -> float:
    if ctx.prometheus is None:
        raise MetricsUnavailable("PROMETHEUS_URL is not set")
    promql = spec.metrics_query or plan.default_metrics_query(namespace, name)
    return await ctx.prometheus.query_scalar(promql)


async def _report_problem(api: KubeApi, body: dict[str, Any], reason: str, problem: str,
                          moment: datetime.datetime) -> None:
    """Status Error + Degraded with the reason, and one Warning event when the problem is new."""
    cache = Memcached.parse(body)
    status = memcached_status.plan_error_status(cache, problem, moment, reason)
    if await write_status(api, MEMCACHED, body, status.patch_from(body.get("status"))):
        await post_events(api, body, memcached_status.plan_events(cache, status))


async def _apply_children(api: KubeApi, deployment: dict[str, Any] | None, desired: dict[str, Any],
                          service: dict[str, Any] | None, desired_service: dict[str, Any]) -> dict[str, Any]:
    """The Deployment and the Service as planned; returns the Deployment as it now stands.

    Both new (a cache just created): created together, since kube-apiserver's Service create (it
    allocates a cluster IP) is the slower and the Deployment need not wait behind it. Should the
    Service's name turn out to be someone else's, the Deployment this pass created is scaled to
    zero before `ChildExists` goes on to the caller: nothing runs for a cache whose name is taken."""
    if deployment is not None or service is not None:
        applied, _ = await apply_child(api, DEPLOYMENT, deployment, desired, exact=DEPLOYMENT_EXACT, merged=MERGED)
        await apply_child(api, SERVICE, service, desired_service, exact=SERVICE_EXACT, merged=MERGED)
        return applied
    creating = asyncio.ensure_future(
        apply_child(api, DEPLOYMENT, None, desired, exact=DEPLOYMENT_EXACT, merged=MERGED))
    try:
        await apply_child(api, SERVICE, None, desired_service, exact=SERVICE_EXACT, merged=MERGED)
    except ChildExists:
        with contextlib.suppress(ApiError, ChildExists):  # not created: nothing to hold at zero
            created, _ = await creating
            meta = created["metadata"]
            await api.patch(DEPLOYMENT, meta["name"], {"spec": {"replicas": 0}}, namespace=meta["namespace"])
        raise
    except BaseException:
        await asyncio.gather(creating, return_exceptions=True)  # settled either way; the next pass sees it
        raise
    applied, _ = await creating
    return applied


async def _name_conflict(ctx: MemcachedContext, body: dict[str, Any], conflict: str, moment: datetime.datetime,
                         logger: logging.Logger | Any) -> ReconcileResult:
    """A child's name is held by an object we do not control: say so (once per generation), touch nothing."""
    meta = body["metadata"]
    await _report_problem(ctx.api, body, MemcachedReason.NAME_CONFLICT, conflict, moment)
    ctx.core.warn_once(logger, (meta["namespace"], meta["name"]), meta.get("generation"),
                       f"Memcached {meta['namespace']}/{meta['name']}: {conflict}")
    return ReconcileResult(Outcome.INVALID)


async def reconcile(ctx: MemcachedContext, namespace: str, name: str,
                    logger: logging.Logger | Any) -> ReconcileResult:
    """One level-based pass: observe -> plan -> apply. Raises ApiError for the core to classify."""
    api = ctx.api
    body = await api.get(MEMCACHED, name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return ReconcileResult(Outcome.GONE)
    cache = Memcached.parse(body)
    moment = now()
    key, generation = (namespace, name), body["metadata"].get("generation")

    try:
        invalid_name = name_problem(name)
        if invalid_name is not None:
            await _report_problem(api, body, MemcachedReason.INVALID_NAME, invalid_name, moment)
            ctx.core.warn_once(logger, key, generation, f"Memcached {namespace}/{name}: {invalid_name}")
            return ReconcileResult(Outcome.INVALID)
        spec = cache.spec()
    except InvalidSpec as exc:
        # Permanent until the user edits the spec: report it, touch nothing else.
        await _report_problem(api, body, MemcachedReason.INVALID_SPEC, str(exc), moment)
        ctx.core.warn_once(logger, key, generation, f"Memcached {namespace}/{name} has an invalid spec: {exc}")
        return ReconcileResult(Outcome.INVALID)

    if FINALIZER not in (body["metadata"].get("finalizers") or []):
        # A delete before kopf's finalizer is on would skip the graceful scale-to-zero: no children
        # until it is (kopf adds it; the event that brings it reconciles again).
        logger.info("Memcached %s/%s: waiting for the finalizer before creating children", namespace, name)
        return ReconcileResult(Outcome.WAITING)

    if key in ctx.names_taken:  # a create met a same-named object outside our informers: read the server
        deployment, service = await api.get(DEPLOYMENT, name, namespace), await api.get(SERVICE, name, namespace)
    else:
        deployment = await read_child(api, DEPLOYMENT, name, namespace, CHILD_SELECTOR)
        service = await read_child(api, SERVICE, name, namespace, CHILD_SELECTOR)
    conflict = ownership_problem(deployment, body, MEMCACHED) or ownership_problem(service, body, MEMCACHED)
    if conflict is not None:
        return await _name_conflict(ctx, body, conflict, moment, logger)
    current = deployment["spec"].get("replicas") if deployment else None

    connections: float | None = None
    metrics_problem: str | None = None
    metrics_reason = MemcachedReason.METRICS_UNAVAILABLE
    if spec.autoscaling and spec.metrics_query and not ctx.settings.allow_custom_metrics_queries:
        metrics_problem = ("spec.metricsQuery is not allowed on this cluster (the operator's administrator "
                           "enables custom queries with ALLOW_CUSTOM_METRICS_QUERIES=true)")
        metrics_reason = MemcachedReason.QUERY_NOT_ALLOWED
    elif spec.autoscaling:
        try:
            connections = await _observe_connections(ctx, namespace, name, spec)
        except NoSamples:
            if current != 0:  # at zero there are no pods and so no series: holding zero is right
                metrics_problem = "query returned no samples"
                logger.warning("Memcached %s/%s: metrics query returned no samples, holding replicas",
                               namespace, name)
        except MetricsUnavailable as exc:
            metrics_problem = str(exc)
            logger.warning("Memcached %s/%s: metrics unavailable, holding replicas: %s", namespace, name, exc)

    old_status = cache.status
    decision = plan.decide_replicas(
        spec, connections=connections, current=current,
        window=plan.ScaleDownWindow.from_status(old_status.scale_down), now=moment,
    )
    scaled = current != decision.replicas
    recorded = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(plan.LAST_SCALE_ANNOTATION)
    last_scale = rfc3339(moment) if scaled else recorded

    try:
        desired = plan.build_deployment(cache, decision.replicas, ctx.settings.memcached, last_scale)
        deployment = await _apply_children(api, deployment, desired, service, plan.build_service(cache))
    except ChildExists as exc:
        ctx.names_taken.add(key)  # until a pass finds no conflict: its reads go to the server
        conflict = ownership_problem(exc.live, body, MEMCACHED)
        if conflict is not None:
            return await _name_conflict(ctx, body, conflict, moment, logger)
        return ReconcileResult(Outcome.OK, requeue_after=0.0)  # ours, not in the cache: read it and go on
    except ApiError as exc:
        if not exc.temporary:  # forbidden, rejected by admission: a person must act
            await _report_problem(api, body, MemcachedReason.APPLY_FAILED, str(exc), moment)
        raise
    ctx.names_taken.discard(key)

    if scaled and current is not None:
        observability.SCALES.labels(direction="up" if decision.replicas > current else "down").inc()
        # Posted before the status write: a status write lost after the scale must not lose its Event.
        scale_events = memcached_status.plan_events(cache, old_status, previous_replicas=current, decision=decision)
        await post_events(api, body, scale_events)
    status = memcached_status.plan_status(
        cache, decision, deployment=deployment, connections=connections, metrics_problem=metrics_problem,
        scaled=scaled, now=moment, metrics_reason=metrics_reason,
    )
    await write_status(api, MEMCACHED, body, status.patch_from(body.get("status")))
    await post_events(api, body, memcached_status.plan_events(cache, status))
    return ReconcileResult(Outcome.OK)


async def _run(memo: Any, namespace: str, name: str, logger: Any, retry: int, *,
               raise_permanent: bool = False, from_child: bool = False) -> Outcome:
    ctx: MemcachedContext = memo.memcached

    async def report_unexpected(problem: str) -> None:
        body = await ctx.api.get(MEMCACHED, name, namespace)
        if body is not None:
            await _report_problem(ctx.api, body, MemcachedReason.RECONCILE_ERROR, problem, now())

    return await ctx.core.run(
        namespace, name, lambda: reconcile(ctx, namespace, name, logger),
        retry=retry, raise_permanent=raise_permanent, from_child=from_child, on_error=report_unexpected,
    )


async def memcached_changed(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, retry: int, body: kopf.Body | None = None,
    **_: Any,
) -> None:
    """Create, resume and spec changes: reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    if body is not None:
        remember(memo.memcached.api, MEMCACHED, body)
    await _run(memo, namespace, name, logger, retry, raise_permanent=True)


async def memcached_resync(namespace: str, name: str, memo: Any) -> None:
    """The periodic re-evaluation (the seed's RequeueAfter: 30s): metrics move without events. An
    event's pass: skipped while the object backs off; failures are retried by the core."""
    await _run(memo, namespace, name, LOGGER, 0, from_child=True)


def resync(memo: Any) -> Resync:
    """Every Memcached the informer holds, once per resync interval (core.Resync)."""
    return Resync(memo.memcached.objects, lambda namespace, name: spawn(
        memcached_resync(namespace, name, memo), f"memcached resync {namespace}/{name}"))


async def child_changed(
    body: Mapping[str, Any], type: str | None, memo: Any, logger: logging.Logger | Any, **_: Any
) -> None:
    """A change of an owned Deployment or Service (readiness, someone editing it): reconcile its owner, unless
    that owner is backing off after failures (the core skips it then)."""
    if type is None:  # the initial listing: the Memcached's own resume handler covers it
        return
    namespace = body.get("metadata", {}).get("namespace")
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("controller") and owner.get("kind") == MEMCACHED.kind \
                and owner.get("apiVersion") == MEMCACHED.api_version and namespace:
            await _run(memo, namespace, owner["name"], logger, 0, from_child=True)


async def child_event(memo: Any, event: InformerEvent) -> None:
    """The informers' subscription: `child_changed` beside the watch (controllers.core.spawn)."""
    meta = event.obj.get("metadata") or {}
    spawn(child_changed(event.obj, event.type, memo, LOGGER),
          f"memcached child {meta.get('namespace')}/{meta.get('name')} {event.type}")


def watch_children(settings: OperatorSettings, cached: CachedKubeApi, memo: Any) -> None:
    """Informers (clients/informer.py): the Memcacheds, and their Deployments and Services selected on the
    server by our label, so reconciles read them from memory; child events reach `child_changed`."""
    memo.memcached.objects = cached.inform_namespaces(MEMCACHED, settings.namespaces)
    for child in (DEPLOYMENT, SERVICE):
        for informer in cached.inform_namespaces(child, settings.namespaces, label_selector=CHILD_SELECTOR):
            informer.subscribe(functools.partial(child_event, memo))


async def memcached_deleted(
    body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger,
    runtime: datetime.timedelta, **_: Any,
) -> None:
    """Graceful termination: scale to zero, wait (bounded) for the pods to go, then release."""
    assert namespace is not None
    ctx: MemcachedContext = memo.memcached
    # Its deletionTimestamp, in the cache before any reconcile a child's event starts reads it there.
    remember(ctx.api, MEMCACHED, body)

    async def scale_to_zero() -> dict[str, Any] | None:
        deployment = await ctx.api.get(DEPLOYMENT, name, namespace)
        if deployment is None or ownership_problem(deployment, dict(body), MEMCACHED) is not None:
            return None  # nothing of ours to stop (a same-named Deployment of someone else stays as it is)
        if deployment["spec"].get("replicas") != 0:
            logger.info("Scaling Deployment %s/%s to zero before deletion", namespace, name)
            return await ctx.api.patch(DEPLOYMENT, name, {"spec": {"replicas": 0}}, namespace=namespace)
        return deployment

    timeout = ctx.settings.finalizer_timeout_seconds
    deployment = await cleanup_within(f"scaling Deployment {namespace}/{name} to zero", scale_to_zero,
                                      runtime=runtime, give_up_after=timeout, logger=logger)
    remaining = int(((deployment or {}).get("status") or {}).get("replicas") or 0)
    if remaining == 0:
        ctx.core.forget((namespace, name))
        return
    if runtime.total_seconds() >= timeout:
        logger.warning("Deployment %s/%s still has %d pod(s) after %.0fs; releasing anyway",
                       namespace, name, remaining, runtime.total_seconds())
        return
    raise kopf.TemporaryError(f"waiting for {remaining} pod(s) to stop", delay=1)


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers; done at start-up so the resync interval comes from settings."""
    resource = (MEMCACHED.group, MEMCACHED.version, MEMCACHED.plural)
    kopf.on.resume(*resource, registry=registry)(memcached_changed)
    kopf.on.create(*resource, registry=registry)(memcached_changed)
    kopf.on.update(*resource, field="spec", registry=registry)(memcached_changed)
    kopf.on.delete(*resource, registry=registry)(memcached_deleted)
    # The resync: one task for every Memcached (`resync`, started by the operator), not a kopf timer each.
    # Deployments and Services: informers with a server-side selector (watch_children), not kopf watches.
