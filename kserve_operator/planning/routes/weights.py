"""What every route planner shares: the plan of a weight change and the problem that stops one (its
reasons are the ModelCanary's, resources/canary_conditions.py).

Weights are read as percents: stable and candidate share what the other destinations of a rule
leave (100 minus their weights), the candidate gets `percent` of it, rounded half up.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kserve_operator.resources.canary import CanarySpec

Route = dict[str, Any]


class RoutingProblem(Exception):
    """The routing object cannot carry the split as asked: reported in status, the object is not touched."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def share_of(remaining: int, percent: int) -> int:
    """The candidate's integer weight out of what other destinations leave (half rounds up)."""
    return (remaining * percent + 50) // 100


@dataclasses.dataclass(frozen=True)
class WeightPlan:
    """The object's rule list (a VirtualService's `spec.http`, an HTTPRoute's `spec.rules`) with the
    split applied, and what it means."""

    rules: list[Route]
    changed: bool
    managed: tuple[str, ...]  # rule keys (name, else position)
    appended: tuple[str, ...]  # rule keys where this plan appends the candidate destination
    stable_weight: int  # in the first managed rule
    candidate_weight: int
    removed: tuple[str, ...] = ()  # rule keys where this plan removes the candidate we appended


class SplitWeights(Protocol):
    def __call__(self, backends: Sequence[Mapping[str, Any]], spec: CanarySpec, percent: int, key: str, /, *,
                 remove_added_candidate: bool = False) -> tuple[list[dict[str, Any]], bool, tuple[int, int]]: ...


@dataclasses.dataclass(frozen=True)
class RuleShape:
    """Where a kind of routing object keeps its weighted backends, so that one walk plans both: a
    VirtualService's `spec.http[].route`, an HTTPRoute's `spec.rules[].backendRefs`."""

    rules: Callable[[Mapping[str, Any]], list[Route]]  # the object's rule list as read
    key: Callable[[Mapping[str, Any], int], str]  # a rule's key: its name, else its position
    backends: str  # the field of a rule holding the weighted backends
    managed: Callable[[Mapping[str, Any], CanarySpec], tuple[int, ...]]  # indices of the rules to manage
    split: SplitWeights  # one rule's new backends for a share


def _release_rule(shape: RuleShape, live: list[Route], rules: list[Route], spec: CanarySpec, key: str,
                  remove: bool) -> tuple[int, int] | None:
    """Stable 100% in the rule keyed `key` (in `rules`); None when it is gone or unrecognisable."""
    for index, rule in enumerate(live):
        if shape.key(rule, index) != key or not isinstance(rule.get(shape.backends), list):
            continue
        try:
            backends, _, weights = shape.split(rule[shape.backends], spec, 0, key, remove_added_candidate=remove)
        except RoutingProblem:
            return None
        rules[index][shape.backends] = copy.deepcopy(backends)
        return weights
    return None


def plan_weights_in(shape: RuleShape, obj: Mapping[str, Any], spec: CanarySpec, percent: int, *,
                    previously: Sequence[str] = (), added: Sequence[str] = ()) -> WeightPlan:
    """Put the candidate at `percent` of every managed rule; nothing else in the rule list changes.

    Rules managed before (`previously`) that the spec no longer selects are given back: stable
    100%, the candidate backend removed where we appended it (`added`).
    """
    live = shape.rules(obj)
    rules = copy.deepcopy(live)
    keys: list[str] = []
    appended: list[str] = []
    first: tuple[int, int] | None = None
    for index in shape.managed(obj, spec):
        key = shape.key(live[index], index)
        backends, was_added, weights = shape.split(live[index][shape.backends], spec, percent, key)
        rules[index][shape.backends] = copy.deepcopy(backends)
        keys.append(key)
        if was_added:
            appended.append(key)
        first = first or weights
    assert first is not None  # `managed` never returns an empty tuple
    removed = tuple(key for key in previously if key not in keys and key in added
                    and _release_rule(shape, live, rules, spec, key, remove=True) is not None)
    for key in previously:
        if key not in keys and key not in added:
            _release_rule(shape, live, rules, spec, key, remove=False)
    return WeightPlan(rules, rules != live, tuple(keys), tuple(appended), *first, removed=removed)


def plan_release_in(shape: RuleShape, obj: Mapping[str, Any], spec: CanarySpec, managed: Sequence[str],
                    added: Sequence[str]) -> WeightPlan:
    """Stable gets everything again in the rules we managed; the candidate backend we appended is
    removed, one that was there before stays at weight 0. Rules changed beyond recognition (renamed,
    no stable backend any more) are left alone."""
    live = shape.rules(obj)
    rules = copy.deepcopy(live)
    keys: list[str] = []
    first: tuple[int, int] = (100, 0)
    for key in managed:
        weights = _release_rule(shape, live, rules, spec, key, remove=key in added)
        if weights is None:
            continue
        if not keys:
            first = weights
        keys.append(key)
    return WeightPlan(rules, rules != live, tuple(keys), (), *first,
                      removed=tuple(key for key in keys if key in added))
