"""Retry delays for temporary errors: exponential, capped, with jitter against reconcile storms."""

from __future__ import annotations

import random


def backoff_delay(retry: int, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """`base * 2**retry` capped at `cap`, scaled by a random factor in [0.5, 1.0] ("equal jitter")."""
    ceiling = min(cap, base * (2.0 ** max(retry, 0)))
    factor = (rng or random).uniform(0.5, 1.0)
    return ceiling * factor
