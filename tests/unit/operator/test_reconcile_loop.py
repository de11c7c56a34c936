"""The one loop every controller shares (controllers/core.py, controllers/requeue.py): a result's
`requeue_after` reconciles the object again (the earliest pending requeue wins; a pass that starts
replaces it), an event's failed pass is retried by the core after the backoff (never sooner than a
Retry-After), and a kopf handler's failure goes back to kopf. No kopf and no API server: the
reconciles are plain coroutines, the clock is the event loop's."""

from __future__ import annotations

import asyncio
import itertools

import kopf
import pytest

from kserve_operator.clients.informer import Informer
from kserve_operator.controllers import canary, inferenceservice, memcached, prewarm
from kserve_operator.controllers.core import Outcome, ReconcileCore, ReconcileResult, Resync
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import MEMCACHED
from kserve_operator.settings import OperatorSettings

KEY = ("ns", "a")


def core() -> ReconcileCore:
    return ReconcileCore("test", api=None)  # type: ignore[arg-type]  # the reconciles below call nothing


def test_a_requeue_reconciles_the_object_again_after_its_delay() -> None:
    async def scenario() -> None:
        c = core()
        passes: list[float] = []
        loop = asyncio.get_running_loop()

        async def reconcile() -> ReconcileResult:
            passes.append(loop.time())
            return ReconcileResult(Outcome.OK, requeue_after=0.2 if len(passes) == 1 else None)

        start = loop.time()
        assert await c.run(*KEY, reconcile) is Outcome.OK
        assert c.requeues.due_in(KEY) is not None
        await asyncio.sleep(0.4)
        assert len(passes) == 2 and passes[1] - start >= 0.2, "once more, after the delay, and no more"
        assert len(c.requeues) == 0

    asyncio.run(scenario())


def test_the_earliest_requeue_wins_and_a_pass_that_starts_replaces_it() -> None:
    async def scenario() -> None:
        c = core()
        ran: list[str] = []

        def pass_named(label: str, requeue_after: float | None = None) -> ReconcileResult:
            ran.append(label)
            return ReconcileResult(Outcome.OK, requeue_after)

        async def late() -> ReconcileResult:
            return pass_named("late")

        async def soon() -> ReconcileResult:
            return pass_named("soon")

        c.requeue(KEY, 5.0, late)
        c.requeue(KEY, 0.1, soon)
        c.requeue(KEY, 3.0, late)  # later than the pending one: changes nothing
        due = c.requeues.due_in(KEY)
        assert due is not None and due <= 0.1
        await asyncio.sleep(0.3)
        assert ran == ["soon"] and len(c.requeues) == 0

        c.requeue(KEY, 0.2, late)

        async def event() -> ReconcileResult:
            return pass_named("event", requeue_after=10.0)

        await c.run(*KEY, event, from_child=True)  # a newer event runs at once and replaces the pending one
        due = c.requeues.due_in(KEY)
        assert due is not None and due > 9, "the new pass's own requeue is the one pending"
        await asyncio.sleep(0.3)
        assert ran == ["soon", "event"]
        c.forget(KEY)
        assert len(c.requeues) == 0

    asyncio.run(scenario())


def test_an_events_failed_pass_is_retried_by_the_core_after_the_retry_after() -> None:
    async def scenario() -> None:
        c = core()
        loop = asyncio.get_running_loop()
        attempts: list[float] = []

        async def reconcile() -> ReconcileResult:
            attempts.append(loop.time())
            if len(attempts) == 1:
                raise ApiError(429, "TooManyRequests", "slow down", retry_after=0.3)
            return ReconcileResult(Outcome.OK)

        assert await c.run(*KEY, reconcile, from_child=True) is Outcome.WAITING  # never raises
        due = c.requeues.due_in(KEY)
        assert due is not None and due >= 0.29, "the retry is scheduled, not sooner than Retry-After"
        assert await c.run(*KEY, reconcile, from_child=True) is Outcome.SKIPPED  # backing off: the retry covers it
        await asyncio.sleep(1.2)  # the backoff for a first failure is at most 1 s
        assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.3
        assert KEY not in c.failures and len(c.requeues) == 0

    asyncio.run(scenario())


def test_a_refusal_after_an_event_is_not_retried_and_a_handlers_failure_goes_to_kopf() -> None:
    async def scenario() -> None:
        c = core()

        async def forbidden() -> ReconcileResult:
            raise ApiError(403, "Forbidden", "no")

        assert await c.run(*KEY, forbidden, from_child=True) is Outcome.WAITING
        assert len(c.requeues) == 0, "a 403 waits for a change or the resync"
        c.not_before.clear()

        async def throttled() -> ReconcileResult:
            raise ApiError(429, "TooManyRequests", "slow down", retry_after=2)

        with pytest.raises(kopf.TemporaryError) as info:
            await c.run(*KEY, throttled, retry=0)
        assert info.value.delay is not None and info.value.delay >= 2
        assert len(c.requeues) == 0, "kopf retries its own handler; the core schedules nothing beside it"

    asyncio.run(scenario())


def test_no_controller_schedules_its_own_passes() -> None:
    """One loop: no controller has a daemon or timer of its own per object (the resync is one task per
    controller: core.Resync), nor wake-up events of its own; every controller registers kopf
    handlers and hands passes to the core."""
    registry = kopf.OperatorRegistry()
    settings = OperatorSettings()
    for controller in (memcached, prewarm, inferenceservice, canary):
        controller.register(settings, registry)
    spawned = list(registry._spawning.get_all_handlers())  # kopf's daemons and timers
    assert spawned == [], "no kopf timer or daemon per object: the resync is one task per controller"
    assert all(callable(controller.resync) for controller in (memcached, prewarm, canary))
    assert not hasattr(canary, "canary_daemon") and "wakeups" not in canary.CanaryContext.__dataclass_fields__
    assert "retries" not in inferenceservice.ServiceWatchContext.__dataclass_fields__


def _memcached(name: str, version: str = "1") -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


def test_the_resync_visits_every_object_once_per_interval_spread_evenly() -> None:
    """One task per controller: each object the informer holds gets one pass per interval, the passes
    spread over it (no burst), objects created since are included and deleted ones are not."""
    async def scenario() -> list[tuple[float, tuple[str, str]]]:
        informer = Informer(None, [MEMCACHED], backoff=lambda n: 0.0)  # type: ignore[arg-type]
        for name in ("a", "b", "c", "d"):
            informer.offer(_memcached(name))
        loop = asyncio.get_running_loop()
        passes: list[tuple[float, tuple[str, str]]] = []
        begun = loop.time()
        task = asyncio.create_task(Resync([informer], lambda ns, n: passes.append((loop.time() - begun, (ns, n))))
                                   .run_forever(0.4))
        await asyncio.sleep(0.65)
        informer.discard("ns", "d")
        informer.offer(_memcached("e"))
        await asyncio.sleep(0.55)  # the second sweep: 0.8, 0.9, 1.0, 1.1 s
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return passes

    passes = asyncio.run(scenario())
    first = [key for at, key in passes if at < 0.8]
    second = [key for at, key in passes if 0.8 <= at < 1.2]
    assert [n for _, n in first] == ["a", "b", "c", "d"], "nothing before the first interval, each once"
    assert sorted(n for _, n in second) == ["a", "b", "c", "e"]
    times = [at for at, _ in passes if at < 0.8]
    assert times[0] >= 0.38 and all(0.06 <= b - a <= 0.16 for a, b in itertools.pairwise(times)), times

