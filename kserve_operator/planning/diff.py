"""Decide whether a live object already carries what we want, and the smallest patch when not.

Two kinds of managed fields:
- *merged* maps (labels, annotations): only our keys are compared and written; others' keys stay.
- *exact* sections (selectors, a pod template, replicas): we own them wholly. Every field we
  want must be there with our value, and every field we do not want must be absent, except
  fields the API server fills in itself (`SERVER_DEFAULTED`), which are not drift. A
  `hostNetwork`, `serviceAccountName`, `command` or `privileged: true` added by hand is drift
  and the section is put back whole.
Owner references: ours ensured, others' kept (ownership.merged_owner_references).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.planning.ownership import merged_owner_references

# Field names kube-apiserver defaults inside pod templates, selectors and Service ports. Their
# presence in a live object we own wholly is the server's doing, not drift.
SERVER_DEFAULTED: frozenset[str] = frozenset({
    "creationTimestamp", "restartPolicy", "terminationGracePeriodSeconds", "dnsPolicy", "schedulerName",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "timeoutSeconds",
    "periodSeconds", "successThreshold", "failureThreshold", "scheme", "protocol", "defaultMode",
})


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


def matches_exactly(live: Any, desired: Any, *, defaulted: frozenset[str] = SERVER_DEFAULTED) -> bool:
    """`contains`, and nothing more in `live` than server-defaulted fields."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        if any(key not in desired and key not in defaulted for key in live):
            return False
        return all(key in live and matches_exactly(live[key], value, defaulted=defaulted)
                   for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(matches_exactly(lv, dv, defaulted=defaulted) for lv, dv in zip(live, desired, strict=True))
    return contains(live, desired)


def _section(obj: Mapping[str, Any] | None, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _pointer(path: str, *extra: str) -> str:
    parts = [*path.split("."), *extra]
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def child_patch(
    live: Mapping[str, Any], desired: Mapping[str, Any], *,
    exact: Sequence[str] = (), merged: Sequence[str] = ("metadata.labels",),
) -> list[dict[str, Any]]:
    """A JSON patch (RFC 6902) bringing `live` to `desired` on the managed fields; [] when nothing differs.

    Exact sections are replaced whole and labels key by key, so those operations mean the same
    whatever happened since the read: they go unconditionally (a Deployment's status moves all
    the time; pinning them would turn every rollout into a chain of 409s). Replacing the owner
    reference list is different: it was computed from the list read, so that patch pins
    `metadata.resourceVersion` and the API server answers 409 if the object changed since.
    """
    ops: list[dict[str, Any]] = []
    for path in merged:
        want = _section(desired, path)
        have = _section(live, path)
        if not want:
            continue
        if not isinstance(have, Mapping):
            ops.append({"op": "add", "path": _pointer(path), "value": want})
            continue
        ops.extend(
            {"op": "add", "path": _pointer(path, key), "value": value}
            for key, value in want.items() if have.get(key) != value
        )
    for path in exact:
        want = _section(desired, path)
        if want is not None and not matches_exactly(_section(live, path), want):
            ops.append({"op": "add", "path": _pointer(path), "value": want})
    ours = next(iter(_section(desired, "metadata.ownerReferences") or []), None)
    refs = merged_owner_references(_section(live, "metadata.ownerReferences"), ours) if ours else None
    if refs is None:
        return ops
    version = _section(live, "metadata.resourceVersion")
    return [{"op": "replace", "path": "/metadata/resourceVersion", "value": version}, *ops,
            {"op": "add", "path": "/metadata/ownerReferences", "value": refs}]


def status_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new` at the top level; empty when nothing changed."""
    old = old or {}
    return {key: value for key, value in new.items() if old.get(key) != value}
