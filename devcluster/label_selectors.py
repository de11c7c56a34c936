"""Label and field selectors, parsed and matched like kube-apiserver does for list and watch.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
comma-separated requirements are ANDed. Field selectors: ``=``, ``==``, ``!=`` on
``metadata.name`` and ``metadata.namespace`` for every resource, plus the few extra fields
the real server indexes for pods, events, secrets, namespaces and jobs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devcluster import errors

Matcher = Callable[[Mapping[str, Any]], bool]

_EXTRA_FIELDS: dict[str, set[str]] = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
               "regarding.kind", "regarding.name", "regarding.namespace", "regarding.uid"},
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "jobs": {"status.successful"},
    "replicasets": {"status.replicas"},
}

_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "=":
            return present and value in self.values
        if self.operator == "in":
            return present and value in self.values
        if self.operator == "!=":
            return not present or value not in self.values
        if self.operator == "notin":
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present  # "!"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( ... )`` value sets."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts]


_SET_RE = re.compile(rf"^({_LABEL_KEY})\s+(in|notin)\s*\(([^)]*)\)$")
_EQ_RE = re.compile(rf"^({_LABEL_KEY})\s*(==|=|!=)\s*(.*)$")


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """Parse a label selector; a malformed one is a 400 BadRequest like the real server's."""
    if not text:
        return []
    requirements: list[LabelRequirement] = []
    parts = _split_top_level(text)
    for index, part in enumerate(parts):
        if not part:  # "a=b," or ",a": the real parser wants an identifier there
            where = "after ','" if index else "at the start"
            raise errors.bad_request(f"found '', expected: identifier {where}")
        if match := _SET_RE.match(part):
            values = frozenset(v.strip() for v in match.group(4).split(",") if v.strip())
            requirements.append(LabelRequirement(match.group(1), match.group(3), values))
        elif match := _EQ_RE.match(part):
            operator = "!=" if match.group(3) == "!=" else "="
            requirements.append(LabelRequirement(match.group(1), operator, frozenset({match.group(4).strip()})))
        elif part.startswith("!") and re.fullmatch(_LABEL_KEY, part[1:].strip()):
            requirements.append(LabelRequirement(part[1:].strip(), "!"))
        elif re.fullmatch(_LABEL_KEY, part):
            requirements.append(LabelRequirement(part, "exists"))
        else:
            raise errors.bad_request(f"unable to parse requirement: invalid label selector {part!r}")
    return requirements


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negated: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        actual = "" if current is None else (str(current).lower() if isinstance(current, bool) else str(current))
        return (actual != self.value) if self.negated else (actual == self.value)


def parse_field_selector(text: str | None, plural: str) -> list[FieldRequirement]:
    """Parse a field selector; unknown fields are a 400 like the real server's."""
    if not text:
        return []
    allowed = {"metadata.name", "metadata.namespace"} | _EXTRA_FIELDS.get(plural, set())
    requirements: list[FieldRequirement] = []
    for part in _split_top_level(text):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", part)
        if not match:
            raise errors.bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
        path, operator, value = match.group(1), match.group(2), match.group(3).strip()
        if path not in allowed:
            raise errors.bad_request(f'field label not supported: {path}')
        requirements.append(FieldRequirement(path, operator == "!=", value))
    return requirements


@dataclass(frozen=True)
class Selector:
    """A label selector and a field selector together; both must match."""

    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None, plural: str) -> Selector:
        return cls(tuple(parse_label_selector(label_selector)),
                   tuple(parse_field_selector(field_selector, plural)))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(r.matches(obj) for r in self.fields)
