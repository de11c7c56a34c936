"""The client-side request limit: client-go's token bucket (`flowcontrol.NewTokenBucketRateLimiter`).

`burst` requests may go at once, then `qps` per second. Every request the operator's own client
sends (GET, LIST, WATCH, POST, PATCH, DELETE; kopf's watches and the Lease client are apart) takes
one token first. A restart that finds thousands of objects then spreads its reads over seconds
instead of sending them in one, and the API server's own priority and fairness never has to
reject the operator.

Tokens are reserved the way Go's `x/time/rate` does: a caller takes its token at once, letting the
balance go below zero, and sleeps until the refill reaches it. Each reservation lies after every
earlier one, so requests are served in arrival order: a write queued behind a thousand reads waits
for those, never for reads that arrive after it. A caller cancelled while waiting gives its token
back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`burst` tokens, refilled at `qps` per second; `wait()` takes one, in arrival order."""

    def __init__(self, qps: float, burst: int, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs qps > 0 and burst >= 1 (got qps={qps}, burst={burst})")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)  # below zero: tokens already promised to callers still waiting
        self._updated = clock()

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.qps)
        self._updated = now

    def reserve(self) -> float:
        """Take a token now; the seconds until it is due (0: at once)."""
        self._refill(self._clock())
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def wait(self) -> float:
        """Wait for a token; the seconds waited. Cancelled while waiting, the token is given back."""
        delay = self.reserve()
        if delay > 0:
            try:
                await self._sleep(delay)
            except asyncio.CancelledError:
                self._refill(self._clock())
                self._tokens = min(float(self.burst), self._tokens + 1.0)
                raise
        return delay
