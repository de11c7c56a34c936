"""Waiting for a condition instead of sleeping: tests poll, and fail with what they last saw.

A fixed ``time.sleep`` is either too short on a loaded CI machine (a flaky test) or too long
everywhere else; these helpers return as soon as the condition holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
             message: str | Callable[[], str] = "") -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    On timeout: ``AssertionError`` with ``message`` (a string, or a function called then, to
    describe the state at that moment). Exceptions from ``predicate`` propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = message() if callable(message) else message
            name = getattr(predicate, "__name__", "the condition")
            raise AssertionError(f"{name} did not hold within {timeout}s" + (f": {detail}" if detail else ""))
        time.sleep(interval)
