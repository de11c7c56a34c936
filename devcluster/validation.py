"""Admission of objects: metadata checks for every kind, CRD schemas for custom resources.

Custom resources go through what kube-apiserver does with a structural openAPIV3Schema:
drop ``null``s of non-nullable fields, prune unknown fields (``fieldValidation``: ``Strict``
-> 400 ``KIND in version "V" cannot be handled as a KIND: strict decoding error: ...`` on a POST
or PUT, 422 on a PATCH (store.py), ``Warn`` (default) -> pruned plus a ``Warning`` header,
``Ignore`` -> pruned silently), apply ``default``s, then validate with ``jsonschema`` and
answer 422 ``Invalid`` with the real server's wording and ``details.causes``.

The OpenAPI v3 dialect is translated to JSON schema: ``nullable``,
``x-kubernetes-int-or-string``, ``x-kubernetes-preserve-unknown-fields`` and
``x-kubernetes-embedded-resource`` are honoured. CEL rules (``x-kubernetes-validations``), unless
the store turns them off (``EmulatedCluster(cel_rules=False)``), are evaluated by cel.py after the
schema passes (transition rules on updates, with ``oldSelf``;
errors of unchanged values are ratcheted away as the real server does); a blocking schema
error (a wrong type, an unsupported enum value, a required field, a too long string or list)
skips them with the real server's "some validation rules were not checked" cause. List-type
uniqueness (``x-kubernetes-list-type``) is NOT checked.

Unknown fields of ``metadata`` are dropped (and reported) for every kind, as ObjectMeta is typed;
built-in kinds are NOT schema-validated otherwise: only their metadata (name and label syntax)
and their top-level fields (``strict_top_level``) are.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import jsonschema  # no types-jsonschema in the dev extras

from devcluster import cel, errors
from devcluster.resources import ResourceDef

# apimachinery's pkg/util/validation: the same patterns, limits and wording, so that a name the
# real server refuses is refused here with the same message.
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QUALIFIED_NAME_FMT + ")?"
_DNS_SUBDOMAIN = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS_LABEL = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1035_LABEL = re.compile(f"^{_DNS1035_LABEL_FMT}$")
_LABEL_VALUE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_LABEL_NAME = re.compile(f"^{_QUALIFIED_NAME_FMT}$")
#: Kinds whose names are DNS labels (NameIsDNSLabel / NameIsDNS1035Label); the rest are subdomains.
_DNS1123_LABEL_KINDS = {"namespaces"}
_DNS1035_LABEL_KINDS = {"services"}


def regex_error(message: str, fmt: str, *examples: str) -> str:
    """apimachinery's ``RegexError`` (its double space before "or" included)."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def dns1123_subdomain_errors(value: str) -> list[str]:
    """``IsDNS1123Subdomain``: each failed check is one message (length and pattern both)."""
    found = [max_len_error(253)] if len(value) > 253 else []
    if not _DNS_SUBDOMAIN.match(value):
        found.append(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character", _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return found


def dns1123_label_errors(value: str) -> list[str]:
    """``IsDNS1123Label`` (namespaces)."""
    found = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS_LABEL.match(value):
        found.append(regex_error(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
            "start and end with an alphanumeric character", _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return found


def dns1035_label_errors(value: str) -> list[str]:
    """``IsDNS1035Label`` (Services): like a DNS-1123 label, but it must start with a letter."""
    found = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL.match(value):
        found.append(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character", _DNS1035_LABEL_FMT,
            "my-name", "abc-123"))
    return found


def qualified_name_errors(value: str) -> list[str]:
    """``IsQualifiedName`` (label keys): an optional DNS-subdomain prefix and a name part."""
    name_message = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
                    "an alphanumeric character")
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name " + regex_error(name_message, _QUALIFIED_NAME_FMT, "MyName", "my.name",
                                                  "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    found: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            found.append("prefix part must be non-empty")
        else:
            found.extend("prefix part " + message for message in dns1123_subdomain_errors(parts[0]))
    if not name:
        found.append("name part must be non-empty")
    elif len(name) > 63:
        found.append("name part " + max_len_error(63))
    if not _LABEL_NAME.match(name):
        found.append("name part " + regex_error(name_message, _QUALIFIED_NAME_FMT, "MyName", "my.name",
                                                "123-abc"))
    return found


def label_value_errors(value: str) -> list[str]:
    """``IsValidLabelValue``: at most 63 characters, empty or alphanumeric at both ends."""
    found = [max_len_error(63)] if len(value) > 63 else []
    if not _LABEL_VALUE.match(value):
        found.append(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character", _LABEL_VALUE_FMT,
            "MyValue", "my_value", "12345"))
    return found


def go_value(value: Any) -> str:
    """Render a value the way the API server prints it in ``Invalid value: ...``."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _cause(reason: str, field: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def validate_metadata(resource: ResourceDef, obj: dict[str, Any]) -> list[dict[str, str]]:
    """Name and label syntax, as the API server checks them for every kind."""
    causes: list[dict[str, str]] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if isinstance(name, str) and name:
        check = dns1035_label_errors if resource.plural in _DNS1035_LABEL_KINDS and not resource.group else \
            dns1123_label_errors if resource.plural in _DNS1123_LABEL_KINDS and not resource.group else \
            dns1123_subdomain_errors
        causes.extend(_cause("FieldValueInvalid", "metadata.name", f"Invalid value: {go_value(name)}: {message}")
                      for message in check(name))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(_cause("FieldValueTypeInvalid", "metadata.labels", "Invalid value: must be a map"))
        labels = {}
    for key, value in labels.items():
        causes.extend(_cause("FieldValueInvalid", "metadata.labels", f"Invalid value: {go_value(key)}: {message}")
                      for message in qualified_name_errors(key))
        if not isinstance(value, str):
            causes.append(_cause("FieldValueTypeInvalid", "metadata.labels",
                                 f"Invalid value: {go_value(value)}: label values must be strings"))
            continue
        causes.extend(_cause("FieldValueInvalid", "metadata.labels", f"Invalid value: {go_value(value)}: {message}")
                      for message in label_value_errors(value))
    for key in ("annotations",):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict) or
                                  not all(isinstance(v, str) for v in value.values())):
            causes.append(_cause("FieldValueTypeInvalid", f"metadata.{key}",
                                 "Invalid value: must be a map of strings"))
    return causes


# ---- OpenAPI v3 -> JSON schema -------------------------------------------------------------------

_DROPPED_KEYS = {"description", "example", "externalDocs", "nullable", "x-kubernetes-int-or-string",
                 "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                 "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
                 "x-kubernetes-validations"}


def to_json_schema(schema: Any) -> Any:
    """Translate a structural OpenAPI v3 schema node into draft-4 JSON schema."""
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {k: v for k, v in schema.items() if k not in _DROPPED_KEYS}
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(schema.get(key), dict):
            result[key] = {name: to_json_schema(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            result[key] = to_json_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            result[key] = [to_json_schema(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        alternatives = [{"type": "integer"}, {"type": "string"}]
        if schema.get("nullable"):
            alternatives.append({"type": "null"})
        result["allOf"] = [*result.get("allOf", []), {"anyOf": alternatives}]
    elif schema.get("nullable"):
        if "type" in result:
            result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    if schema.get("x-kubernetes-embedded-resource"):
        properties = dict(result.get("properties") or {})
        properties.setdefault("apiVersion", {"type": "string"})
        properties.setdefault("kind", {"type": "string"})
        properties.setdefault("metadata", {"type": "object"})
        result["properties"] = properties
    return result


_FORMATS = jsonschema.FormatChecker(formats=())


def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}", value):
        return False
    datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    return True


def _is_date(value: object) -> bool:
    if isinstance(value, str):
        datetime.date.fromisoformat(value)
    return True


def _is_uuid(value: object) -> bool:
    if isinstance(value, str):
        uuid.UUID(value)
    return True


def _is_byte(value: object) -> bool:
    if isinstance(value, str):
        base64.b64decode(value, validate=True)
    return True


_FORMATS.checks("date-time", raises=ValueError)(_is_datetime)
_FORMATS.checks("date", raises=ValueError)(_is_date)
_FORMATS.checks("uuid", raises=ValueError)(_is_uuid)
_FORMATS.checks("byte", raises=(ValueError, binascii.Error))(_is_byte)


def _field(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error_to_cause(error: jsonschema.ValidationError) -> dict[str, str]:
    path = _field(error.absolute_path)
    value = error.instance
    where = path or "<root>"
    validator = error.validator
    schema_value = error.validator_value
    if validator == "required":
        match = re.match(r"^'(.+)' is a required property$", error.message)
        missing = match.group(1) if match else str(schema_value)
        return _cause("FieldValueRequired", f"{path}.{missing}" if path else missing, "Required value")
    if validator == "type":
        expected = ",".join(schema_value) if isinstance(schema_value, list) else str(schema_value)
        return _cause("FieldValueTypeInvalid", where,
                      f"Invalid value: {go_value(json_type(value))}: {where} in body must be of type "
                      f"{expected}: {go_value(json_type(value))}")
    if validator in ("anyOf", "allOf") and any(
            isinstance(alt, dict) and alt.get("type") == "integer" for alt in _flatten_alternatives(schema_value)):
        return _cause("FieldValueTypeInvalid", where,
                      f"Invalid value: {go_value(json_type(value))}: {where} in body must be of type "
                      f"integer,string: {go_value(json_type(value))}")
    if validator == "enum":
        supported = ", ".join(go_value(v) for v in schema_value)
        return _cause("FieldValueNotSupported", where,
                      f"Unsupported value: {go_value(value)}: supported values: {supported}")
    if validator in ("maximum", "minimum"):
        exclusive = error.schema.get("exclusiveMaximum" if validator == "maximum" else "exclusiveMinimum")
        relation = ("less than" if validator == "maximum" else "greater than") + ("" if exclusive else " or equal to")
        return _cause("FieldValueInvalid", where,
                      f"Invalid value: {go_value(value)}: {where} in body should be {relation} {schema_value}")
    if validator == "pattern":
        return _cause("FieldValueInvalid", where,
                      f"Invalid value: {go_value(value)}: {where} in body should match '{schema_value}'")
    if validator == "maxLength":
        return _cause("FieldValueTooLong", where, f"Too long: may not be more than {schema_value} bytes")
    if validator == "minLength":
        return _cause("FieldValueInvalid", where,
                      f"Invalid value: {go_value(value)}: {where} in body should be at least "
                      f"{schema_value} chars long")
    if validator == "maxItems":
        return _cause("FieldValueTooMany", where, f"Too many: {len(value)}: must have at most {schema_value} items")
    if validator == "minItems":
        return _cause("FieldValueInvalid", where,
                      f"Invalid value: {len(value)}: {where} in body should have at least {schema_value} items")
    if validator == "maxProperties":
        return _cause("FieldValueTooMany", where,
                      f"Too many: {len(value)}: must have at most {schema_value} items")
    if validator == "format":
        return _cause("FieldValueTypeInvalid", where,
                      f"Invalid value: {go_value(value)}: {where} in body must be of type {schema_value}: "
                      f"{go_value(value)}")
    if validator == "multipleOf":
        return _cause("FieldValueInvalid", where,
                      f"Invalid value: {go_value(value)}: {where} in body should be a multiple of {schema_value}")
    return _cause("FieldValueInvalid", where, f"Invalid value: {go_value(value)}: {error.message}")


_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _int_or_string_causes(error: jsonschema.ValidationError) -> list[dict[str, str]]:
    """What kube-openapi adds for a value that fails an int-or-string's explicit ``anyOf``: the
    anyOf failure and the first alternative's (integer) failures."""
    path = _field(error.absolute_path) or "<root>"
    kind = go_value(json_type(error.instance))
    return [
        _cause("FieldValueInvalid", "<nil>", f'Invalid value: "": "{path}" must validate at least one schema (anyOf)'),
        _cause("FieldValueTypeInvalid", path, f"Invalid value: {kind}: {path} in body must be of type integer: {kind}"),
        _cause("FieldValueInvalid", "<nil>",
               f'Invalid value: "": Checked value must be of type integer (default format) in {path}'),
    ]


def _flatten_alternatives(value: Any) -> list[Any]:
    result: list[Any] = []
    for alt in value if isinstance(value, list) else []:
        result.append(alt)
        if isinstance(alt, dict) and isinstance(alt.get("anyOf"), list):
            result.extend(alt["anyOf"])
    return result


#: Schemas already checked against the draft-4 meta-schema (the costliest step of starting a
#: cluster with large CRDs; every test starts one).
_CHECKED_SCHEMAS: set[str] = set()


class CustomResourceSchema:
    """The admission pipeline (prune, default, validate) for one version of a custom resource."""

    def __init__(self, openapi: dict[str, Any]) -> None:
        self.openapi = openapi
        self.json_schema = to_json_schema(openapi)
        text = json.dumps(self.json_schema, sort_keys=True)
        if text not in _CHECKED_SCHEMAS:
            jsonschema.Draft4Validator.check_schema(self.json_schema)
            _CHECKED_SCHEMAS.add(text)
        self.validator = jsonschema.Draft4Validator(self.json_schema, format_checker=_FORMATS)
        self.has_rules = _has_rules(openapi)
        self._trees: dict[str, cel.Node | None] = {}

    def prune(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Drop unknown fields and non-nullable nulls; returns the new object and the unknown paths."""
        unknown: list[str] = []
        pruned = self._prune(copy.deepcopy(obj), self.openapi, [], unknown, root=True)
        return pruned, unknown

    def _prune(self, value: Any, schema: dict[str, Any], path: list[Any], unknown: list[str],
               *, root: bool = False) -> Any:
        if isinstance(value, dict):
            properties: dict[str, Any] = schema.get("properties") or {}
            additional = schema.get("additionalProperties")
            preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            embedded = bool(schema.get("x-kubernetes-embedded-resource"))
            for key in list(value):
                if (root or embedded) and key in ("apiVersion", "kind", "metadata"):
                    continue
                sub = properties.get(key)
                if sub is None and isinstance(additional, dict):
                    sub = additional
                if sub is None:
                    if not preserve and additional is not True and (properties or additional is not None
                                                                     or schema.get("type") == "object"):
                        unknown.append(_field([*path, key]))
                        del value[key]
                    continue
                if value[key] is None and not sub.get("nullable"):
                    del value[key]
                    continue
                value[key] = self._prune(value[key], sub, [*path, key], unknown)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self._prune(item, schema["items"], [*path, index], unknown) for index, item in enumerate(value)]
        return value

    def apply_defaults(self, obj: dict[str, Any]) -> dict[str, Any]:
        result = copy.deepcopy(obj)
        self._default(result, self.openapi)
        return result

    def _default(self, value: Any, schema: dict[str, Any]) -> None:
        if isinstance(value, dict):
            properties: dict[str, Any] = schema.get("properties") or {}
            for key, sub in properties.items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    self._default(value[key], sub)
            additional = schema.get("additionalProperties")
            if isinstance(additional, dict):
                for key in value:
                    if key not in properties:
                        self._default(value[key], additional)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self._default(item, schema["items"])

    def validate(self, obj: dict[str, Any]) -> list[dict[str, str]]:
        found = sorted(self.validator.iter_errors(obj), key=lambda e: _field(e.absolute_path))
        type_errors = {_field(e.absolute_path) for e in found if e.validator == "type"}
        causes: list[dict[str, str]] = []
        for error in found:
            if error.validator != "type" and _field(error.absolute_path) in type_errors:
                continue  # the real server reports only the type mismatch of a field
            causes.append(_error_to_cause(error))
            if error.validator == "anyOf" and error.validator_value == _INT_OR_STRING:
                causes.extend(_int_or_string_causes(error))
        unique: list[dict[str, str]] = []
        for cause in causes:
            if cause not in unique:
                unique.append(cause)
        return unique

    # ---- CEL rules (x-kubernetes-validations) -------------------------------------------------------

    def _tree(self, rule: str) -> cel.Node | None:
        if rule not in self._trees:
            try:
                self._trees[rule] = cel.parse(rule)
            except cel.CelSyntaxError:
                self._trees[rule] = None  # refused with the CRD; here only for CRDs loaded around admission
        return self._trees[rule]

    def cel_causes(self, obj: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
        """The causes of the rules ``obj`` breaks (``old``: the object before an update)."""
        causes: list[dict[str, str]] = []
        self._cel(obj, self.openapi, old, old is not None, [], causes)
        return causes

    def _cel(self, value: Any, schema: dict[str, Any], old: Any, has_old: bool, path: list[Any],
             causes: list[dict[str, str]]) -> None:
        for rule in schema.get("x-kubernetes-validations") or []:
            if isinstance(rule, dict):
                self._rule(rule, value, schema, old, has_old, path, causes)
        if isinstance(value, dict):
            properties: dict[str, Any] = schema.get("properties") or {}
            additional = schema.get("additionalProperties")
            for key, item in value.items():
                sub = properties.get(key, additional if isinstance(additional, dict) else None)
                if isinstance(sub, dict):
                    old_has = has_old and isinstance(old, dict) and key in old
                    self._cel(item, sub, old[key] if old_has else None, old_has, [*path, key], causes)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            keys = schema.get("x-kubernetes-list-map-keys") or []
            correlate = has_old and isinstance(old, list) and schema.get("x-kubernetes-list-type") == "map" and keys
            for index, item in enumerate(value):
                previous = None
                if correlate and isinstance(item, dict):
                    previous = next((o for o in old if isinstance(o, dict)
                                     and all(o.get(k) == item.get(k) for k in keys)), None)
                self._cel(item, schema["items"], previous, previous is not None, [*path, index], causes)

    def _rule(self, rule: dict[str, Any], value: Any, schema: dict[str, Any], old: Any, has_old: bool,
              path: list[Any], causes: list[dict[str, str]]) -> None:
        tree = self._tree(str(rule.get("rule", "")))
        if tree is None:
            return
        transition = cel.uses_old_self(tree)
        if transition and not has_old and not rule.get("optionalOldSelf"):
            return
        if not transition and has_old and value == old:
            return  # ratcheting: an unchanged value keeps passing
        variables: dict[str, Any] = {"self": value}
        if transition:
            variables["oldSelf"] = old if has_old else None
        where = _field(path)
        text = str(rule.get("message") or "").strip() or f"failed rule: {str(rule.get('rule', '')).strip()}"
        shape = schema.get("type")
        try:
            result = cel.evaluate(tree, variables)
        except cel.CelUnsupported:
            return  # not checked: the interpreter lacks a function the rule uses
        except cel.CelError as exc:
            rule_text = str(rule.get("message") or rule.get("rule", "")).strip()
            causes.append(_cause("FieldValueInvalid", where or "<root>",
                                 f"Invalid value: {go_value(shape or '')}: {exc} evaluating rule: {rule_text}"))
            return
        if result is True:
            return
        if rule.get("messageExpression"):
            message_tree = self._tree(str(rule["messageExpression"]))
            try:
                produced = cel.evaluate(message_tree, variables) if message_tree is not None else None
            except cel.CelError:
                produced = None
            if isinstance(produced, str) and produced.strip():
                text = produced.strip()
        field_path = str(rule.get("fieldPath") or "")
        if field_path:
            where = (where + field_path) if where else field_path.lstrip(".")
        reason = rule.get("reason") or "FieldValueInvalid"
        if reason == "FieldValueForbidden":
            causes.append(_cause(reason, where, f"Forbidden: {text}"))
        elif reason == "FieldValueRequired":
            causes.append(_cause(reason, where, f"Required value: {text}"))
        elif reason == "FieldValueDuplicate":
            causes.append(_cause(reason, where, f"Duplicate value: {go_value(value)}"))
        elif shape in ("object", "array"):
            causes.append(_cause("FieldValueInvalid", where, f"Invalid value: {text}"))
        else:
            causes.append(_cause("FieldValueInvalid", where, f"Invalid value: {go_value(value)}: {text}"))


def _has_rules(schema: Any) -> bool:
    if isinstance(schema, dict):
        return bool(schema.get("x-kubernetes-validations")) or any(_has_rules(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_rules(v) for v in schema)
    return False


#: The fields of ObjectMeta a client may send; the real server drops (and reports) any other.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields"})

#: The error types the real server considers blocking: CEL rules are then not evaluated.
_BLOCKING_REASONS = {"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany",
                     "FieldValueTypeInvalid"}
_NOT_CHECKED = _cause("FieldValueInvalid", "<nil>", "Invalid value: null: some validation rules were not checked "
                                                    "because the object was invalid; correct the existing errors "
                                                    "to complete validation")


def prune_metadata(obj: dict[str, Any]) -> list[str]:
    """Drop the unknown fields of ``metadata`` (typed ObjectMeta on the real server); their paths."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return []
    unknown = sorted(key for key in meta if key not in OBJECT_META_FIELDS)
    for key in unknown:
        del meta[key]
    return [f"metadata.{key}" for key in unknown]


def unknown_fields(unknown: list[str], field_validation: str, *, kind: str, version: str) -> list[str]:
    """``fieldValidation`` applied to unknown fields: 400 (Strict), warnings (Warn) or nothing;
    ``kind`` and ``version``: what the body was decoded as (for the 400's message)."""
    if not unknown or field_validation == "Ignore":
        return []
    if field_validation == "Strict":
        raise errors.strict_decoding(unknown, kind=kind, version=version)
    return [f'unknown field "{path}"' for path in unknown]


def check_field_validation(value: str, options_kind: str) -> None:
    """422 on a ``fieldValidation`` the server does not know, as ``CreateOptions`` (or Update/Patch) are checked."""
    if value not in ("", "Ignore", "Strict", "Warn"):
        raise errors.invalid(options_kind, "meta.k8s.io", "", [_cause(
            "FieldValueNotSupported", "fieldValidation",
            f'Unsupported value: {go_value(value)}: supported values: "", "Ignore", "Strict", "Warn"')])


def admit_custom(schema: CustomResourceSchema, obj: dict[str, Any], *, field_validation: str,
                 kind: str, group: str, name: str, old: dict[str, Any] | None = None,
                 metadata_causes: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None,
                 cel_rules: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Prune, default and validate a custom resource (then, with ``cel_rules``, its CEL rules);
    returns it and the ``Warning`` texts. ``old``: the stored object, on an update (transition
    rules, ratcheting); ``metadata_causes``: the checks of its metadata, run once unknown fields
    passed."""
    obj = copy.deepcopy(obj)
    unknown_meta = prune_metadata(obj)
    pruned, unknown = schema.prune(obj)
    version = str(obj.get("apiVersion") or "").rpartition("/")[2]
    warnings = unknown_fields(unknown_meta + sorted(unknown), field_validation, kind=kind, version=version)
    causes = metadata_causes(pruned) if metadata_causes is not None else []
    if causes:
        raise errors.invalid(kind, group, name, causes)
    defaulted = schema.apply_defaults(pruned)
    causes = schema.validate(defaulted)
    if schema.has_rules and cel_rules:
        if any(cause["reason"] in _BLOCKING_REASONS for cause in causes):
            causes.append(dict(_NOT_CHECKED))
        else:
            causes.extend(schema.cel_causes(defaulted, old))
    if causes:
        raise errors.invalid(kind, group, name, causes)
    return defaulted, warnings
