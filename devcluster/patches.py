"""The three PATCH flavours of the API server: JSON merge, JSON patch and strategic merge.

* ``application/merge-patch+json``: RFC 7386, exact.
* ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test), exact.
* ``application/strategic-merge-patch+json``: approximated. The real server derives merge keys
  from the Go types; here a fixed table covers the lists operators touch: containers,
  initContainers, ephemeralContainers, volumes, imagePullSecrets, env, resourceClaims (by
  ``name``), volumeMounts (by ``mountPath``), volumeDevices (by ``devicePath``), ports (by
  ``containerPort`` in containers, else ``port``), conditions (by ``type``), ownerReferences
  (by ``uid``), hostAliases (by ``ip``), topologySpreadConstraints (by ``topologyKey``) and
  finalizers (merged as a set). The ``$patch: replace|delete`` and
  ``$deleteFromPrimitiveList/<field>`` directives are honoured; ``$setElementOrder`` and
  ``$retainKeys`` are ignored. Every other list is replaced, every map merged.
"""

from __future__ import annotations

import copy
from typing import Any

from devcluster import errors

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class PatchError(Exception):
    """A patch that cannot be applied to the object (the server answers 422)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value, the inputs are not modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [_unescape(token) for token in path[1:].split("/")]


def _parent(document: Any, tokens: list[str], path: str) -> Any:
    current = document
    for token in tokens[:-1]:
        if isinstance(current, dict) and token in current:
            current = current[token]
        elif isinstance(current, list) and token.isdigit() and int(token) < len(current):
            current = current[int(token)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return current


def _get(document: Any, path: str) -> Any:
    tokens = _split_pointer(path)
    if not tokens:
        return document
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"doc is missing path: {path!r}")


def _add(document: Any, path: str, value: Any) -> Any:
    tokens = _split_pointer(path)
    if not tokens:
        return value
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"add operation does not apply: index out of range at {path!r}")
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return document


def _remove(document: Any, path: str) -> Any:
    tokens = _split_pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise PatchError(f"remove operation does not apply: doc is missing path: {path!r}")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; returns a new document or raises ``PatchError``."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid JSON patch operation: {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            document = _remove(document, path)
        elif op == "replace":
            _get(document, path)  # must exist
            document = _add(_remove(document, path), path, copy.deepcopy(operation.get("value"))) \
                if _split_pointer(path) else copy.deepcopy(operation.get("value"))
        elif op == "move":
            value = _get(document, operation["from"])
            document = _add(_remove(document, operation["from"]), path, value)
        elif op == "copy":
            document = _add(document, path, copy.deepcopy(_get(document, operation["from"])))
        elif op == "test":
            try:
                actual = _get(document, path)
            except PatchError:
                actual = None
            if actual != operation.get("value"):
                raise PatchError(
                    f"testing value {path} failed: test operation does not apply: "
                    f"is {actual!r}, not {operation.get('value')!r}")
        else:
            raise PatchError(f"unexpected kind of JSON patch operation: {op!r}")
    return document


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


def _merge_list(field: str, original: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in copy.deepcopy(patch) if not (isinstance(item, dict) and "$patch" in item)]
    if field in _SET_LISTS:
        return list(original) + [item for item in patch if item not in original]
    key = _merge_key(field, list(original) + list(patch))
    if key is None or not all(isinstance(item, dict) for item in patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original)
    for item in patch:
        index = next((i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item.get(key)),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


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
    except PatchError as exc:
        raise errors.ApiStatusError(
            status=422, reason="Invalid",
            message=f"the server rejected our request due to an error in our request: {exc}",
            details={"causes": [{"reason": "FieldValueInvalid", "message": str(exc), "field": "patch"}]},
        ) from exc
    if not isinstance(result, dict):
        raise errors.bad_request("the patch did not result in an object")
    return result
