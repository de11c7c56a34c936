"""The ModelCanary controller: thin kopf handlers around one level-based reconcile on the core.

The same shape as the others: kopf `on.create` / `on.resume` / `on.update(field="spec")` reconcile
at once (a percent change takes effect within one pass), a resync pass at the resync interval
(core.Resync; at most RESYNC_CONCURRENCY at a time); events of the routing object a ModelCanary references (a
VirtualService or an HTTPRoute: a hand edit is put back at once) and of the ModelPrewarm a
`requireWarm` canary waits for (released the moment it reports a warm node) reach the core as events
(controllers/canary_wakeups.py), and a pass whose step is due later asks the core to requeue it
(`ReconcileResult.requeue_after`). The ModelCanary informer's indices map those objects to canaries
and answer route claims.

A canary changes routing objects in its own namespace only, unless the platform lists the
other namespace (CANARY_ALLOWED_ROUTE_NAMESPACES): otherwise Ready=False/CrossNamespaceNotAllowed,
one Warning event, and nothing is read or written there, not even on deletion.

A reconcile reads the ModelCanary, its InferenceServices, the routing object (through the traffic
router of the kind `spec.route` names, controllers/canary_routing.py), the ModelPrewarm and, when a
check is due, Prometheus; `planning.canary` decides the candidate's share and the router puts it in
the object; the write is conditional (409: re-read, plan again, retry with backoff). A settled
canary reads and writes nothing.
Deletion (the only reason for a finalizer) gives stable everything again and removes the
candidate destination the controller appended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
from collections.abc import Iterable
from typing import Any

import kopf

from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import Informer
from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.controllers.canary_observe import analyse, observe_capacity, observe_warm
from kserve_operator.controllers.canary_routing import CONFLICT_ATTEMPTS, TrafficRouter, conflict_pause, traffic_routers
from kserve_operator.controllers.canary_wakeups import (
    BY_HTTP_ROUTE,
    BY_PREWARM,
    BY_VIRTUAL_SERVICE,
    informer_indexes,
    referenced_object_changed,
    route_claimants,
)
from kserve_operator.controllers.core import (
    ObjectKey,
    OnError,
    Outcome,
    Reconcile,
    ReconcileCore,
    ReconcileResult,
    Resync,
    cleanup_within,
    now,
    patch_status,
    post_events,
    remember,
    spawn,
)
from kserve_operator.errors import ApiError, InvalidSpec
from kserve_operator.planning import canary as plan
from kserve_operator.planning import canary_claims as route_claims
from kserve_operator.planning.canary_gates import route_namespace_problem
from kserve_operator.planning.events import NORMAL, EventPlan
from kserve_operator.planning.routes.weights import RoutingProblem, WeightPlan
from kserve_operator.resources.canary import CanarySpec, CanaryStatus, parse_spec
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason
from kserve_operator.resources.kinds import (
    HTTP_ROUTE,
    INFERENCE_SERVICE,
    MODEL_CANARY,
    MODEL_PREWARM,
    VIRTUAL_SERVICE,
    VIRTUAL_SERVICE_V1BETA1,
)
from kserve_operator.resources.routes import ObservedRoutes, RouteTarget
from kserve_operator.settings import FINALIZER, OperatorSettings

CONTROLLER = "modelcanary"
FINALIZER_WAIT_SECONDS = 1.0  # how soon to look again for kopf's finalizer (its event wakes a new canary sooner)
# Resync passes run at most this many at a time; spec changes, events and due passes never wait for a
# slot, so a percent change is not queued behind a burst of routine re-reads of hundreds of canaries.
RESYNC_CONCURRENCY = 8
LOGGER = logging.getLogger(__name__)

@dataclasses.dataclass
class CanaryContext:
    """What the handlers share (kopf's memo): settings, the core, a router per kind, Prometheus, and the
    ModelCanary informers (their indices name the canaries an event concerns and answer route claims)."""

    settings: OperatorSettings
    core: ReconcileCore
    routers: dict[str, TrafficRouter]
    prometheus: PrometheusClient | None
    canaries: list[Informer] = dataclasses.field(default_factory=list)
    resync_slots: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(RESYNC_CONCURRENCY))

    @property
    def api(self) -> KubeApi:
        return self.core.api

    def wake(self, keys: Iterable[ObjectKey]) -> None:
        """Events of what these canaries reference: each is reconciled as an event of the core."""
        for namespace, name in sorted(keys):
            self.core.enqueue(namespace, name, pass_of(self, namespace, name, LOGGER),
                              on_error=error_reporter(self, namespace, name))

    def router(self, target: RouteTarget) -> TrafficRouter:
        return self.routers[target.kind]


def new_context(settings: OperatorSettings, api: KubeApi, prometheus: PrometheusClient | None) -> CanaryContext:
    return CanaryContext(settings=settings, core=ReconcileCore(CONTROLLER, api), routers=traffic_routers(api),
                         prometheus=prometheus)


# --- one reconcile --------------------------------------------------------------------------

async def _report_problem(api: KubeApi, body: dict[str, Any], reason: str, problem: str,
                          spec: CanarySpec | None) -> None:
    """Phase Error with the reason in the conditions, and one Warning event when the problem is new."""
    old = body.get("status") or {}
    status = plan.problem_status(old, reason, problem, generation=body["metadata"].get("generation"),
                                 now=now(), spec=spec)
    if await patch_status(api, MODEL_CANARY, body, status):
        await post_events(api, body, plan.plan_events(old, status))


async def reconcile(ctx: CanaryContext, namespace: str, name: str,
                    logger: logging.Logger | Any) -> ReconcileResult:
    """observe -> plan -> apply. Raises ApiError for the core to classify."""
    api = ctx.api
    body = await api.get(MODEL_CANARY, name, namespace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return ReconcileResult(Outcome.GONE)
    meta = body["metadata"]
    try:
        spec = parse_spec(body.get("spec"), namespace)
    except InvalidSpec as exc:
        await _report_problem(api, body, CanaryReason.INVALID_SPEC, str(exc), None)
        ctx.core.warn_once(logger, (namespace, name), meta.get("generation"),
                           f"ModelCanary {namespace}/{name} has an invalid spec: {exc}")
        return ReconcileResult(Outcome.INVALID)
    refused = route_namespace_problem(spec, ctx.settings.canary_allowed_route_namespaces)
    if refused is not None:
        await _report_problem(api, body, CanaryReason.CROSS_NAMESPACE_NOT_ALLOWED, refused, spec)
        return ReconcileResult(Outcome.INVALID)
    if FINALIZER not in (meta.get("finalizers") or []):
        # Only the finalizer's handler gives stable its traffic back: no weight before it is on.
        logger.info("ModelCanary %s/%s: waiting for the finalizer before writing routes", namespace, name)
        return ReconcileResult(Outcome.WAITING, requeue_after=FINALIZER_WAIT_SECONDS)

    for isvc in spec.inference_services:
        if await api.get(INFERENCE_SERVICE, isvc, namespace) is None:
            await _report_problem(api, body, CanaryReason.INFERENCE_SERVICE_NOT_FOUND,
                                  f"InferenceService {namespace}/{isvc} does not exist", spec)
            return ReconcileResult(Outcome.WAITING)
    router = ctx.router(spec.route)
    observed = await router.observe(spec.route)
    if observed is None:
        await _report_problem(api, body, *plan.missing_route(spec.route, await router.served(spec.route)), spec)
        return ReconcileResult(Outcome.WAITING)
    if observed.owner_problem is not None:
        await _report_problem(api, body, observed.owner_problem.reason, observed.owner_problem.message, spec)
        return ReconcileResult(Outcome.INVALID)
    me = route_claims.Claimant(namespace, name, str(meta.get("creationTimestamp") or ""), dict(body.get("spec") or {}))
    claimed = route_claims.first_claim(me, route_claimants(ctx.canaries, spec.route), observed.obj, spec)
    if claimed is not None:
        await _report_problem(api, body, CanaryReason.ROUTE_CLAIMED, route_claims.claim_message(*claimed, spec), spec)
        return ReconcileResult(Outcome.INVALID)

    await _release_previous_route(ctx, body, spec, logger)
    generation = meta.get("generation")
    moment = now()
    warm = await observe_warm(api, spec) if spec.require_warm else None
    capacity = await observe_capacity(api, spec, warm) if warm is not None else None  # steps wait for capacity
    decision = plan.next_step(spec, CanaryStatus.parse(body.get("status")), generation, warm, None, moment, capacity)
    if decision.wants_analysis:
        analysis = await analyse(ctx.prometheus, spec)
        decision = plan.next_step(spec, CanaryStatus.parse(body.get("status")), generation, warm, analysis, moment,
                                  capacity)

    try:
        weights, observed = await _apply_weights(ctx, body, spec, observed, decision.percent)
    except RoutingProblem as problem:
        await _report_problem(api, body, problem.reason, problem.message, spec)
        return ReconcileResult(Outcome.INVALID)
    except ApiError as exc:
        if not exc.temporary and not exc.not_found:  # forbidden, refused by a webhook: a person must act
            await _report_problem(api, body, CanaryReason.APPLY_FAILED,
                                  f"writing {spec.route.display} failed: {exc}", spec)
        raise
    old = body.get("status") or {}
    status = plan.plan_status(old, spec, decision, weights, generation=generation, now=moment,
                              route_version=observed.version, capacity=capacity)
    if await patch_status(api, MODEL_CANARY, body, status):
        await post_events(api, body, plan.plan_events(old, status))
    waiting = decision.phase in (CanaryPhase.WAITING_FOR_MODEL, CanaryPhase.WAITING_FOR_CAPACITY)
    return ReconcileResult(Outcome.WAITING if waiting else Outcome.OK, requeue_after=decision.requeue_after)


async def _release_previous_route(ctx: CanaryContext, body: dict[str, Any], spec: CanarySpec,
                                  logger: logging.Logger | Any) -> None:
    """The spec moved to another routing object: the one managed so far gets stable 100% back."""
    status = CanaryStatus.parse(body.get("status"))
    previous = status.route_target()
    if previous is None or previous.same_object(spec.route) or not status.managed_routes:
        return
    await _release(ctx, body, dataclasses.replace(spec, route=previous), status)
    logger.info("ModelCanary %s/%s moved from %s to %s; the first got stable 100%% back",
                body["metadata"]["namespace"], body["metadata"]["name"], previous.display, spec.route.display)


async def _apply_weights(ctx: CanaryContext, body: dict[str, Any], spec: CanarySpec, observed: ObservedRoutes,
                         percent: int) -> tuple[WeightPlan, ObservedRoutes]:
    """Write the split if the routing object does not carry it; on 409 re-read and plan again."""
    router = ctx.router(spec.route)

    async def record_intent(weights: WeightPlan) -> None:
        intent = plan.intent_status(body.get("status"), spec, weights)
        if intent is not None:  # recorded first: the release must know what we appended
            meta = body["metadata"]
            await ctx.api.patch(MODEL_CANARY, meta["name"], {"status": intent}, namespace=meta["namespace"],
                                status=True)
            body["status"] = {**(body.get("status") or {}), **intent}

    for attempt in range(CONFLICT_ATTEMPTS):
        status = CanaryStatus.parse(body.get("status"))
        same = status.route in (None, (spec.route.kind, spec.route.ref))
        try:
            return await router.set_weights(observed, spec, percent,
                                            previously=status.managed_routes if same else (),
                                            added=status.added_candidate_routes if same else (),
                                            before_write=record_intent)
        except ApiError as exc:
            if not exc.conflict or attempt == CONFLICT_ATTEMPTS - 1:
                raise
        await asyncio.sleep(conflict_pause(attempt))
        fresh = await router.observe(spec.route)
        if fresh is None:
            raise ApiError(404, "NotFound", f"{spec.route.display} disappeared while being written")
        observed = fresh
    raise AssertionError("unreachable: the last attempt returns or raises")


def pass_of(ctx: CanaryContext, namespace: str, name: str, logger: logging.Logger | Any) -> Reconcile:
    """One reconcile of the canary, as the core runs (and requeues) it."""
    return lambda: reconcile(ctx, namespace, name, logger)


def error_reporter(ctx: CanaryContext, namespace: str, name: str) -> OnError:
    """An unexpected error, said in status (ReconcileError) before the core retries."""

    async def report_unexpected(problem: str) -> None:
        body = await ctx.api.get(MODEL_CANARY, name, namespace)
        if body is not None:
            await _report_problem(ctx.api, body, CanaryReason.RECONCILE_ERROR, problem, None)

    return report_unexpected


# --- kopf handlers ----------------------------------------------------------------------------

async def canary_changed(namespace: str | None, name: str, memo: Any, logger: kopf.Logger, retry: int,
                         body: kopf.Body | None = None, **_: Any) -> None:
    """Create, resume and spec changes: reconcile now; the core hands failures to kopf's retries."""
    assert namespace is not None  # the CRD is namespaced
    ctx: CanaryContext = memo.canary
    if body is not None:  # kopf's view can be ahead of the informer's: the cache keeps the newer
        remember(ctx.api, MODEL_CANARY, body)
    await ctx.core.run(namespace, name, pass_of(ctx, namespace, name, logger), retry=retry,
                       on_error=error_reporter(ctx, namespace, name))


async def canary_resync(namespace: str, name: str, memo: Any) -> None:
    """The periodic re-check (a missed event, a ModelPrewarm's progress), a few canaries at a time.
    An event's pass: skipped while the object backs off; failures are retried by the core."""
    ctx: CanaryContext = memo.canary
    async with ctx.resync_slots:
        await ctx.core.run(namespace, name, pass_of(ctx, namespace, name, LOGGER), from_child=True,
                           on_error=error_reporter(ctx, namespace, name))


def resync(memo: Any) -> Resync:
    """Every ModelCanary the informer holds, once per resync interval (core.Resync)."""
    return Resync(memo.canary.canaries, lambda namespace, name: spawn(
        canary_resync(namespace, name, memo), f"canary resync {namespace}/{name}"))


async def canary_deleted(body: kopf.Body, namespace: str | None, name: str, memo: Any, logger: kopf.Logger,
                         runtime: datetime.timedelta, **_: Any) -> None:
    """Stable gets 100% again and the candidate destination we appended goes; then kopf releases."""
    assert namespace is not None
    ctx: CanaryContext = memo.canary
    # Its deletionTimestamp, in the cache before any reconcile a child's event starts reads it there.
    remember(ctx.api, MODEL_CANARY, body)
    status = CanaryStatus.parse(body.get("status"))
    ctx.core.forget((namespace, name))
    if not status.managed_routes:
        return  # never wrote a weight (refused, invalid, waiting): nothing to give back
    try:
        spec = parse_spec(body.get("spec"), namespace)
    except InvalidSpec as exc:
        logger.warning("ModelCanary %s/%s: cannot restore stable with an invalid spec (%s); releasing",
                       namespace, name, exc)
        return
    previous = status.route_target()  # the one the managed routes belong to, even if the spec moved on
    if previous is not None:
        spec = dataclasses.replace(spec, route=previous)
    await cleanup_within(f"restoring stable for ModelCanary {namespace}/{name}",
                         lambda: _release(ctx, dict(body), spec, status), runtime=runtime,
                         give_up_after=ctx.settings.finalizer_timeout_seconds, logger=logger)


async def _release(ctx: CanaryContext, body: dict[str, Any], spec: CanarySpec, status: CanaryStatus) -> None:
    # status.route names where we wrote; a forged or since-disallowed one is not written.
    refused = route_namespace_problem(spec, ctx.settings.canary_allowed_route_namespaces)
    if refused is not None:
        LOGGER.warning("ModelCanary %s/%s: not restoring stable: %s",
                       body["metadata"]["namespace"], body["metadata"]["name"], refused)
        return
    release = await ctx.router(spec.route).restore(spec, status.managed_routes, status.added_candidate_routes)
    if release is not None and release.changed:
        await post_events(ctx.api, body, [EventPlan(
            NORMAL, CanaryReason.RELEASED,
            f"stable {spec.stable.display} gets 100% again on {', '.join(release.managed)}")])


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """Attach the handlers; done at start-up (the resync interval comes from settings)."""
    canary = (MODEL_CANARY.group, MODEL_CANARY.version, MODEL_CANARY.plural)
    kopf.on.resume(*canary, registry=registry)(canary_changed)
    kopf.on.create(*canary, registry=registry)(canary_changed)
    kopf.on.update(*canary, field="spec", registry=registry)(canary_changed)
    kopf.on.delete(*canary, registry=registry)(canary_deleted)
    # The resync: one task for every ModelCanary (`resync`, started by the operator), not a kopf timer each.
    # Routing objects and ModelPrewarms reach the core as events through informers (watch_children).


def watch_children(settings: OperatorSettings, cached: CachedKubeApi, memo: Any) -> None:
    """Informers for what a reconcile reads (the ModelCanary, its InferenceServices, routing object and
    ModelPrewarm), so a settled canary reads nothing from the API server; a VirtualService, HTTPRoute or
    ModelPrewarm event wakes the canaries the ModelCanary informer's indices name."""
    # Misses are answers for these (no `get` in the ClusterRole): the handlers put kopf's body in the
    # cache, and a routing object that appears wakes the canaries that named it.
    canaries = cached.inform_namespaces(MODEL_CANARY, settings.namespaces, indexes=informer_indexes(),
                                        authoritative=True)
    memo.canary.canaries = canaries
    cached.inform_namespaces(INFERENCE_SERVICE, settings.namespaces)
    # Every namespace: a canary may route in another one the platform allows. v1, else v1beta1.
    routes = cached.inform([VIRTUAL_SERVICE, VIRTUAL_SERVICE_V1BETA1], authoritative=True)
    routes.subscribe(functools.partial(referenced_object_changed, memo, canaries, BY_VIRTUAL_SERVICE))
    # The Gateway API's, where installed (else looked for again every few minutes, as Istio's).
    http_routes = cached.inform(HTTP_ROUTE, authoritative=True)
    http_routes.subscribe(functools.partial(referenced_object_changed, memo, canaries, BY_HTTP_ROUTE))
    for prewarms in cached.inform_namespaces(MODEL_PREWARM, settings.namespaces):
        prewarms.subscribe(functools.partial(referenced_object_changed, memo, canaries, BY_PREWARM))
