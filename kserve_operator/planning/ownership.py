"""Owner references: the reference a child carries, whether a live child is ours, and how to add
ours without removing anybody else's.

Pure. A child of the same name that another controller (or nobody) controls is never taken
over: adopting it would let the garbage collector delete it with our object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.resources.kinds import Kind


def controller_uid(live: Mapping[str, Any]) -> str | None:
    for ref in (live.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owned_by(live: Mapping[str, Any] | None, owner_uid: str) -> bool:
    """True when `live` is controlled by the object with `owner_uid`."""
    return live is not None and controller_uid(live) == owner_uid


def ownership_problem(live: Mapping[str, Any] | None, owner: Mapping[str, Any], owner_kind: Kind) -> str | None:
    """None when `owner` may manage `live` (absent, or controlled by `owner`); otherwise why not."""
    if live is None:
        return None
    meta = live.get("metadata") or {}
    where = f"{live.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')}"
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            if ref.get("uid") == (owner.get("metadata") or {}).get("uid"):
                return None
            return f"{where} already exists, controlled by {ref.get('kind')} {ref.get('name')}"
    return f"{where} already exists and is not managed by this {owner_kind.kind}; delete or rename it"


def merged_owner_references(
    live_refs: Sequence[Mapping[str, Any]] | None, ours: Mapping[str, Any],
) -> list[dict[str, Any]] | None:
    """`live_refs` with our controller reference ensured and every other reference kept.

    None when the live list already carries ours exactly: no write. Another tool's
    non-controller reference stays, so the two of us never fight over the list.
    """
    current = [dict(ref) for ref in live_refs or []]
    mine = [ref for ref in current if ref.get("uid") == ours.get("uid")]
    if len(mine) == 1 and all(mine[0].get(key) == value for key, value in ours.items()):
        return None
    others = [ref for ref in current if ref.get("uid") != ours.get("uid")]
    return [*others, dict(ours)]
