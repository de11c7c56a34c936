"""What every route planner shares: the plan of a weight change and the problem that stops one (its
reasons are the ModelCanary's, resources/canary_conditions.py).

Weights are read as percents: stable and candidate share what the other destinations of a rule
leave (100 minus their weights), the candidate gets `percent` of it, rounded half up.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
