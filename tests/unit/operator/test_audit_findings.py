"""The outside audit's three findings, against the reconcile core and the controllers with a fake API.

1. A resync tick (or any path other than kopf's own retry) ran while the object was backing off
   after 429s with Retry-After; every path must wait the delay out.
2. A Memcached's children (and a ModelCanary's routes) were written before kopf's finalizer was
   on, so a delete in that window skipped the cleanup.
3. An invalid name logged a WARNING on every resync; once per generation is enough.

The same findings against the real operator process on the emulated cluster are in
tests/integration/operator/test_audit_findings.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch
import kopf
import pytest

from kserve_operator.controllers import canary, memcached
from kserve_operator.controllers.core import Outcome, ReconcileCore, ReconcileResult
from kserve_operator.errors import ApiError
from kserve_operator.planning import memcached as plan
from kserve_operator.resources.memcached import Memcached
from kserve_operator.settings import FINALIZER, OperatorSettings

NS, NAME = "ns", "cache"
KEY = (NS, NAME)
LOG = logging.getLogger("test.audit")


def too_many_requests(retry_after: float) -> ApiError:
    return ApiError(429, "TooManyRequests", "slow down", method="PATCH", path="/deployments/cache",
                    retry_after=retry_after)


class FakeCluster:
    """A Memcached (spec.size 2) whose Deployment runs 1 replica; writes are recorded, and the next
    Deployment PATCHes fail with the errors queued in `patch_errors`."""

    def __init__(self, *, name: str = NAME, finalized: bool = True, deployment: bool = True) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": "u-1", "generation": 1}
        if finalized:
            meta["finalizers"] = [FINALIZER]
        self.body: dict[str, Any] = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                                     "metadata": meta, "spec": {"size": 2}}
        self.objects: dict[str, dict[str, Any]] = {}
        if deployment:
            live = plan.build_deployment(Memcached.parse(self.body), 1, plan.MemcachedImages())
            live["metadata"]["resourceVersion"] = "5"
            self.objects["deployments"] = live
        self.patch_errors: list[ApiError] = []
        self.calls: list[tuple[str, str]] = []  # (verb, plural), every call
        self.events: list[dict[str, Any]] = []

    def writes(self, plural: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1] == plural and c[0] in ("create", "patch")]

    async def get(self, kind: Any, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("get", kind.plural))
        if kind.plural == "memcacheds":
            return copy.deepcopy(self.body)
        found = self.objects.get(kind.plural)
        return copy.deepcopy(found) if found is not None else None

    async def create(self, kind: Any, body: Any) -> Any:
        self.calls.append(("create", kind.plural))
        if kind.plural == "events":
            self.events.append(body)
            return body
        self.objects[kind.plural] = {**copy.deepcopy(body), "status": {}}
        return copy.deepcopy(self.objects[kind.plural])

    async def patch(self, kind: Any, name: str, patch: Any, **kwargs: Any) -> Any:
        self.calls.append(("patch", kind.plural))
        if kwargs.get("status"):
            self.body["status"] = {**(self.body.get("status") or {}), **patch["status"]}
            return copy.deepcopy(self.body)
        if kind.plural == "deployments" and self.patch_errors:
            raise self.patch_errors.pop(0)
        live = self.objects[kind.plural]
        self.objects[kind.plural] = (jsonpatch.apply_patch(live, patch) if isinstance(patch, list)
                                     else {**live, **patch})
        return copy.deepcopy(self.objects[kind.plural])


def memo_for(api: Any) -> kopf.Memo:
    return kopf.Memo(memcached=memcached.MemcachedContext(
        settings=OperatorSettings(), core=ReconcileCore("memcached", api), prometheus=None))


def child_event() -> Any:  # a kopf.Body in kopf's hands; a plain dict stands in
    return {"metadata": {"namespace": NS, "ownerReferences": [
        {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "name": NAME, "uid": "u-1",
         "controller": True}]}}


# --- 1. Retry-After on every path -------------------------------------------------------------------

def test_after_three_429s_with_retry_after_the_resync_waits_too() -> None:
    """The audit's sequence: three 429s (Retry-After: 5) met by the handler and its retries; the
    resync pass that follows must not PATCH again before the 5 s are over."""

    async def scenario() -> None:
        api = FakeCluster()
        api.patch_errors = [too_many_requests(5), too_many_requests(5), too_many_requests(5)]
        m = memo_for(api)
        core: ReconcileCore = m.memcached.core
        for retry in range(3):
            core.not_before.clear()  # kopf's retry comes once the previous delay has run out
            with pytest.raises(kopf.TemporaryError) as info:
                await memcached.memcached_changed(NS, NAME, m, LOG, retry)
            assert info.value.delay is not None and info.value.delay >= 5
        assert len(api.writes("deployments")) == 3
        calls = len(api.calls)

        await memcached.memcached_resync(NS, NAME, m)  # the resync's pass is skipped while it backs off
        assert 4.5 < core.backoff_left(KEY) <= 5, "no sooner than the server asked"
        await memcached.child_changed(child_event(), "MODIFIED", m, LOG)
        with pytest.raises(kopf.TemporaryError, match="backing off"):  # a spec change waits too
            await memcached.memcached_changed(NS, NAME, m, LOG, 0)
        assert len(api.calls) == calls, "nothing, not even a GET, while the server asked us to wait"

        core.not_before[KEY] -= 5  # the 5 s have passed
        await memcached.memcached_resync(NS, NAME, m)
        assert api.objects["deployments"]["spec"]["replicas"] == 2
        assert KEY not in core.not_before and KEY not in core.failures

    asyncio.run(scenario())


def test_kopfs_delay_and_the_objects_backoff_are_one_value() -> None:
    """One jittered delay: kopf's own retry never finds the object still backing off."""

    async def scenario() -> None:
        api = FakeCluster()
        api.patch_errors = [ApiError(503, "ServiceUnavailable", "etcd", method="PATCH", path="/x")]
        m = memo_for(api)
        with pytest.raises(kopf.TemporaryError) as info:
            await memcached.memcached_changed(NS, NAME, m, LOG, 4)
        left = m.memcached.core.backoff_left(KEY)
        assert info.value.delay is not None and 0 <= info.value.delay - left < 0.05

    asyncio.run(scenario())


@pytest.mark.parametrize("from_child", [False, True])
def test_a_pass_queued_on_the_lock_behind_a_failing_one_is_held_back(from_child: bool) -> None:
    """A timer tick that arrives while the handler is mid-reconcile waits on the lock; when the
    handler fails with a Retry-After, the tick must not go ahead as soon as it gets the lock."""

    async def scenario() -> None:
        core = ReconcileCore("test", api=None)  # type: ignore[arg-type]  # the reconciles below call nothing
        inside, release = asyncio.Event(), asyncio.Event()
        ran: list[str] = []

        async def failing() -> ReconcileResult:
            ran.append("failing")
            inside.set()
            await release.wait()
            raise too_many_requests(5)

        async def second() -> ReconcileResult:
            ran.append("second")
            return ReconcileResult(Outcome.OK)

        first = asyncio.create_task(core.run(NS, NAME, failing))
        await inside.wait()
        queued = asyncio.create_task(core.run(NS, NAME, second, from_child=from_child))
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(kopf.TemporaryError):
            await first
        if from_child:
            assert await queued is Outcome.SKIPPED
        else:
            with pytest.raises(kopf.TemporaryError, match="backing off"):
                await queued
        assert ran == ["failing"]

    asyncio.run(scenario())


def test_every_controller_goes_through_the_same_gate() -> None:
    """The gate is in `ReconcileCore.run`, which every controller's every path calls: a caller that
    is not a child event gets kopf's TemporaryError for the time left, never a reconcile."""

    async def scenario() -> None:
        core = ReconcileCore("any", api=None)  # type: ignore[arg-type]
        core.failures[KEY] = 3
        core.not_before[KEY] = asyncio.get_running_loop().time() + 100  # loop time is time.monotonic
        calls = 0

        async def reconcile() -> ReconcileResult:
            nonlocal calls
            calls += 1
            return ReconcileResult(Outcome.OK)

        variants: list[dict[str, Any]] = [{}, {"retry": 2}, {"raise_permanent": True}]
        for kwargs in variants:
            with pytest.raises(kopf.TemporaryError, match="after 3 failure") as info:
                await core.run(NS, NAME, reconcile, **kwargs)
            assert info.value.delay is not None and 99 < info.value.delay <= 100
        assert await core.run(NS, NAME, reconcile, from_child=True) is Outcome.SKIPPED
        assert calls == 0
        core.not_before[KEY] -= 100
        assert await core.run(NS, NAME, reconcile) is Outcome.OK and calls == 1

    asyncio.run(scenario())


# --- 2. No children before the finalizer --------------------------------------------------------------

def test_a_memcached_creates_no_children_until_its_finalizer_is_on() -> None:
    async def scenario() -> None:
        api = FakeCluster(finalized=False, deployment=False)
        m = memo_for(api)
        for _ in range(3):  # resync ticks while kopf's own PATCH of the finalizer keeps failing
            await memcached.memcached_resync(NS, NAME, m)
        assert "deployments" not in api.objects and "services" not in api.objects
        assert api.writes("deployments") == [] and api.writes("services") == []

        api.body["metadata"]["finalizers"] = ["someone-else/finalizer"]  # not ours: still waiting
        await memcached.memcached_resync(NS, NAME, m)
        assert "deployments" not in api.objects

        api.body["metadata"]["finalizers"].append(FINALIZER)  # kopf's PATCH got through
        await memcached.memcached_resync(NS, NAME, m)
        assert api.objects["deployments"]["spec"]["replicas"] == 2
        assert "services" in api.objects

    asyncio.run(scenario())


def test_an_invalid_memcached_is_reported_even_before_its_finalizer() -> None:
    """Waiting for the finalizer holds back children only; a problem in the object is said at once."""
    api = FakeCluster(name="with.dots", finalized=False, deployment=False)
    result = asyncio.run(memcached.reconcile(memo_for(api).memcached, NS, "with.dots", LOG))
    assert result.outcome is Outcome.INVALID
    assert api.body["status"]["phase"] == "Error"


class CanaryApi:
    """Only the ModelCanary exists: a canary that waits for its finalizer must read nothing else."""

    def __init__(self, finalizers: Sequence[str]) -> None:
        self.body = {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
                     "metadata": {"name": "mnist", "namespace": NS, "generation": 1,
                                  "finalizers": list(finalizers)},
                     "spec": {"virtualService": {"name": "mnist"}, "stable": {"inferenceService": "a"},
                              "candidate": {"inferenceService": "b"}, "percent": 20}}
        self.calls: list[tuple[str, str]] = []

    async def get(self, kind: Any, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("get", kind.plural))
        return copy.deepcopy(self.body) if kind.plural == "modelcanaries" else None

    async def create(self, kind: Any, body: Mapping[str, Any]) -> Any:
        self.calls.append(("create", kind.plural))
        return body

    async def patch(self, kind: Any, name: str, patch: Any, **kwargs: Any) -> Any:
        self.calls.append(("patch", kind.plural))
        return self.body


def test_a_canary_writes_no_route_until_its_finalizer_is_on() -> None:
    api = CanaryApi(finalizers=[])
    ctx = canary.new_context(OperatorSettings(), api, None)  # type: ignore[arg-type]
    result = asyncio.run(canary.reconcile(ctx, NS, "mnist", LOG))
    assert result.outcome is Outcome.WAITING
    assert api.calls == [("get", "modelcanaries")], "no VirtualService read or written, no status written"
    assert result.requeue_after == canary.FINALIZER_WAIT_SECONDS

    api = CanaryApi(finalizers=[FINALIZER])  # with it the pass goes on (here: to the missing services)
    asyncio.run(canary.reconcile(canary.new_context(OperatorSettings(), api, None),  # type: ignore[arg-type]
                                 NS, "mnist", LOG))
    assert ("get", "inferenceservices") in api.calls


# --- 3. An invalid name is logged once per generation -------------------------------------------------

def warnings_about(records: Sequence[logging.LogRecord], text: str) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_an_invalid_name_is_logged_once_per_generation(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        api = FakeCluster(name="with.dots", deployment=False)
        m = memo_for(api)
        for _ in range(6):
            await memcached.memcached_resync(NS, "with.dots", m)
        assert len(warnings_about(caplog.records, "with.dots")) == 1
        assert api.body["status"]["phase"] == "Error"
        assert [e["reason"] for e in api.events] == ["InvalidName"], "one Warning event, as before"
        assert len(api.writes("memcacheds")) == 1, "the status is written once"

        api.body["metadata"]["generation"] = 2  # an edit: said again, once
        for _ in range(3):
            await memcached.memcached_resync(NS, "with.dots", m)
        assert len(warnings_about(caplog.records, "with.dots")) == 2

    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        asyncio.run(scenario())


def test_an_invalid_spec_is_logged_once_per_generation_and_a_new_problem_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        api = FakeCluster(deployment=False)
        api.body["spec"] = {"size": -1}
        m = memo_for(api)
        for _ in range(4):
            await memcached.memcached_resync(NS, NAME, m)
        assert len(warnings_about(caplog.records, "invalid spec")) == 1
        api.body["spec"] = {"size": "many"}  # another problem in the same generation is news
        await memcached.memcached_resync(NS, NAME, m)
        await memcached.memcached_resync(NS, NAME, m)
        assert len(warnings_about(caplog.records, "invalid spec")) == 2

    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        asyncio.run(scenario())


def test_a_deleted_object_is_warned_about_again_if_it_comes_back() -> None:
    core = ReconcileCore("test", api=None)  # type: ignore[arg-type]
    seen: list[str] = []

    class Recorder:
        def warning(self, fmt: str, *args: Any) -> None:
            seen.append(fmt % args)

        def debug(self, fmt: str, *args: Any) -> None:
            pass

    core.warn_once(Recorder(), KEY, 1, "bad")
    core.warn_once(Recorder(), KEY, 1, "bad")
    core.forget(KEY)
    core.warn_once(Recorder(), KEY, 1, "bad")
    assert seen == ["bad", "bad"]
