"""Both traffic routers on the real control plane: the behaviour suite of
tests/integration/operator/canary_router_behaviour.py (parametrized over VirtualService and
HTTPRoute), against objects the real API server stored under the fixture CRDs (tests/fixtures/crds:
Istio's VirtualService, the Gateway API's HTTPRoute with its defaults and CEL rule), with real 409s
from its optimistic concurrency. The reconcile runs in this process as an admin; the operator
process under the shipped RBAC is test_canary_real.py's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.operator.canary_router_behaviour import (  # noqa: F401 (the suite's tests and fixture)
    RouteWorld,
    api,
    test_a_409_race_ends_with_both_edits_kept,
    test_a_missing_object_is_a_condition_and_waits,
    test_an_object_another_controller_owns_is_refused_without_a_write,
    test_percent_0_10_100_move_only_the_managed_weights,
    test_what_the_object_cannot_carry_is_a_condition_with_no_write,
)
from tests.realcluster.conftest import World


@pytest.fixture
def route_world(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[RouteWorld]:
    kubeconfig = world.cluster.write_kubeconfig(world.tmp_path / "admin.kubeconfig", namespace=world.namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    route = RouteWorld(world.kube, world.namespace, kubeconfig)
    yield route
    route.drop_finalizers()  # no operator runs here: the namespace can then be deleted
