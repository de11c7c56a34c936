"""The client-side request limit (clients/rate_limiter.py) on a virtual clock, and its settings.

A token bucket as client-go's: `burst` at once, then `qps` per second; grants in arrival order, so
a write queued behind reads waits for those only; a cancelled waiter gives its token back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.clients.rate_limiter import TokenBucket
from kserve_operator.settings import OperatorSettings, parse_settings


class VirtualClock:
    """Time that moves only when the test says; sleepers wake in due order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move to now + seconds, waking each sleeper at its due time and letting it run."""
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not future.done():
                future.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self.now = target
        for _ in range(5):
            await asyncio.sleep(0)


def test_burst_at_once_then_qps() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(20, 30, clock=clock)
    assert [bucket.reserve() for _ in range(30)] == [0.0] * 30
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.05, 0.10, 0.15])


def test_an_idle_bucket_refills_to_the_burst_and_no_further() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(10, 5, clock=clock)
    for _ in range(5):
        bucket.reserve()
    clock.now = 0.3  # three tokens back
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])
    clock.now = 1000.0  # idle for long: still only `burst` at once
    assert [bucket.reserve() for _ in range(6)] == pytest.approx([0.0] * 5 + [0.1])


@given(gaps=st.lists(st.floats(min_value=0.0, max_value=0.5, allow_nan=False), min_size=1, max_size=300),
       qps=st.floats(min_value=0.5, max_value=100.0), burst=st.integers(min_value=1, max_value=50))
def test_no_window_ever_holds_more_than_burst_plus_qps_times_its_length(
        gaps: list[float], qps: float, burst: int) -> None:
    """Any arrival pattern: in every window [a, b] of grant times at most burst + qps*(b-a) requests go,
    and grants keep the arrival order (first come, first served)."""
    clock = VirtualClock()
    bucket = TokenBucket(qps, burst, clock=clock)
    grants = []
    for gap in gaps:
        clock.now += gap
        grants.append(clock.now + bucket.reserve())
    assert grants == sorted(grants)
    for first in range(len(grants)):
        for last in range(first, len(grants)):
            assert last - first + 1 <= burst + qps * (grants[last] - grants[first]) + 1e-6


async def test_a_write_waits_for_the_reads_before_it_never_for_those_after() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(50, 100, clock=clock.__call__, sleep=clock.sleep)
    done: list[str] = []

    async def request(what: str) -> None:
        await bucket.wait()
        done.append(what)

    tasks = [asyncio.create_task(request(f"read {i}")) for i in range(1000)]
    tasks.append(asyncio.create_task(request("write")))
    tasks += [asyncio.create_task(request(f"late read {i}")) for i in range(1000)]
    await clock.advance(0)
    assert len(done) == 100  # the burst
    await clock.advance((1001 - 100) / 50 - 0.01)
    assert "write" not in done  # 900 reads were before it
    await clock.advance(0.02)
    assert done[-1] == "write" and not any(d.startswith("late") for d in done)
    await clock.advance(1000 / 50)
    await asyncio.gather(*tasks)
    assert done.index("write") == 1000


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(1, 1, clock=clock.__call__, sleep=clock.sleep)
    assert await bucket.wait() == 0.0
    waiting = asyncio.create_task(bucket.wait())  # due in 1 s
    await clock.advance(0.5)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert bucket.reserve() == pytest.approx(0.5)  # the slot at 1 s is free again, not 2 s


def test_a_bucket_needs_positive_figures() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 10)
    with pytest.raises(ValueError):
        TokenBucket(10, 0)


def test_settings_default_and_override() -> None:
    defaults = parse_settings([], env={})
    assert (defaults.kube_api_qps, defaults.kube_api_burst) == (OperatorSettings.kube_api_qps,
                                                                OperatorSettings.kube_api_burst)
    tuned = parse_settings([], env={"KUBE_API_QPS": "12.5", "KUBE_API_BURST": "40"})
    assert (tuned.kube_api_qps, tuned.kube_api_burst) == (12.5, 40)


@pytest.mark.parametrize("env", [{"KUBE_API_QPS": "0"}, {"KUBE_API_QPS": "-1"}, {"KUBE_API_QPS": "fast"},
                                 {"KUBE_API_BURST": "0"}, {"KUBE_API_BURST": "2.5"}, {"KUBE_API_BURST": "-3"}])
def test_settings_refuse_figures_that_cannot_work(env: dict[str, str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([], env=env)
