"""Durations as Kubernetes users write them in specs: `30s`, `5m`, `1h30m`."""

from __future__ import annotations

import re

from kserve_operator.errors import InvalidSpec

DURATION_PATTERN = r"^(?:[0-9]+[smh])+$"
_DURATION = re.compile(DURATION_PATTERN)
_PART = re.compile(r"([0-9]+)([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: object, *, field: str = "duration") -> float:
    """Seconds in `text`; anything else is an InvalidSpec naming `field`."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise InvalidSpec(f"{field} {text!r} is not a duration such as 30s, 5m or 1h")
    return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text)))
