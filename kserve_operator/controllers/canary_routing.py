"""The ModelCanary's traffic router, in the shape of Flagger's routers: observe the routes of the
target, set the weights of stable and candidate, restore stable. One class serves every kind: the
I/O is a `RouteClient` (clients/routers/: an Istio VirtualService, a Gateway API HTTPRoute), the
decisions a `RoutePlanner` (planning/routes/); `traffic_routers` is the factory. The controller
asks for a router by the kind the spec names and knows neither Istio nor the Gateway API.

Guarantees of every router: only the weights of the stable and candidate destinations of the
managed rules change, plus the candidate destination appended (and removed again on restore);
every write is conditional on the resourceVersion read (ApiError 409 when the object changed:
`set_weights`'s caller observes again and calls again, `restore` does so itself); an object another
controller owns is never written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.routers import RouteClient, RouteTable, route_clients
from kserve_operator.errors import ApiError
from kserve_operator.planning.routes.planners import RoutePlanner, planner_for
from kserve_operator.planning.routes.weights import RoutingProblem, WeightPlan
from kserve_operator.resources.canary import CanarySpec
from kserve_operator.resources.routes import ObservedRoutes, RouteTarget

BeforeWrite = Callable[[WeightPlan], Awaitable[None]]
CONFLICT_ATTEMPTS = 5  # re-read and re-plan on 409 this many times before the core's backoff takes over


def conflict_pause(attempt: int) -> float:
    """A short jittered pause before re-reading after a 409 (the other writer is mid-change)."""
    return float(min(0.05 * 2 ** attempt, 0.5) * (0.5 + random.random()))


class TrafficRouter:
    """Observe, set weights, restore: one routing kind."""

    def __init__(self, client: RouteClient, planner: RoutePlanner) -> None:
        self._client = client
        self._planner = planner

    @property
    def kind(self) -> str:
        return self._planner.kind

    async def observe(self, target: RouteTarget) -> ObservedRoutes | None:
        """The object as read (with the controller that owns it, if another does), or None when missing."""
        table = await self._client.read(target.namespace, target.name)
        return None if table is None else self._observed(target, table)

    async def served(self, target: RouteTarget) -> bool:
        """Whether the cluster serves the kind at all (why `observe` found nothing)."""
        return await self._client.served(target.namespace)

    async def set_weights(
        self, observed: ObservedRoutes, spec: CanarySpec, percent: int, *, previously: Sequence[str] = (),
        added: Sequence[str] = (), before_write: BeforeWrite | None = None,
    ) -> tuple[WeightPlan, ObservedRoutes]:
        """Put the candidate at `percent` of the managed rules (rules managed before and no longer
        selected are given back; `added`: where we appended the candidate). Nothing is written when
        the object carries the split already; `before_write` runs first otherwise (the controller
        records what it is about to append). RoutingProblem: the object cannot carry the split."""
        plan = self._planner.plan_weights(observed.obj, spec, percent, previously=previously, added=added)
        if not plan.changed:
            return plan, observed
        if before_write is not None:
            await before_write(plan)
        return plan, await self._write(observed, plan)

    async def restore(self, spec: CanarySpec, managed: Sequence[str], added: Sequence[str]) -> WeightPlan | None:
        """Stable 100% on the rules we managed in `spec.route`, the candidate destination we appended
        removed (one that was there before stays at weight 0); rules changed beyond recognition are
        left alone. Read here, re-read on a 409; None when the object is gone or another controller's."""
        for attempt in range(CONFLICT_ATTEMPTS):
            observed = await self.observe(spec.route)
            if observed is None or observed.owner_problem is not None:
                return None
            plan = self._planner.plan_release(observed.obj, spec, managed, added)
            if not plan.changed:
                return plan
            try:
                await self._write(observed, plan)
                return plan
            except ApiError as exc:
                if not exc.conflict or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
            await asyncio.sleep(conflict_pause(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _write(self, observed: ObservedRoutes, plan: WeightPlan) -> ObservedRoutes:
        if observed.owner_problem is not None:  # callers check first; never written whatever they do
            raise RoutingProblem(observed.owner_problem.reason, observed.owner_problem.message)
        table = await self._client.write(RouteTable(observed.obj, observed.version),
                                         self._planner.patch(observed.obj, plan.rules))
        return self._observed(observed.target, table)

    def _observed(self, target: RouteTarget, table: RouteTable) -> ObservedRoutes:
        return ObservedRoutes(target, table.obj, table.version, self._planner.owner_problem(table.obj))


def traffic_routers(api: KubeApi) -> dict[str, TrafficRouter]:
    """One router per routing kind (resources.routes.KIND_*), each over its client and planner."""
    return {kind: TrafficRouter(client, planner_for(kind)) for kind, client in route_clients(api).items()}
