"""How the Memcached handlers turn API failures into kopf's retry decisions.

The API client is replaced by a stand-in that fails every call: these tests are about the
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
from kserve_operator.errors import ApiError
from kserve_operator.settings import OperatorSettings


class FailingKube:
    def __init__(self, status: int) -> None:
        self.status = status

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        raise ApiError(self.status, "Reason", "failed", method="GET", path="/x")


def memo(status: int) -> kopf.Memo:
    ctx = memcached.MemcachedContext(settings=OperatorSettings(), kube=FailingKube(status), prometheus=None)  # type: ignore[arg-type]
    return kopf.Memo(memcached=ctx)


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


def test_the_resync_timer_backs_off_too() -> None:
    """kopf restarts `retry` at 0 on every timer tick; consecutive failures must still grow the delay."""
    m = memo(503)
    delays = []
    for _ in range(7):
        with pytest.raises(kopf.TemporaryError) as info:
            asyncio.run(memcached.memcached_resync("ns", "cache", m, logging.getLogger("t")))
        delays.append(info.value.delay)
    assert delays[0] is not None and delays[0] <= 1.0
    assert delays[-1] is not None and delays[-1] >= 32.0  # 2**6 * 0.5


class RefusingKube:
    """Reads succeed; creating the Deployment is forbidden (e.g. RBAC or admission)."""

    def __init__(self) -> None:
        self.status_patches: list[dict[str, Any]] = []
        self.body = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                     "metadata": {"name": "cache", "namespace": "ns", "uid": "u", "generation": 1},
                     "spec": {"size": 1}}

    async def get(self, res: Any, namespace: str, name: str) -> Any:
        return self.body if res.plural == "memcacheds" else None

    async def create(self, res: Any, body: Any) -> Any:
        raise ApiError(403, "Forbidden", "deployments.apps is forbidden", method="POST", path="/apis/apps/v1")

    async def patch(self, res: Any, namespace: str, name: str, patch: Any, **kwargs: Any) -> Any:
        self.status_patches.append(patch)
        return self.body


def test_a_refused_change_is_reported_in_status_and_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = RefusingKube()
    ctx = memcached.MemcachedContext(settings=OperatorSettings(), kube=kube, prometheus=None)  # type: ignore[arg-type]
    emitted: list[tuple[str, str]] = []
    # kopf.event needs a running operator's context; record what would be posted instead.
    monkeypatch.setattr(memcached, "_emit", lambda body, events: emitted.extend((e.type, e.reason) for e in events))
    with pytest.raises(kopf.PermanentError, match="forbidden"):
        asyncio.run(memcached.memcached_changed("ns", "cache", kopf.Memo(memcached=ctx), logging.getLogger("t"), 0))
    status = kube.status_patches[-1]["status"]
    assert status["phase"] == "Error"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "forbidden" in degraded["message"]
    assert emitted == [("Warning", "ApplyFailed")]
