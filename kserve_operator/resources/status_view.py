"""What every kind's typed status view shares: read once, one wire form, one patch.

A kind's status is a frozen dataclass with `StatusView` mixed in and `KEYS` (wire key -> attribute).
`parse` reads the status as it is on the object (lists become tuples; keys it does not know, an
older or newer operator's, are kept as read in `unknown`); `to_status` is its one wire form (None,
every field's default, leaves a key out); `patch_from(old)` is the merge patch of /status that
turns `old` (as read) into it: the keys that changed, and null for a key it no longer has.
`with_changes` lays a plan's keys over it (None: remove), as a merge patch would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self


class StatusView:
    KEYS: ClassVar[Mapping[str, str]]  # wire key -> attribute, in the order a status is written
    unknown: Mapping[str, Any]

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Self:
        raw = raw if isinstance(raw, Mapping) else {}
        fields: dict[str, Any] = {attr: _frozen(raw[key]) for key, attr in cls.KEYS.items() if raw.get(key) is not None}
        fields["unknown"] = {k: v for k, v in raw.items() if k not in cls.KEYS}
        return cls(**fields)

    def to_status(self) -> dict[str, Any]:
        status = dict(self.unknown)
        for key, attr in self.KEYS.items():
            value = getattr(self, attr)
            if isinstance(value, tuple):  # an empty list stays: only None leaves a key out
                value = [dict(item) if isinstance(item, Mapping) else item for item in value]
            if value is not None:
                status[key] = value
        return status

    def patch_from(self, old: Mapping[str, Any] | None) -> dict[str, Any]:
        """What a merge patch of /status must carry to turn `old` (as read) into this; {} when nothing."""
        old = old or {}
        new = self.to_status()
        changes = {key: value for key, value in new.items() if old.get(key) != value}
        changes.update({key: None for key in old if key not in new and old[key] is not None})
        return changes

    def with_changes(self, changes: Mapping[str, Any]) -> Self:
        """This status with `changes` laid over it at the top level (None: the key goes)."""
        return self.parse({**self.to_status(), **changes})


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(dict(item) if isinstance(item, Mapping) else item for item in value)
    return value
