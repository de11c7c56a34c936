"""One route planner per routing kind, picked by the kind a ModelCanary's spec names (Flagger's
router factory, pure half): what the ModelCanary planning and its router call instead of
knowing Istio or the Gateway API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kserve_operator.planning.routes import httproute, istio
from kserve_operator.planning.routes.weights import Route, WeightPlan
from kserve_operator.resources.canary import CanarySpec
from kserve_operator.resources.routes import (
    KIND_HTTP_ROUTE,
    KIND_VIRTUAL_SERVICE,
    PATCH_JSON,
    PATCH_MERGE,
    OwnerProblem,
    RoutePatch,
)


class PlanWeights(Protocol):
    def __call__(self, obj: Mapping[str, Any], spec: CanarySpec, percent: int, /, *,
                 previously: Sequence[str] = (), added: Sequence[str] = ()) -> WeightPlan: ...


@dataclasses.dataclass(frozen=True)
class RoutePlanner:
    """What a router needs decided for one kind: which rules, the weights, the release, the write."""

    kind: str
    managed_keys: Callable[[Mapping[str, Any], CanarySpec], tuple[str, ...]]  # raises RoutingProblem
    plan_weights: PlanWeights
    plan_release: Callable[[Mapping[str, Any], CanarySpec, Sequence[str], Sequence[str]], WeightPlan]
    owner_problem: Callable[[Mapping[str, Any]], OwnerProblem | None]
    patch: Callable[[Mapping[str, Any], list[Route]], RoutePatch]


PLANNERS: dict[str, RoutePlanner] = {
    KIND_VIRTUAL_SERVICE: RoutePlanner(
        KIND_VIRTUAL_SERVICE, istio.managed_keys, istio.plan_weights, istio.plan_release, istio.owner_problem,
        lambda obj, rules: RoutePatch(PATCH_MERGE, istio.weights_patch(obj, rules))),
    KIND_HTTP_ROUTE: RoutePlanner(
        KIND_HTTP_ROUTE, httproute.managed_keys, httproute.plan_weights, httproute.plan_release,
        httproute.owner_problem,
        lambda obj, rules: RoutePatch(PATCH_JSON, httproute.weights_patch(obj, rules))),
}


def planner_for(kind: str) -> RoutePlanner:
    return PLANNERS[kind]
