"""CRD admission: kube-apiserver refuses a CRD whose openAPIV3Schema is not structural.

A port of apiextensions-apiserver's ``pkg/apiserver/schema/validation.go`` and ``complete.go``
(``ValidateStructural``): every node has a type (int-or-string and preserve-unknown-fields
aside), value validations (``allOf``, ``anyOf``, ``oneOf``, ``not``) carry no ``type``,
``description``, ``default``, ``nullable``, ``additionalProperties`` or ``x-kubernetes-*``
(except the two int-or-string shapes), ``metadata`` at the root restricts only ``name`` and
``generateName``, and the root is an object. Plus, from the CRD's own validation, the root type
with a status subresource and CEL rules that do not compile. Causes carry the real server's
field paths (``spec.validation.openAPIV3Schema.properties[spec]...anyOf[1].type``) and wording.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devcluster import cel

_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]

ROOT, ITEM, FIELD = "root", "item", "field"
_EMPTY_TYPE = {ROOT: "must not be empty at the root", ITEM: "must not be empty for specified array items",
               FIELD: "must not be empty for specified object fields"}


def _go(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def required(path: str, message: str) -> dict[str, str]:
    return {"reason": "FieldValueRequired", "field": path, "message": f"Required value: {message}"}


def forbidden(path: str, message: str) -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "field": path, "message": f"Forbidden: {message}"}


def invalid(path: str, value: Any, message: str) -> dict[str, str]:
    return {"reason": "FieldValueInvalid", "field": path, "message": f"Invalid value: {_go(value)}: {message}"}


def _as_schema(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _invariants(node: Mapping[str, Any], level: str, path: str) -> list[dict[str, str]]:
    """``validateStructuralInvariants``."""
    causes: list[dict[str, str]] = []
    node_type = node.get("type") or ""
    items = _as_schema(node.get("items"))
    if node_type == "array" and items is None:
        causes.append(required(f"{path}.items", "must be specified"))
    if items is not None:
        causes.extend(_invariants(items, ITEM, f"{path}.items"))
    for key, sub in (node.get("properties") or {}).items():
        if isinstance(sub, dict):
            causes.extend(_invariants(sub, FIELD, f"{path}.properties[{key}]"))
    additional = node.get("additionalProperties")
    if additional is not None and additional is not False:
        if level == ROOT:
            causes.append(forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(additional, dict):
            causes.extend(_invariants(additional, FIELD, f"{path}.additionalProperties"))
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(node.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        causes.append(invalid(f"{path}.x-kubernetes-preserve-unknown-fields", True,
                              "must be false if x-kubernetes-int-or-string is true"))
    if int_or_string and embedded:
        causes.append(invalid(f"{path}.x-kubernetes-embedded-resource", True,
                              "must be false if x-kubernetes-int-or-string is true"))
    skip_any_of = node.get("anyOf") == _INT_OR_STRING_ANY_OF
    all_of = node.get("allOf")
    skip_first_all_of = isinstance(all_of, list) and bool(all_of) and isinstance(all_of[0], dict) \
        and all_of[0].get("anyOf") == _INT_OR_STRING_ANY_OF
    causes.extend(_value_validation(node, skip_any_of, skip_first_all_of, level, path))
    check_metadata = level == ROOT or embedded
    if embedded and node_type != "object":
        if not node_type:
            causes.append(required(f"{path}.type", "must be object if x-kubernetes-embedded-resource is true"))
        else:
            causes.append(invalid(f"{path}.type", node_type,
                                  "must be object if x-kubernetes-embedded-resource is true"))
    elif not node_type and not int_or_string and not preserve:
        causes.append(required(f"{path}.type", _EMPTY_TYPE[level]))
    if embedded and additional is not None:
        causes.append(forbidden(f"{path}.additionalProperties",
                                "must not be used if x-kubernetes-embedded-resource is set"))
    if level == ROOT and node_type and node_type != "object":
        causes.append(invalid(f"{path}.type", node_type, "must be object at the root"))
    properties = node.get("properties") or {}
    for meta_field in ("kind", "apiVersion"):
        sub = properties.get(meta_field)
        if isinstance(sub, dict) and check_metadata and sub.get("type", "") != "string":
            causes.append(invalid(f"{path}.properties[{meta_field}].type", sub.get("type", ""), "must be string"))
    metadata = properties.get("metadata")
    if isinstance(metadata, dict):
        causes.extend(_metadata(metadata, check_metadata, level, f"{path}.properties[metadata]"))
    if embedded and not preserve and not properties:
        causes.append(required(f"{path}.properties", "must not be empty if x-kubernetes-embedded-resource is true "
                                                     "without x-kubernetes-preserve-unknown-fields"))
    return causes


def _metadata(node: Mapping[str, Any], check_metadata: bool, level: str, path: str) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    if check_metadata and node.get("type", "") != "object":
        causes.append(invalid(f"{path}.type", node.get("type", ""), "must be object"))
    if level == ROOT:
        rest = {k: v for k, v in node.items() if k not in ("type", "default")}
        properties = rest.get("properties")
        if isinstance(properties, dict) and set(properties) <= {"name", "generateName"}:
            rest.pop("properties")
        if rest:
            causes.append(forbidden(path, "must not specify anything other than name and generateName, but metadata "
                                          "is implicitly specified"))
    return causes


def _value_validation(node: Mapping[str, Any], skip_any_of: bool, skip_first_all_of: bool, level: str,
                      path: str) -> list[dict[str, str]]:
    """``validateValueValidation``: the junctors of a node."""
    causes: list[dict[str, str]] = []
    if not skip_any_of:
        for index, sub in enumerate(node.get("anyOf") or []):
            causes.extend(_nested(sub, False, level, f"{path}.anyOf[{index}]"))
    for index, sub in enumerate(node.get("allOf") or []):
        causes.extend(_nested(sub, skip_first_all_of and index == 0, level, f"{path}.allOf[{index}]"))
    for index, sub in enumerate(node.get("oneOf") or []):
        causes.extend(_nested(sub, False, level, f"{path}.oneOf[{index}]"))
    if isinstance(node.get("not"), dict):
        causes.extend(_nested(node["not"], False, level, f"{path}.not"))
    return causes


_NESTED_FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("default", "must be undefined to be structural"),
    ("title", "must be empty to be structural"),
    ("description", "must be empty to be structural"),
)
_NESTED_FLAGS: tuple[tuple[str, str], ...] = (
    ("nullable", "must be false to be structural"),
    ("x-kubernetes-preserve-unknown-fields", "must be false to be structural"),
    ("x-kubernetes-embedded-resource", "must be false to be structural"),
    ("x-kubernetes-int-or-string", "must be false to be structural"),
)


def _nested(node: Any, skip_any_of: bool, level: str, path: str) -> list[dict[str, str]]:
    """``validateNestedValueValidation``: a schema inside allOf/anyOf/oneOf/not."""
    if not isinstance(node, dict):
        return []
    causes = _value_validation(node, skip_any_of, False, level, path)
    if isinstance(node.get("items"), dict):
        causes.extend(_nested(node["items"], False, level, f"{path}.items"))
    for key, sub in (node.get("properties") or {}).items():
        causes.extend(_nested(sub, False, FIELD, f"{path}.properties[{key}]"))
    if node.get("type"):
        causes.append(forbidden(f"{path}.type", "must be empty to be structural"))
    if node.get("additionalProperties") is not None:
        causes.append(forbidden(f"{path}.additionalProperties", "must be undefined to be structural"))
    for key, message in _NESTED_FORBIDDEN:
        if node.get(key) not in (None, ""):
            causes.append(forbidden(f"{path}.{key}", message))
    for key, message in _NESTED_FLAGS:
        if node.get(key):
            causes.append(forbidden(f"{path}.{key}", message))
    if node.get("x-kubernetes-list-map-keys"):
        causes.append(forbidden(f"{path}.x-kubernetes-list-map-keys", "must be empty to be structural"))
    if node.get("x-kubernetes-list-type") is not None:
        causes.append(forbidden(f"{path}.x-kubernetes-list-type", "must be undefined to be structural"))
    if node.get("x-kubernetes-map-type") is not None:
        causes.append(forbidden(f"{path}.x-kubernetes-map-type", "must be undefined to be structural"))
    if node.get("x-kubernetes-validations"):
        causes.append(forbidden(f"{path}.x-kubernetes-validations", "must be empty to be structural"))
    if "metadata" in (node.get("properties") or {}):
        causes.append(forbidden(f"{path}.properties[metadata]", "must not be specified in a nested context"))
    return causes


def _completeness(node: Mapping[str, Any], path: str) -> list[dict[str, str]]:
    """``validateStructuralCompleteness``: as the real server, only the root's junctors are checked."""
    return _value_completeness(node, node, path, path)


def _value_completeness(validation: Mapping[str, Any], node: Mapping[str, Any] | None, s_path: str,
                        v_path: str) -> list[dict[str, str]]:
    causes: list[dict[str, str]] = []
    if isinstance(validation.get("not"), dict):
        causes.extend(_nested_completeness(validation["not"], node, s_path, f"{v_path}.not"))
    for junctor in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(validation.get(junctor) or []):
            if isinstance(sub, dict):
                causes.extend(_nested_completeness(sub, node, s_path, f"{v_path}.{junctor}[{index}]"))
    return causes


def _nested_completeness(validation: Mapping[str, Any], node: Mapping[str, Any] | None, s_path: str,
                         v_path: str) -> list[dict[str, str]]:
    if node is None:
        return [required(s_path, f"because it is defined in {v_path}")]
    causes = _value_completeness(validation, node, s_path, v_path)
    if isinstance(validation.get("items"), dict):
        causes.extend(_nested_completeness(validation["items"], _as_schema(node.get("items")), f"{s_path}.items",
                                           f"{v_path}.items"))
    properties = node.get("properties") or {}
    for key, sub in (validation.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if key not in properties:
            causes.append(required(f"{s_path}.properties[{key}]",
                                   f"because it is defined in {v_path}.properties[{key}]"))
        else:
            causes.extend(_nested_completeness(sub, properties[key], f"{s_path}.properties[{key}]",
                                               f"{v_path}.properties[{key}]"))
    return causes


def _cel_rules(node: Any, path: str) -> list[dict[str, str]]:
    """Rules that do not compile (parse), at ``...x-kubernetes-validations[i].rule``."""
    if not isinstance(node, dict):
        return []
    causes: list[dict[str, str]] = []
    for index, rule in enumerate(node.get("x-kubernetes-validations") or []):
        text = rule.get("rule", "") if isinstance(rule, dict) else ""
        where = f"{path}.x-kubernetes-validations[{index}].rule"
        if not text:
            causes.append(required(where, ""))
            continue
        try:
            cel.parse(text)
        except cel.CelSyntaxError as exc:
            causes.append(invalid(where, text, f"compilation failed: ERROR: <input>: {exc}"))
    if isinstance(node.get("items"), dict):
        causes.extend(_cel_rules(node["items"], f"{path}.items"))
    for key, sub in (node.get("properties") or {}).items():
        causes.extend(_cel_rules(sub, f"{path}.properties[{key}]"))
    if isinstance(node.get("additionalProperties"), dict):
        causes.extend(_cel_rules(node["additionalProperties"], f"{path}.additionalProperties"))
    return causes


def schema_causes(schema: Any, path: str, *, status_subresource: bool) -> list[dict[str, str]]:
    """Why kube-apiserver refuses this openAPIV3Schema (an empty list when it accepts it)."""
    if not isinstance(schema, dict):
        return [required(path, "")]
    causes: list[dict[str, str]] = []
    if status_subresource and schema.get("type") not in (None, "", "object"):
        causes.append(invalid(f"{path}.type", schema["type"], 'only "object" is allowed as the type at the root of '
                                                              "the schema if the status subresource is enabled"))
    if schema.get("nullable"):
        causes.append(forbidden(f"{path}.nullable", "nullable cannot be true at the root"))
    structural = _invariants(schema, ROOT, path) + _completeness(schema, path)
    structural.sort(key=lambda cause: f"{cause['field']}: {cause['message']}")
    causes.extend(structural)
    if not structural:  # as the real server: CEL rules are compiled only in a structural schema
        causes.extend(_cel_rules(schema, path))
    return causes


def crd_causes(crd: Mapping[str, Any]) -> list[dict[str, str]]:
    """The schema causes of a whole CRD (apiextensions.k8s.io/v1), with the real server's paths.

    The real server validates the internal form of a CRD, where one schema shared by every version
    sits at ``spec.validation`` and different ones stay at ``spec.versions[i].schema``.
    """
    spec = crd.get("spec") or {}
    versions = [v for v in spec.get("versions") or [] if isinstance(v, dict)]
    schemas = [(v.get("schema") or {}).get("openAPIV3Schema") for v in versions]
    status = [bool((v.get("subresources") or {}).get("status") is not None) for v in versions]
    if not versions or all(schema is None for schema in schemas):
        return []
    if all(schema == schemas[0] for schema in schemas):
        return schema_causes(schemas[0], "spec.validation.openAPIV3Schema", status_subresource=any(status))
    causes: list[dict[str, str]] = []
    for index, schema in enumerate(schemas):
        if schema is not None:
            causes.extend(schema_causes(schema, f"spec.versions[{index}].schema.openAPIV3Schema",
                                        status_subresource=status[index]))
    return causes
