"""Checks of single spec fields that every typed view needs: what a schema says, re-checked for
objects that reach the operator past an older CRD (or none), with one wording for all kinds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kserve_operator.errors import InvalidSpec


def int_field(raw: Mapping[str, Any], name: str, *, low: int, high: int | None = None,
              default: int | None = None, where: str = "") -> int | None:
    """`raw[name]` (or `default`) as an integer within [low, high]; None when absent without a default.

    `where` prefixes the field's path in messages (e.g. "steps.analysis.").
    """
    value = raw.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{where}{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidSpec(f"{where}{name} must be {bound}, got {value}")
    return value


def required_int_field(raw: Mapping[str, Any], name: str, *, low: int, default: int, high: int | None = None) -> int:
    """`int_field` for a field with a default: never None."""
    value = int_field(raw, name, low=low, high=high, default=default)
    assert value is not None
    return value


def text_field(raw: Mapping[str, Any], name: str, where: str = "") -> str | None:
    """An optional non-empty string; InvalidSpec naming `where + name` for anything else."""
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpec(f"{where}{name} must be a non-empty string")
    return value
