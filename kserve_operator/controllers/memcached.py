"""The Memcached controller: thin kopf handlers around one level-based reconcile.

Every trigger (create/resume/spec change, the 30 s resync timer, a change of the owned
Deployment) runs the same `reconcile`: read the Memcached, its Deployment and the metric,
ask `planning.memcached` what should be, then write only what differs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import time
from typing import Any, cast

import kopf

from kserve_operator import observability
from kserve_operator.clients.kube import DEPLOYMENTS, SERVICES, KubeClient, Resource
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.errors import ApiError, InvalidSpec, MetricsUnavailable, NoSamples
from kserve_operator.planning import memcached as plan
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.diff import needs_update
from kserve_operator.resources.memcached import GROUP, KIND, PLURAL, VERSION, parse_spec
from kserve_operator.settings import OperatorSettings

MEMCACHEDS = Resource(GROUP, VERSION, PLURAL)
CONTROLLER = "memcached"


@dataclasses.dataclass
class MemcachedContext:
    """What the handlers share: settings, clients and per-object state (kopf's memo)."""

    settings: OperatorSettings
    kube: KubeClient
    prometheus: PrometheusClient | None
    locks: collections.defaultdict[tuple[str, str], asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )
    # Consecutive failed reconciles per object: the timer's retries back off on it too.
    failures: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


class Outcome:
    OK = "ok"
    INVALID = "invalid"  # waits for a person: invalid spec, a name taken by someone else
    GONE = "gone"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _observe_connections(ctx: MemcachedContext, body: dict[str, Any], query: str | None) -> float:
    if ctx.prometheus is None:
        raise MetricsUnavailable("PROMETHEUS_URL is not set")
    meta = body["metadata"]
    promql = query or plan.default_metrics_query(meta["namespace"], meta["name"])
    return await ctx.prometheus.query_scalar(promql)


def _emit(body: dict[str, Any], events: list[plan.EventPlan]) -> None:
    # kopf only reads apiVersion/kind/metadata from the body; a plain dict from our GET works.
    target = cast(kopf.Body, body)
    for event in events:
        kopf.event(target, type=event.type, reason=event.reason, message=event.message)


async def _report_problem(kube: KubeClient, body: dict[str, Any], reason: str, problem: str,
                          now: datetime.datetime) -> None:
    """Status Error + Degraded with the reason, and one Warning event when the problem is new."""
    meta = body["metadata"]
    status = plan.plan_error_status(body, problem, now, reason)
    changes = plan.status_changes(body.get("status"), status)
    if changes:
        await kube.patch(MEMCACHEDS, meta["namespace"], meta["name"], {"status": changes}, subresource="status")
        _emit(body, plan.plan_events(body, status))


async def reconcile(ctx: MemcachedContext, namespace: str, name: str, logger: logging.Logger | Any) -> str:
    """One level-based pass. Raises ApiError for the caller to retry; returns an Outcome."""
    key = (namespace, name)
    async with ctx.locks[key]:
        started = time.perf_counter()
        try:
            outcome = await _reconcile(ctx, namespace, name, logger)
        finally:
            observability.RECONCILE_SECONDS.labels(controller=CONTROLLER).observe(time.perf_counter() - started)
    if outcome == Outcome.GONE:  # forget per-object state of deleted caches
        ctx.locks.pop(key, None)
        ctx.failures.pop(key, None)
    return outcome


async def _apply_children(
    kube: KubeClient, body: dict[str, Any], deployment: dict[str, Any] | None, service: dict[str, Any] | None,
    replicas: int, ctx: MemcachedContext, logger: logging.Logger | Any,
) -> dict[str, Any]:
    """Create what is missing, patch only what differs; returns the Deployment as it now stands."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    managed = ("metadata.labels", "metadata.ownerReferences", "spec")
    desired_deployment = plan.build_deployment(body, replicas, ctx.settings.memcached)
    if deployment is None:
        deployment = await kube.create(DEPLOYMENTS, desired_deployment)
        logger.info("Created Deployment %s/%s with %d replica(s)", namespace, name, replicas)
    elif needs_update(deployment, desired_deployment, sections=managed):
        deployment = await kube.patch(DEPLOYMENTS, namespace, name, _managed_patch(desired_deployment))
    desired_service = plan.build_service(body)
    if service is None:
        await kube.create(SERVICES, desired_service)
    elif needs_update(service, desired_service, sections=managed):
        await kube.patch(SERVICES, namespace, name, _managed_patch(desired_service))
    return deployment


def _managed_patch(desired: dict[str, Any]) -> dict[str, Any]:
    meta = desired["metadata"]
    return {"metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
            "spec": desired["spec"]}


async def _reconcile(ctx: MemcachedContext, namespace: str, name: str, logger: logging.Logger | Any) -> str:
    kube = ctx.kube
    body = await kube.get(MEMCACHEDS, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Outcome.GONE
    now = _now()

    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpec as exc:
        # Permanent until the user edits the spec: report it, touch nothing else.
        await _report_problem(kube, body, plan.REASON_INVALID_SPEC, str(exc), now)
        logger.warning("Memcached %s/%s has an invalid spec: %s", namespace, name, exc)
        return Outcome.INVALID

    deployment = await kube.get(DEPLOYMENTS, namespace, name)
    service = await kube.get(SERVICES, namespace, name)
    conflict = plan.ownership_problem(deployment, body) or plan.ownership_problem(service, body)
    if conflict is not None:
        await _report_problem(kube, body, plan.REASON_NAME_CONFLICT, conflict, now)
        logger.warning("Memcached %s/%s: %s", namespace, name, conflict)
        return Outcome.INVALID
    current = deployment["spec"].get("replicas") if deployment else None

    connections: float | None = None
    metrics_problem: str | None = None
    if spec.autoscaling:
        try:
            connections = await _observe_connections(ctx, body, spec.metrics_query)
        except NoSamples:
            if current != 0:  # at zero there are no pods and so no series: holding zero is right
                metrics_problem = "query returned no samples"
                logger.warning("Memcached %s/%s: metrics query returned no samples, holding replicas",
                               namespace, name)
        except MetricsUnavailable as exc:
            metrics_problem = str(exc)
            logger.warning("Memcached %s/%s: metrics unavailable, holding replicas: %s", namespace, name, exc)

    old_status = body.get("status") or {}
    decision = plan.decide_replicas(
        spec,
        connections=connections,
        current=current,
        window=plan.ScaleDownWindow.from_status(old_status.get("scaleDown")),
        now=now,
    )

    try:
        deployment = await _apply_children(kube, body, deployment, service, decision.replicas, ctx, logger)
    except ApiError as exc:
        if not exc.temporary:  # forbidden, rejected by admission: a person must act
            await _report_problem(kube, body, plan.REASON_APPLY_FAILED, str(exc), now)
        raise

    scaled = current != decision.replicas
    if scaled and current is not None:
        observability.SCALES.labels(direction="up" if decision.replicas > current else "down").inc()
    status = plan.plan_status(
        body, decision, deployment=deployment, connections=connections,
        metrics_problem=metrics_problem, scaled=scaled, now=now,
    )
    changes = plan.status_changes(old_status, status)
    if changes:
        await kube.patch(MEMCACHEDS, namespace, name, {"status": changes}, subresource="status")
    _emit(body, plan.plan_events(body, status, previous_replicas=current, decision=decision))
    return Outcome.OK


async def _run(memo: Any, namespace: str, name: str, logger: Any, retry: int, *, raise_permanent: bool) -> None:
    ctx: MemcachedContext = memo.memcached
    key = (namespace, name)
    try:
        outcome = await reconcile(ctx, namespace, name, logger)
    except ApiError as exc:
        observability.RECONCILES.labels(controller=CONTROLLER, result="error").inc()
        failures = ctx.failures[key] = ctx.failures.get(key, 0) + 1
        if exc.temporary or exc.status == 404:
            # kopf's `retry` restarts at 0 for every timer tick; the failure count does not.
            delay = backoff_delay(max(retry, failures - 1))
            raise kopf.TemporaryError(str(exc), delay=delay) from exc
        raise kopf.PermanentError(str(exc)) from exc
    ctx.failures.pop(key, None)
    observability.RECONCILES.labels(controller=CONTROLLER, result=outcome).inc()
    if outcome == Outcome.INVALID and raise_permanent:
        raise kopf.PermanentError("cannot proceed; see status.conditions")


async def memcached_changed(
    namespace: str | None, name: str, memo: Any, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    """Create, resume and spec changes: reconcile now."""
    assert namespace is not None  # the CRD is namespaced
    await _run(memo, namespace, name, logger, retry, raise_permanent=True)


async def memcached_resync(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The periodic re-evaluation (the seed's RequeueAfter: 30s): metrics move without events."""
    assert namespace is not None
    await _run(memo, namespace, name, logger, 0, raise_permanent=False)


async def deployment_changed(
    body: kopf.Body, type: str | None, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    """A change of an owned Deployment (readiness, someone editing replicas): reconcile its owner."""
    if type is None:  # the initial listing: the Memcached's own resume handler covers it
        return
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == KIND and str(owner.get("apiVersion", "")).startswith(f"{GROUP}/"):
            namespace = body["metadata"]["namespace"]
            try:
                await reconcile(memo.memcached, namespace, owner["name"], logger)
            except ApiError as exc:
                logger.warning("Reconcile of Memcached %s/%s after a Deployment change failed: %s",
                               namespace, owner["name"], exc)


async def memcached_deleted(
    body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger,
    runtime: datetime.timedelta, **_: Any,
) -> None:
    """Graceful termination: scale to zero, wait (bounded) for the pods to go, then release."""
    assert namespace is not None
    ctx: MemcachedContext = memo.memcached
    out_of_time = runtime.total_seconds() >= ctx.settings.finalizer_timeout_seconds
    try:
        deployment = await ctx.kube.get(DEPLOYMENTS, namespace, name)
        if deployment is None or plan.ownership_problem(deployment, dict(body)) is not None:
            return  # nothing of ours to stop (a same-named Deployment of someone else stays as it is)
        if deployment["spec"].get("replicas") != 0:
            deployment = await ctx.kube.patch(DEPLOYMENTS, namespace, name, {"spec": {"replicas": 0}})
            logger.info("Scaling Deployment %s/%s to zero before deletion", namespace, name)
    except ApiError as exc:
        if out_of_time:
            logger.warning("Could not scale Deployment %s/%s down before deletion (%s); releasing anyway",
                           namespace, name, exc)
            return
        raise kopf.TemporaryError(f"could not scale down before deletion: {exc}", delay=2) from exc
    remaining = int((deployment.get("status") or {}).get("replicas") or 0)
    if remaining == 0:
        return
    if out_of_time:
        logger.warning("Deployment %s/%s still has %d pod(s) after %.0fs; releasing anyway",
                       namespace, name, remaining, runtime.total_seconds())
        return
    raise kopf.TemporaryError(f"waiting for {remaining} pod(s) to stop", delay=1)


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers; done at start-up so the resync interval comes from settings."""
    resource = (GROUP, VERSION, PLURAL)
    kopf.on.resume(*resource, registry=registry)(memcached_changed)
    kopf.on.create(*resource, registry=registry)(memcached_changed)
    kopf.on.update(*resource, field="spec", registry=registry)(memcached_changed)
    kopf.on.delete(*resource, registry=registry)(memcached_deleted)
    kopf.timer(*resource, interval=settings.resync_seconds, initial_delay=settings.resync_seconds,
               registry=registry)(memcached_resync)
    kopf.on.event(
        "apps", "v1", "deployments",
        labels={"app.kubernetes.io/managed-by": plan.MANAGED_BY, "app.kubernetes.io/name": "memcached"},
        registry=registry,
    )(deployment_changed)
