"""Decide whether a live object already carries what we want, so unchanged objects cost no write.

The API server adds defaults (imagePullPolicy, strategy, protocol, ...) that a desired
manifest never mentions; comparing only what we manage keeps those from looking like drift.
"""

from __future__ import annotations

from typing import Any


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is present in `live` with the same value.

    Lists must have the same length and match element by element: a container list
    that lost or gained an entry is drift even if the common entries agree.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(key in live and contains(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(lv, dv) for lv, dv in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(live) == float(desired)
    return bool(live == desired)


def needs_update(live: dict[str, Any] | None, desired: dict[str, Any], *, sections: tuple[str, ...]) -> bool:
    """Compare only the managed `sections` (e.g. spec, metadata.labels) of two objects."""
    if live is None:
        return True
    for section in sections:
        want: Any = desired
        have: Any = live
        for part in section.split("."):
            want = want.get(part) if isinstance(want, dict) else None
            have = have.get(part) if isinstance(have, dict) else None
        if want is not None and not contains(have, want):
            return True
    return False
