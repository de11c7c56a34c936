"""The reconcile core's delayed queue: controller-runtime's workqueue `AddAfter`, one per controller.

At most one pending pass per object: the earliest wins (a later request for an object already due
sooner changes nothing; a sooner one replaces it), and a pass that starts for the object for any
other reason cancels it (that pass's own result asks again if it must). What is due runs as
`fire(key, work)`: the core starts it beside the caller, like an informer's event.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

Key = tuple[str, str]
W = TypeVar("W")


@dataclasses.dataclass
class _Pending(Generic[W]):
    due: float  # the loop's clock (time.monotonic)
    handle: asyncio.TimerHandle
    work: W


class DelayedQueue(Generic[W]):
    """Pending passes by object key, each with the work to run when it is due."""

    def __init__(self, fire: Callable[[Key, W], None]) -> None:
        self._fire = fire
        self._pending: dict[Key, _Pending[W]] = {}

    def add_after(self, key: Key, delay: float, work: W) -> None:
        """Run `work` for `key` in `delay` seconds, unless a pass for it is due sooner already."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        pending = self._pending.get(key)
        if pending is not None:
            if pending.due <= due:
                return
            pending.handle.cancel()
        self._pending[key] = _Pending(due, loop.call_at(due, self._due, key), work)

    def cancel(self, key: Key) -> None:
        """A pass for `key` starts now: the pending one would only repeat it."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.handle.cancel()

    def due_in(self, key: Key) -> float | None:
        """Seconds until the pending pass of `key` (None when none is pending)."""
        pending = self._pending.get(key)
        return None if pending is None else max(pending.due - asyncio.get_running_loop().time(), 0.0)

    def __len__(self) -> int:
        return len(self._pending)

    def _due(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._fire(key, pending.work)
