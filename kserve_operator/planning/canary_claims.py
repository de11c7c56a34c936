"""One route, one canary: which ModelCanary manages a route when several name the same one.

The earlier-created ModelCanary keeps a route (same second: namespace/name decides, so both sides
agree); a later one naming the same route of the same routing object is refused (RouteClaimed)
and writes nothing. Pure: the controller passes the other canaries as its index knows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.planning.routes.planners import planner_for
from kserve_operator.planning.routes.weights import RoutingProblem
from kserve_operator.resources import canary as res
from kserve_operator.resources.canary import CanarySpec
from kserve_operator.resources.routes import KIND_VIRTUAL_SERVICE


@dataclasses.dataclass(frozen=True)
class Claimant:
    """Another ModelCanary as the controller's index knows it."""

    namespace: str
    name: str
    created: str  # creationTimestamp (RFC 3339, sortable)
    spec: Mapping[str, Any]
    deleting: bool = False  # on its way out: it gives its routes back, claims nothing

    def order(self) -> tuple[str, str, str]:
        """Earlier creation wins; same second: namespace/name decides, so both sides agree."""
        return (self.created, self.namespace, self.name)


def _claimed(obj: Mapping[str, Any], spec: CanarySpec) -> set[str]:
    try:
        return set(planner_for(spec.route.kind).managed_keys(obj, spec))
    except RoutingProblem:
        return set()


def first_claim(me: Claimant, others: Iterable[Claimant], obj: Mapping[str, Any],
                spec: CanarySpec) -> tuple[Claimant, str] | None:
    """The earlier ModelCanary that already claims one of our routes, and the route; else None."""
    mine = _claimed(obj, spec)
    for other in sorted(others, key=Claimant.order):
        if other.deleting or other.order() >= me.order() or (other.namespace, other.name) == (
                me.namespace, me.name):
            continue
        try:
            theirs = res.parse_spec(other.spec, other.namespace)
        except InvalidSpec:  # an invalid canary claims nothing
            continue
        if not theirs.route.same_object(spec.route):
            continue
        shared = sorted(mine & _claimed(obj, theirs))
        if shared:
            return other, shared[0]
    return None


def claim_message(other: Claimant, route: str, spec: CanarySpec) -> str:
    rule = "HTTP route" if spec.route.kind == KIND_VIRTUAL_SERVICE else "rule"
    return (f"{rule} {route} of {spec.route.display} "
            f"is already managed by ModelCanary {other.namespace}/{other.name}; one route, one canary")
