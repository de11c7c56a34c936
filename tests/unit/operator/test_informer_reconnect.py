"""An informer whose API server does not answer keeps looking at least every few seconds, so its
cache is current soon after the server is back (issue 17: after a 6 s kube-apiserver restart the
informers waited a backoff grown to ~8 s); throttling and server errors keep the full backoff."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kserve_operator.clients import informer as informer_module
from kserve_operator.clients.informer import UNREACHABLE_RETRY_SECONDS, Informer
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import NODE


class DownFor:
    """A server that fails every listing `times` times with `status`, then answers an empty list."""

    def __init__(self, times: int, status: int) -> None:
        self.left, self.status = times, status

    async def list_with_version(self, *_: Any, **__: Any) -> tuple[list[dict[str, Any]], str]:
        if self.left:
            self.left -= 1
            raise ApiError(self.status, "Down", "no answer", method="LIST", path="nodes")
        return [], "1"

    async def watch(self, *_: Any, **__: Any) -> Any:
        await asyncio.Event().wait()  # a watch that stays open
        yield {}


def waits(status: int, failures: int, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(informer_module.asyncio, "sleep", sleep)

    async def run() -> None:
        informer = Informer(DownFor(failures, status), [NODE], backoff=lambda retry: 2.0 ** retry)  # no jitter
        informer.start()
        await asyncio.wait_for(informer.synced.wait(), timeout=5)
        await informer.stop()

    asyncio.run(run())
    return slept


def test_an_unreachable_server_is_tried_again_within_seconds_however_long_it_was_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept = waits(0, 8, monkeypatch)
    assert len(slept) == 8 and max(slept) <= UNREACHABLE_RETRY_SECONDS
    assert slept[:2] == [1.0, 2.0]  # the backoff itself while below the bound
    assert all(UNREACHABLE_RETRY_SECONDS / 2 <= s <= UNREACHABLE_RETRY_SECONDS for s in slept[2:])  # jittered


def test_a_server_that_answers_with_errors_keeps_the_full_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = waits(503, 6, monkeypatch)
    assert slept == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


def test_a_read_of_a_kind_whose_listing_failed_goes_to_the_server_without_waiting() -> None:
    """The Gateway API not installed: the HTTPRoute informer's first listing answered 404; a canary's
    read must not wait FIRST_LISTING_WAIT_SECONDS for a listing that will not come on every pass."""
    from kserve_operator.clients.cached_kube import CachedKubeApi
    from kserve_operator.resources.kinds import HTTP_ROUTE

    class Server:
        gets = 0

        async def get(self, *_: Any, **__: Any) -> None:
            Server.gets += 1

    async def run() -> float:
        cached = CachedKubeApi(Server(), backoff=lambda retry: 1.0)  # type: ignore[arg-type]
        informer = cached.inform(HTTP_ROUTE, authoritative=True)
        informer.tried.set()  # the first listing was attempted and failed: never synced
        started = asyncio.get_running_loop().time()
        assert await cached.get(HTTP_ROUTE, "mnist", "ml") is None
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(run()) < 1.0 and Server.gets == 1
