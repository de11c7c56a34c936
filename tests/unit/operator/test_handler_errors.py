"""How the reconcile core, under the Memcached handlers, turns failures into kopf's retry decisions.

A fake stands behind the `KubeApi` Protocol and fails as told: these tests are about the
classification (temporary -> backoff with jitter, permanent -> no retry), not about I/O.
Real API behaviour is covered against the emulated server in tests/integration/operator/.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from kserve_operator.controllers import memcached
from kserve_operator.controllers.core import Outcome, ReconcileCore
from kserve_operator.errors import ApiError
from kserve_operator.settings import FINALIZER, OperatorSettings


class FailingKube:
    def __init__(self, status: int, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        self.calls = 0

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise ApiError(self.status, "Reason", "failed", method="GET", path="/x", retry_after=self.retry_after)


def context(api: Any) -> memcached.MemcachedContext:
    return memcached.MemcachedContext(settings=OperatorSettings(), core=ReconcileCore("memcached", api),
                                      prometheus=None)


def memo(status: int, retry_after: float | None = None) -> kopf.Memo:
    return kopf.Memo(memcached=context(FailingKube(status, retry_after)))


@pytest.mark.parametrize("status", [0, 409, 429, 500, 503])
@pytest.mark.parametrize("retry", [0, 3, 10])
def test_temporary_api_errors_retry_with_capped_jittered_backoff(status: int, retry: int) -> None:
    with pytest.raises(kopf.TemporaryError) as info:
        asyncio.run(memcached.memcached_changed("ns", "cache", memo(status), logging.getLogger("t"), retry))
    ceiling = min(60.0, 2.0**retry)
    assert info.value.delay is not None and ceiling * 0.5 <= info.value.delay <= ceiling


@pytest.mark.parametrize("status", [400, 403, 422])
def test_other_api_errors_are_permanent(status: int) -> None:
    with pytest.raises(kopf.PermanentError):
        asyncio.run(memcached.memcached_changed("ns", "cache", memo(status), logging.getLogger("t"), 0))


def test_the_resync_backs_off_too() -> None:
    """Every resync pass starts afresh (no kopf `retry` count); consecutive failures must still grow
    the delay, and the core schedules the retry after it."""
    async def scenario() -> list[float]:
        m = memo(503)
        delays = []
        for _ in range(7):
            m.memcached.core.not_before.clear()  # the delay has run out before this pass
            await memcached.memcached_resync("ns", "cache", m)
            delays.append(m.memcached.core.backoff_left(("ns", "cache")))
            assert m.memcached.core.requeues.due_in(("ns", "cache")) == pytest.approx(delays[-1], abs=0.05)
        return delays

    delays = asyncio.run(scenario())
    assert delays[0] <= 1.0
    assert delays[-1] >= min(60.0, 2.0**6) * 0.5 - 0.05  # the 60 s cap, jittered down to half


def test_retry_after_on_a_429_is_honoured() -> None:
    with pytest.raises(kopf.TemporaryError) as info:
        asyncio.run(memcached.memcached_changed("ns", "cache", memo(429, retry_after=45), logging.getLogger("t"), 0))
    assert info.value.delay == 45


def test_reconciles_started_by_child_events_back_off_too() -> None:
    api = FailingKube(503)
    m = kopf.Memo(memcached=context(api))
    asyncio.run(memcached.memcached_resync("ns", "cache", m))  # fails: the object backs off
    assert api.calls == 1
    child = {"metadata": {"namespace": "ns", "ownerReferences": [
        {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "name": "cache", "uid": "u",
         "controller": True}]}}
    for _ in range(5):  # a flapping Deployment: every event is skipped while the cache backs off
        asyncio.run(memcached.child_changed(child, "MODIFIED", m, logging.getLogger("t")))
    assert api.calls == 1
    m.memcached.core.not_before.clear()  # the backoff has run out
    asyncio.run(memcached.child_changed(child, "MODIFIED", m, logging.getLogger("t")))
    assert api.calls == 2


class RecordingKube:
    """Reads return the cache and nothing else; creating a Deployment fails as told; writes are recorded."""

    def __init__(self, create_error: Exception) -> None:
        self.create_error = create_error
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.body = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                     "metadata": {"name": "cache", "namespace": "ns", "uid": "u", "generation": 1,
                                  "finalizers": [FINALIZER]},
                     "spec": {"size": 1}}

    async def get(self, kind: Any, name: str, namespace: str | None = None) -> Any:
        return self.body if kind.plural == "memcacheds" else None

    async def create(self, kind: Any, body: Any) -> Any:
        if kind.plural == "events":
            self.events.append(body)
            return body
        raise self.create_error

    async def patch(self, kind: Any, name: str, patch: Any, **kwargs: Any) -> Any:
        assert kwargs.get("status") is True
        self.status_patches.append(patch)
        return self.body


def test_a_refused_change_is_reported_in_status_and_not_retried() -> None:
    api = RecordingKube(ApiError(403, "Forbidden", "deployments.apps is forbidden", method="POST", path="/x"))
    with pytest.raises(kopf.PermanentError, match="forbidden"):
        asyncio.run(memcached.memcached_changed("ns", "cache", kopf.Memo(memcached=context(api)),
                                                logging.getLogger("t"), 0))
    status = api.status_patches[-1]["status"]
    assert status["phase"] == "Error"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "forbidden" in degraded["message"]
    assert [(e["type"], e["reason"], e["involvedObject"]["name"]) for e in api.events] == [
        ("Warning", "ApplyFailed", "cache")]


def test_an_unexpected_error_sets_degraded_and_retries_with_backoff() -> None:
    api = RecordingKube(RuntimeError("boom"))
    with pytest.raises(kopf.TemporaryError, match="RuntimeError") as info:
        asyncio.run(memcached.memcached_changed("ns", "cache", kopf.Memo(memcached=context(api)),
                                                logging.getLogger("t"), 0))
    assert info.value.delay is not None and info.value.delay <= 1.0
    degraded = next(c for c in api.status_patches[-1]["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ReconcileError" and "boom" in degraded["message"]
    assert [e["reason"] for e in api.events] == ["ReconcileError"]


def test_a_deleted_object_is_forgotten() -> None:
    class Gone:
        async def get(self, *args: Any, **kwargs: Any) -> Any:
            return None

    ctx = context(Gone())
    ctx.core.failures[("ns", "cache")] = 3
    outcome = asyncio.run(ctx.core.run("ns", "cache", lambda: memcached.reconcile(ctx, "ns", "cache",
                                                                                   logging.getLogger("t"))))
    assert outcome is Outcome.GONE and ("ns", "cache") not in ctx.core.failures
