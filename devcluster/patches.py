"""The three PATCH flavours of the API server: JSON merge, JSON patch and strategic merge.

* ``application/merge-patch+json``: RFC 7386, exact (the RFC's algorithm, see ``merge_patch``).
* ``application/json-patch+json``: RFC 6902 through the ``jsonpatch`` library, with the one
  deviation kube-apiserver has: ``test`` of a missing path against ``null`` passes.
* ``application/strategic-merge-patch+json``: approximated. The real server derives merge keys
  from the Go types; here a fixed table covers the lists operators touch: containers,
  initContainers, ephemeralContainers, volumes, imagePullSecrets, env, resourceClaims (by
  ``name``), volumeMounts (by ``mountPath``), volumeDevices (by ``devicePath``), ports (by
  ``containerPort`` in containers, else ``port``), conditions (by ``type``), ownerReferences
  (by ``uid``), hostAliases (by ``ip``), topologySpreadConstraints (by ``topologyKey``) and
  finalizers (merged as a set). Merged lists are in apimachinery's order: the patch's items
  first where the live list does not say otherwise (see ``_in_order``). The ``$patch:
  replace|delete`` and ``$deleteFromPrimitiveList/<field>`` directives are honoured;
  ``$setElementOrder`` and ``$retainKeys`` are ignored. Every other list is replaced, every map
  merged.
"""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

import jsonpatch

from devcluster import errors

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class PatchError(Exception):
    """A patch that cannot be applied to the object (the server answers 422)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (the RFC's own pseudo-code); returns a new value.

    Kept here rather than taken from a library: the only dedicated Python package for it has
    had one release in years, and the algorithm is these ten lines, pinned by the RFC's
    appendix A test vectors in the tests.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _KubeTestOperation(jsonpatch.TestOperation):
    """``test`` as kube-apiserver's JSON patch library runs it: a missing path equals ``null``."""

    def apply(self, obj: Any) -> Any:
        if self.operation.get("value") is None:
            try:
                self.pointer.resolve(obj)
            except jsonpatch.JsonPointerException:
                return obj
        return super().apply(obj)


class _KubeJsonPatch(jsonpatch.JsonPatch):
    operations = MappingProxyType({**jsonpatch.JsonPatch.operations, "test": _KubeTestOperation})


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch through the ``jsonpatch`` library; a new document or ``PatchError``
    (a body that is not a list of operations: 400, as the real server answers)."""
    if not isinstance(operations, list):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        return _KubeJsonPatch(operations).apply(target, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise PatchError(str(exc)) from exc
    except (KeyError, TypeError, ValueError) as exc:  # e.g. an operation that is not an object
        raise PatchError(f"invalid JSON patch operation: {exc}") from exc


_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "env": "name",
    "resourceClaims": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
_SET_LISTS = {"finalizers"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        dicts = [item for item in items if isinstance(item, dict)]
        return "containerPort" if any("containerPort" in item for item in dicts) else "port"
    return _MERGE_KEYS.get(field)


def _position(order: list[Any], item: Any, key: str | None) -> int:
    """Where ``item`` is in ``order`` (by its merge key's value for maps), -1 if it is not."""
    def ident(value: Any) -> Any:
        return value.get(key) if key is not None and isinstance(value, dict) else value
    wanted = ident(item)
    return next((i for i, value in enumerate(order) if ident(value) == wanted), -1)


def _in_order(patch_items: list[Any], server_only: list[Any], patch_order: list[Any], server_order: list[Any],
              key: str | None) -> list[Any]:
    """The merged list in apimachinery's order (``normalizeElementOrder`` and ``mergeSortedSlice``):
    the patch's items in the patch's order, the server-only items in the live order, and each
    server-only item placed before a patch item only when the live list had it before that item;
    so new items come before the server-only ones that follow them (finalizers ``[one]`` patched
    with ``[two]`` are ``[two, one]``)."""
    right = sorted(patch_items, key=lambda item: _position(patch_order, item, key))
    left = sorted(server_only, key=lambda item: _position(server_order, item, key))
    merged: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            merged.append(left[i])
            i += 1
        elif i >= len(left):
            merged.append(right[j])
            j += 1
        else:
            li, ri = _position(server_order, left[i], key), _position(server_order, right[j], key)
            if li >= 0 and ri >= 0 and li < ri:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                j += 1
    return merged


def _merge_list(field: str, original: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in copy.deepcopy(patch) if not (isinstance(item, dict) and "$patch" in item)]
    if field in _SET_LISTS:
        merged: list[Any] = []
        for item in list(original) + list(patch):
            if item not in merged:
                merged.append(item)
        return _in_order([item for item in merged if item in patch], [item for item in merged if item not in patch],
                         list(patch), list(original), None)
    key = _merge_key(field, list(original) + list(patch))
    if key is None or not all(isinstance(item, dict) for item in patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original)
    for item in patch:  # the $patch: delete items first, as apimachinery does
        if item.get("$patch") == "delete":
            result = [old for old in result if not (isinstance(old, dict) and old.get(key) == item.get(key))]
    merging = [item for item in patch if "$patch" not in item]
    live = list(result)
    for item in merging:
        index = next((i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item.get(key)),
                     None)
        if index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    in_patch = [item for item in result if _position(merging, item, key) >= 0]
    server_only = [item for item in result if _position(merging, item, key) < 0]
    return _in_order(in_patch, server_only, merging, live, key)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of the strategic merge patch (see the module docstring for the rules)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [item for item in result[field] if item not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _merge_list(key, [], value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_patch(content_type: str, target: dict[str, Any], patch: Any, *, custom: bool) -> dict[str, Any]:
    """Apply a PATCH body by its content type; unknown or unsupported types are a 415."""
    media = content_type.split(";")[0].strip().lower()
    try:
        if media == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            result = merge_patch(target, patch)
        elif media == JSON_PATCH:
            result = json_patch(target, patch)
        elif media == STRATEGIC_MERGE_PATCH and not custom:
            if not isinstance(patch, dict):
                raise errors.bad_request("a strategic merge patch must be a JSON object")
            result = strategic_merge_patch(target, patch)
        else:
            raise errors.unsupported_media_type(media)
    except PatchError as exc:  # the real server's 422 names no field
        raise errors.ApiStatusError(
            status=422, reason="Invalid",
            message=f"the server rejected our request due to an error in our request: {exc}", details={},
        ) from exc
    if not isinstance(result, dict):
        raise errors.bad_request("the patch did not result in an object")
    return result
