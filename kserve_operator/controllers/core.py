"""The reconcile core every controller runs on: one place for the plumbing, none of the decisions.

- `ReconcileCore.run` serialises reconciles per object (an `asyncio.Lock` each), counts
  consecutive failures per object, records `kserve_operator_reconciles_total{controller,result}`
  and the duration, and turns failures into kopf's retry vocabulary: a temporary `ApiError`
  (no answer, 409, 429, 5xx) becomes `kopf.TemporaryError` with exponential backoff and jitter
  (at least the server's Retry-After), any other `ApiError` a `kopf.PermanentError`. An
  unexpected exception is reported through the controller's `on_error` (so status says
  `Degraded`) and retried with backoff: no crash loop, no silent failure.
- Every path respects the backoff (a Retry-After included): while an object backs off, a
  reconcile started by an event or the resync (`from_child=True`) is skipped (the pending retry
  covers it), and any other (a spec change, a resume) raises `kopf.TemporaryError` for the time left, so kopf
  calls again only once the delay has run out. Checked under the object's lock: a pass that
  waited on the lock behind the failing one is held back too.
- `warn_once` logs a problem that waits for a person once per generation, not on every resync.
- `post_events` writes core/v1 Events through our client; `patch_status` writes only the
  top-level status keys that changed (`write_status`: the patch a typed status view made);
  `apply_child` creates a missing child or patches the managed fields that drifted (planning.diff),
  never a child someone else controls; `read_child` reads a labelled child from its informer,
  a miss included, and a create that meets a same-named object raises `ChildExists`.

Controllers pass a coroutine factory that does observe -> plan -> apply and returns a
`ReconcileResult` (the outcome, and when to look again). What happens next is decided here, for
every controller alike (`run`): a kopf handler's pass (create, resume, a spec change) hands its
failures to kopf's retries as `kopf.TemporaryError(delay=...)`; an event's pass (an informer's or
kopf's `on.event`, `enqueue`, the periodic `Resync`) never raises and the core retries it itself after
the backoff; a result's `requeue_after` puts the object in the core's delayed queue
(controllers/requeue.py), where the earliest pending pass wins and any pass that starts replaces it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import kopf

from kserve_operator import observability
from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import Informer
from kserve_operator.clients.kube import KubeApi, PatchType
from kserve_operator.controllers.requeue import DelayedQueue
from kserve_operator.errors import ApiError
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.diff import child_patch, status_changes
from kserve_operator.planning.events import EventPlan
from kserve_operator.resources.conditions import rfc3339
from kserve_operator.resources.kinds import EVENT, Kind

COMPONENT = "kserve-operator"
log = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(enum.StrEnum):
    OK = "ok"  # reconciled: the world is as planned (or on its way)
    INVALID = "invalid"  # waits for a person: an invalid spec, a name taken by someone else
    WAITING = "waiting"  # waits on something outside: a Job running, a model warming
    SKIPPED = "skipped"  # a child event arrived while the object was backing off
    GONE = "gone"  # the object is gone or being deleted


ObjectKey = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile says happens next: its outcome, and when to look again even if nothing
    changes (a step's interval, a retry the plan scheduled); None: at the next event or resync."""

    outcome: Outcome
    requeue_after: float | None = None


Reconcile = Callable[[], Awaitable[ReconcileResult]]
OnError = Callable[[str], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class _Work:
    """What a pass of the delayed queue runs: the reconcile that asked for it."""

    reconcile: Reconcile
    on_error: OnError | None


def retry_delay(exc: ApiError | None, failures: int) -> float:
    """Backoff for the `failures`-th consecutive failure, never sooner than the server asked."""
    delay = backoff_delay(max(failures - 1, 0))
    if exc is not None and exc.retry_after is not None:
        delay = max(delay, exc.retry_after)
    return delay


class ReconcileCore:
    """Per-controller state shared by its handlers (kept in kopf's memo)."""

    def __init__(self, controller: str, api: KubeApi) -> None:
        self.controller = controller
        self.api = api
        self.locks: collections.defaultdict[ObjectKey, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.failures: dict[ObjectKey, int] = {}
        self.not_before: dict[ObjectKey, float] = {}
        self.queued: set[ObjectKey] = set()  # a child-event pass waits for the object's lock
        self.warned: dict[ObjectKey, tuple[int | None, str]] = {}
        self.requeues: DelayedQueue[_Work] = DelayedQueue(self._due)

    def forget(self, key: ObjectKey) -> None:
        self.locks.pop(key, None)
        self.failures.pop(key, None)
        self.not_before.pop(key, None)
        self.warned.pop(key, None)
        self.requeues.cancel(key)

    def enqueue(self, namespace: str, name: str, reconcile: Reconcile, *, on_error: OnError | None = None) -> None:
        """An event's pass (an informer's subscription, kopf's `on.event`, a requeue that is due): run
        beside the caller, never raising; skipped while the object backs off; failures retried here."""
        spawn(self.run(namespace, name, reconcile, from_child=True, on_error=on_error),
              f"{self.controller} {namespace}/{name}")

    def requeue(self, key: ObjectKey, delay: float, reconcile: Reconcile, on_error: OnError | None = None) -> None:
        """Reconcile `key` again in `delay` seconds (the earliest pending request wins)."""
        self.requeues.add_after(key, delay, _Work(reconcile, on_error))

    def _due(self, key: ObjectKey, work: _Work) -> None:
        self.enqueue(*key, work.reconcile, on_error=work.on_error)

    def backing_off(self, key: ObjectKey) -> bool:
        return self.backoff_left(key) > 0

    def backoff_left(self, key: ObjectKey) -> float:
        """Seconds until the object may be reconciled again (0 when it is not backing off)."""
        return max(self.not_before.get(key, 0.0) - time.monotonic(), 0.0)

    def warn_once(self, logger: logging.Logger | Any, key: ObjectKey, generation: int | None, message: str) -> None:
        """A WARNING the first time `message` is seen for this generation of the object; DEBUG after:
        a problem that waits for a person is in status and in one Event, not in the log every resync."""
        if self.warned.get(key) == (generation, message):
            logger.debug("%s (unchanged)", message)
            return
        self.warned[key] = (generation, message)
        logger.warning("%s", message)

    async def run(
        self,
        namespace: str,
        name: str,
        reconcile: Reconcile,
        *,
        retry: int = 0,
        raise_permanent: bool = False,
        from_child: bool = False,
        on_error: OnError | None = None,
    ) -> Outcome:
        """Run one reconcile under the object's lock and act on its result; returns its outcome.

        A kopf handler's pass raises kopf's errors for kopf to retry. `from_child=True` (an event:
        a child's, a referenced object's, kopf's `on.event`, a requeue) never raises (kopf must not
        retry another resource's handler for us): the core schedules its retry after the backoff.
        A result's `requeue_after` schedules the next pass; a pass that starts cancels a pending one.
        """
        key = (namespace, name)
        if self.backing_off(key):
            return self._held_back(key, from_child)
        if from_child and key in self.queued:
            # A child-event pass already waits for the lock; it reads the (informer-kept) world once
            # it runs, this event's change included: one pass for a burst of child events.
            observability.RECONCILES.labels(controller=self.controller, result=Outcome.SKIPPED).inc()
            return Outcome.SKIPPED
        if from_child:
            self.queued.add(key)
        lock = self.locks[key]  # forget() may drop it from the map while this pass runs
        try:
            await lock.acquire()
        finally:
            if from_child:
                self.queued.discard(key)
        try:
            if self.backing_off(key):  # the pass this one waited behind has just failed
                return self._held_back(key, from_child)
            self.requeues.cancel(key)  # this pass replaces a pending one; its result asks again if it must
            return await self._attempt(key, reconcile, retry=retry, raise_permanent=raise_permanent,
                                       from_child=from_child, on_error=on_error)
        finally:
            lock.release()

    def _held_back(self, key: ObjectKey, from_child: bool) -> Outcome:
        """The object backs off: a child's event is dropped (the pending retry covers it); any other
        caller is told by kopf's TemporaryError to come back when the delay has run out."""
        observability.RECONCILES.labels(controller=self.controller, result=Outcome.SKIPPED).inc()
        if from_child:
            return Outcome.SKIPPED
        left = self.backoff_left(key)
        raise kopf.TemporaryError(f"backing off after {self.failures.get(key, 0)} failure(s); "
                                  f"next attempt in {left:.1f}s", delay=left)

    async def _attempt(
        self,
        key: ObjectKey,
        reconcile: Reconcile,
        *,
        retry: int,
        raise_permanent: bool,
        from_child: bool,
        on_error: OnError | None,
    ) -> Outcome:
        """One reconcile, with the object's lock held; failures set the object's backoff and are
        retried (by kopf for its handlers, by the delayed queue for events); results may requeue."""
        namespace, name = key
        started = time.perf_counter()
        try:
            result = await reconcile()
        except ApiError as exc:
            delay = self._failed(key, exc, retry)
            if from_child:
                log.warning("%s %s/%s: reconcile after an event failed: %s", self.controller, namespace, name, exc)
                if exc.temporary or exc.not_found:  # a refusal (403, 422) waits for a change or the resync
                    self.requeue(key, delay, reconcile, on_error)
                return Outcome.WAITING
            if exc.temporary or exc.not_found:
                raise kopf.TemporaryError(str(exc), delay=delay) from exc
            raise kopf.PermanentError(str(exc)) from exc
        except (kopf.TemporaryError, kopf.PermanentError, asyncio.CancelledError):
            raise
        except Exception as exc:
            delay = self._failed(key, None, retry)
            log.exception("%s %s/%s: unexpected error", self.controller, namespace, name)
            if on_error is not None:
                try:
                    await on_error(f"{type(exc).__name__}: {exc}")
                except Exception:  # reporting is best effort; the retry below still happens
                    log.exception("%s %s/%s: could not report the error in status", self.controller, namespace, name)
            if from_child:
                self.requeue(key, delay, reconcile, on_error)
                return Outcome.WAITING
            raise kopf.TemporaryError(f"unexpected {type(exc).__name__}: {exc}", delay=delay) from exc
        finally:
            observability.RECONCILE_SECONDS.labels(controller=self.controller).observe(time.perf_counter() - started)
        self.failures.pop(key, None)
        self.not_before.pop(key, None)
        outcome = result.outcome
        observability.RECONCILES.labels(controller=self.controller, result=outcome).inc()
        if outcome is Outcome.GONE:
            self.forget(key)
        elif result.requeue_after is not None:
            self.requeue(key, result.requeue_after, reconcile, on_error)
        if outcome is Outcome.INVALID and raise_permanent:
            raise kopf.PermanentError("cannot proceed; see status.conditions")
        return outcome

    def _failed(self, key: ObjectKey, exc: ApiError | None, retry: int) -> float:
        """Count the failure and set the object's backoff; the delay returned is the one every path
        now waits (one jittered value: kopf's retry and the skip of the others agree)."""
        observability.RECONCILES.labels(controller=self.controller, result="error").inc()
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        # kopf's `retry` restarts at 0 on every handler call; the failure count does not.
        delay = retry_delay(exc, max(retry + 1, failures))
        self.not_before[key] = time.monotonic() + delay
        return delay


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def post_events(api: KubeApi, target: Mapping[str, Any], events: Sequence[EventPlan]) -> None:
    """core/v1 Events about `target`. Best effort: a lost Event never fails a reconcile."""
    meta = target.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    for event in events:
        stamp = rfc3339(now())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": target.get("apiVersion"), "kind": target.get("kind"),
                "name": meta.get("name"), "namespace": meta.get("namespace"),
                "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
        }
        try:
            await api.create(EVENT, body)
        except ApiError as exc:
            log.warning("could not post %s event %s on %s/%s: %s", event.type, event.reason,
                        namespace, meta.get("name"), exc)


async def patch_status(api: KubeApi, kind: Kind, body: Mapping[str, Any], new_status: Mapping[str, Any]) -> bool:
    """Write only the top-level status keys that changed; True when something was written."""
    return await write_status(api, kind, body, status_changes(body.get("status"), new_status))


async def write_status(api: KubeApi, kind: Kind, body: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
    """A merge patch of /status with `changes` (a typed status view's `patch_from`); nothing when empty."""
    if not changes:
        return False
    meta = body["metadata"]
    await api.patch(kind, meta["name"], {"status": dict(changes)}, namespace=meta.get("namespace"), status=True)
    return True


class ChildExists(Exception):
    """A create met 409 AlreadyExists: an object the read did not see holds the name (someone
    else's, outside the informer's label selector, or ours not yet in the cache). `live` is it, read
    from the API server, for the caller's ownership check."""

    def __init__(self, kind: Kind, live: dict[str, Any] | None) -> None:
        meta = (live or {}).get("metadata") or {}
        super().__init__(f"{kind.kind} {meta.get('namespace')}/{meta.get('name')} already exists")
        self.kind, self.live = kind, live


async def read_child(api: KubeApi, kind: Kind, name: str, namespace: str, selector: str) -> dict[str, Any] | None:
    """A child that carries `selector`'s labels, from the informer of that selector where there is
    one: a miss costs no request (a same-named object of someone else's surfaces on create as
    `ChildExists`). A plain `get` on an uncached client."""
    if isinstance(api, CachedKubeApi):
        return await api.get_labelled(kind, name, namespace, selector)
    return await api.get(kind, name, namespace)


async def apply_child(
    api: KubeApi, kind: Kind, live: Mapping[str, Any] | None, desired: Mapping[str, Any], *,
    exact: Sequence[str], merged: Sequence[str] = ("metadata.labels",),
) -> tuple[dict[str, Any], bool]:
    """Create `desired` when missing, else patch the managed fields that drifted.

    Returns the object as it now stands and whether a write happened. The caller has checked
    that `live`, if present, is ours (planning.ownership); a create that finds the name taken
    raises `ChildExists` with the object read from the server, for the caller to judge.
    """
    meta = desired["metadata"]
    if live is None:
        try:
            return await api.create(kind, desired), True
        except ApiError as exc:
            if exc.status != 409 or exc.reason != "AlreadyExists":
                raise
            raise ChildExists(kind, await api.get(kind, meta["name"], meta.get("namespace"))) from exc
    ops = child_patch(live, desired, exact=exact, merged=merged)
    if not ops:
        return dict(live), False
    patched = await api.patch(kind, meta["name"], ops, namespace=meta.get("namespace"), patch_type=PatchType.JSON)
    return patched, True


async def cleanup_within(
    what: str, cleanup: Callable[[], Awaitable[T]], *, runtime: datetime.timedelta, give_up_after: float,
    logger: logging.Logger | Any,
) -> T | None:
    """A finalizer's cleanup. API failures retry through kopf until `give_up_after` seconds since the
    deletion began; then the finalizer is released anyway, with a warning: a cleanup the API server
    keeps refusing must not keep the object from being deleted forever. None when released so."""
    try:
        return await cleanup()
    except ApiError as exc:
        if runtime.total_seconds() >= give_up_after:
            logger.warning("%s failed after %.0fs (%s); releasing anyway", what, runtime.total_seconds(), exc)
            return None
        raise kopf.TemporaryError(f"{what} failed: {exc}", delay=2) from exc


# --- the periodic resync -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resync:
    """controller-runtime's SyncPeriod, one task per controller instead of a kopf timer per object
    (a timer is a task of its own per object, and kopf then keeps each object's whole body as last
    seen, managedFields and all): every `interval`, each object the controller's own informers hold
    gets one pass, the passes spread evenly over the interval (never a burst of thousands), each an
    event's pass (`start_pass` -> `ReconcileCore.enqueue`: skipped while the object backs off, a
    Retry-After included; failures retried by the core)."""

    informers: Sequence[Informer]
    start_pass: Callable[[str, str], None]

    def keys(self) -> list[ObjectKey]:
        return [key for informer in self.informers for key in informer.object_keys()]

    async def run_forever(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(interval)
        while True:
            started, due = loop.time(), self.keys()
            for i, (namespace, name) in enumerate(due):
                await asyncio.sleep(max(started + interval * i / len(due) - loop.time(), 0.0))
                self.start_pass(namespace, name)
            await asyncio.sleep(max(started + interval - loop.time(), 0.0))


# --- child watches (informers) -------------------------------------------------------------------

_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(work: Awaitable[Any], name: str) -> None:
    """Run a reconcile an informer's event asked for beside the watch, not inside it: a subscriber
    that awaited it would hold every later event of that kind (and the cache) back meanwhile."""
    async def guarded() -> None:
        try:
            await work
        except (kopf.TemporaryError, kopf.PermanentError) as exc:  # from_child passes never raise these
            log.warning("%s: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)

    task = asyncio.create_task(guarded(), name=name)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)


def remember(api: KubeApi, kind: Kind, body: Mapping[str, Any], event: str | None = None) -> None:
    """kopf's copy of an object can be newer than the informer's (two watches): the cache keeps the newer.
    Not for a DELETED event's body (the informer forgets the object by its own watch)."""
    if isinstance(api, CachedKubeApi) and event != "DELETED":
        api.remember(kind, body)
