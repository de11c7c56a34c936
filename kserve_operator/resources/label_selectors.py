"""Kubernetes label selectors in their string form, parsed once and evaluated in memory.

The informer cache (clients/informer.py) answers LISTs from memory, so it needs the API
server's selector semantics: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists)
and `!k` (does not exist), comma-separated, all of them required. `implies` says whether every
object a selector admits is also admitted by another: a LIST may be served from an informer
only when its selector is at least as narrow as the informer's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "=", "!=", "in", "notin", "exists", "!"
_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_COMPARE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    """A selector string the API server would refuse."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        if self.operator in (EQUALS, IN):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin admit a missing key

    def implies(self, other: Requirement) -> bool:
        """Every label set this requirement admits, `other` admits too (decided on the key alone)."""
        if self.key != other.key:
            return False
        if other.operator == EXISTS:
            return self.operator in (EQUALS, IN, EXISTS)
        if other.operator in (EQUALS, IN):
            return self.operator in (EQUALS, IN) and self.values <= other.values
        if other.operator in (NOT_EQUALS, NOT_IN):
            return (self.operator in (EQUALS, IN) and not (self.values & other.values)) or \
                (self.operator in (NOT_EQUALS, NOT_IN) and other.values <= self.values) or \
                self.operator == DOES_NOT_EXIST
        return self.operator == DOES_NOT_EXIST


def _split(raw: str) -> list[str]:
    """Commas separate requirements except inside the parentheses of a set."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in raw:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """All of `requirements` must hold; the empty selector admits everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, raw: str | None) -> LabelSelector:
        if raw is None or not raw.strip():
            return cls()
        requirements = []
        for part in _split(raw):
            if (found := _SET.match(part)) is not None:
                values = frozenset(v.strip() for v in found.group(3).split(",") if v.strip())
                requirements.append(Requirement(found.group(1), IN if found.group(2) == "in" else NOT_IN, values))
            elif (found := _COMPARE.match(part)) is not None:
                operator = NOT_EQUALS if found.group(2) == "!=" else EQUALS
                requirements.append(Requirement(found.group(1), operator, frozenset({found.group(3)})))
            elif (found := _EXISTS.match(part)) is not None:
                requirements.append(Requirement(found.group(2), DOES_NOT_EXIST if found.group(1) else EXISTS))
            else:
                raise SelectorError(f"label selector {raw!r}: cannot parse {part.strip()!r}")
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        present = labels or {}
        return all(requirement.matches(present) for requirement in self.requirements)

    def implies(self, wider: LabelSelector) -> bool:
        """True when every object this selector admits, `wider` admits too."""
        return all(any(mine.implies(theirs) for mine in self.requirements) for theirs in wider.requirements)

    def equal_values(self, key: str) -> frozenset[str] | None:
        """The values `key` must take (from `k=v` or `k in (...)`), or None when unconstrained so."""
        for requirement in self.requirements:
            if requirement.key == key and requirement.operator in (EQUALS, IN):
                return requirement.values
        return None
