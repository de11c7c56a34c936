"""The real operator process moving VirtualService weights for ModelCanaries on the emulated cluster.

The VirtualService is shaped like a real Istio one (several HTTP routes with matches, retries,
timeouts, headers, a mirror and a fault, a delegate, a redirect, TCP and TLS routes): after
every change, everything but the managed weights is compared whole with what was created.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.operator.canary_world import (
    CANDIDATE_HOST,
    MCANARY,
    condition,
    events_for,
    events_until,
    install_world,
    model_canary,
    operator_writes,
    route,
    settle,
    virtual_service,
    vs_path,
    wait_phase,
    weights,
    without_weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration

MANAGED = ("predict", "audited")


def appended_candidates_removed(spec: dict[str, Any]) -> dict[str, Any]:
    """`without_weights` of a live spec, less the candidate destinations the operator appended."""
    for http_route in spec.get("http") or []:
        destinations = http_route.get("route") or []
        if len(destinations) > 1 and destinations[-1]["destination"]["host"] == CANDIDATE_HOST:
            destinations.pop()
    return spec


def test_weights_for_many_percents_and_nothing_else_changes(kube: Any, start_operator: StartOperator) -> None:
    original = install_world(kube)
    start_operator(resync=30)  # only the watch events drive it
    kube.create(MCANARY, model_canary(percent=0))
    wait_phase(kube, "mnist", "Active")
    assert kube.get(vs_path())["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"], \
        "0% of an untouched VirtualService is no write"
    for percent in (1, 20, 33, 50, 77, 99, 100, 0):
        kube.patch(f"{MCANARY}/mnist", {"spec": {"percent": percent}})
        vs = kube.wait_for(vs_path(), lambda o, p=percent: weights(o)[-2:] == [100 - p, p], timeout=10)
        audited = weights(vs, "audited")
        assert audited[0] == 20 and sum(audited) == 100  # the audit sink keeps its share
        assert audited[2] == (80 * percent + 50) // 100
        assert sum(d["weight"] for d in vs["spec"]["http"][5]["route"]) == 100  # the unnamed catch-all
        assert appended_candidates_removed(without_weights(vs)) == without_weights(original)
        assert vs["metadata"]["labels"] == original["metadata"]["labels"]
        assert vs["metadata"]["annotations"] == original["metadata"]["annotations"]
        assert "finalizers" not in vs["metadata"] and "ownerReferences" not in vs["metadata"]
        mc = kube.wait_for(f"{MCANARY}/mnist", lambda o, p=percent: (o.get("status") or {}).get("percent") == p
                           and o["status"].get("observedGeneration") == o["metadata"]["generation"])
        assert mc["status"]["phase"] == ("Promoted" if percent == 100 else "Active")
        assert (mc["status"]["stableWeight"], mc["status"]["candidateWeight"]) == (100 - percent, percent)
    assert route(vs, "predict")["route"][1]["destination"] == {"host": CANDIDATE_HOST, "port": {"number": 80}}
    changed = [e for e in events_until(kube, "mnist", lambda es: any(
        "candidate torch-mnist-v2 77%" in e["message"] for e in es)) if e["reason"] == "WeightsChanged"]
    assert any("candidate torch-mnist-v2 77%" in e["message"] for e in changed)


def test_a_settled_canary_writes_nothing(cluster: Any, kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=0.5)
    kube.create(MCANARY, model_canary(percent=30, routes=["predict"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30])
    wait_phase(kube, "mnist", "Active")
    settle(cluster)
    since = time.time()
    time.sleep(3)  # six resyncs, each reading everything again
    assert operator_writes(cluster, since) == 0


def test_a_hand_edit_is_put_back_at_once(kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=30)  # no resync in sight: the VirtualService's watch event does it
    kube.create(MCANARY, model_canary(percent=30, routes=["predict"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30])
    wait_phase(kube, "mnist", "Active")
    live = kube.get(vs_path())
    edited = [dict(d) for d in route(live, "predict")["route"]]
    edited[0]["weight"], edited[1]["weight"] = 95, 5
    http = live["spec"]["http"]
    http[1] = {**http[1], "route": edited}
    kube.patch(vs_path(), {"spec": {"http": http}})
    restored = kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30], timeout=5)
    assert without_weights(restored) == without_weights(live)


def test_deletion_gives_stable_everything_and_removes_only_what_it_added(
    kube: Any, start_operator: StartOperator,
) -> None:
    original = install_world(kube)
    http = original["spec"]["http"]  # the candidate is already listed (at 0) in the audited route
    http[2]["route"].append({"destination": {"host": CANDIDATE_HOST, "port": {"number": 80}}, "weight": 0})
    original = kube.patch(vs_path(), {"spec": {"http": http}})
    start_operator(resync=30)
    kube.create(MCANARY, model_canary(percent=40, routes=list(MANAGED)))
    kube.wait_for(vs_path(), lambda o: weights(o) == [60, 40] and weights(o, "audited") == [20, 48, 32])
    mc = wait_phase(kube, "mnist", "Active")
    assert mc["status"]["addedCandidateRoutes"] == ["predict"]
    assert "serverless.xyz/kserve-operator" in mc["metadata"]["finalizers"]
    kube.delete(f"{MCANARY}/mnist")
    kube.wait_gone(f"{MCANARY}/mnist", timeout=10)
    vs = kube.get(vs_path())
    assert vs["spec"] == original["spec"]  # stable 100 (as written before), audited 20/80/0
    assert any(e["reason"] == "Released" for e in events_for(kube, "mnist"))


def test_percent_zero_is_a_rollback_by_hand(kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=30)
    kube.create(MCANARY, model_canary(percent=60, routes=["predict"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [40, 60])
    kube.patch(f"{MCANARY}/mnist", {"spec": {"percent": 0}})
    kube.wait_for(vs_path(), lambda o: weights(o) == [100, 0])
    mc = kube.wait_for(f"{MCANARY}/mnist", lambda o: o["status"].get("percent") == 0)
    assert condition(mc, "Available")["status"] == "True"
    assert "stable 100% / candidate 0%" in condition(mc, "Available")["message"]


def test_routes_and_virtual_services_left_behind_by_a_spec_change_are_given_back(
    kube: Any, start_operator: StartOperator,
) -> None:
    original = install_world(kube)
    other = kube.create(vs_path(name="mnist-next").rsplit("/", 1)[0], virtual_service(name="mnist-next"))
    start_operator(resync=30)
    kube.create(MCANARY, model_canary(percent=30, routes=["predict", "audited"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30] and weights(o, "audited") == [20, 56, 24])
    kube.patch(f"{MCANARY}/mnist", {"spec": {"routes": ["audited"]}})
    vs = kube.wait_for(vs_path(), lambda o: weights(o) == [100])
    assert route(vs, "predict") == route(original, "predict")  # exactly as before the canary
    assert weights(vs, "audited") == [20, 56, 24]
    kube.patch(f"{MCANARY}/mnist", {"spec": {"virtualService": {"name": "mnist-next"}, "routes": ["predict"]}})
    kube.wait_for(vs_path(name="mnist-next"), lambda o: weights(o) == [70, 30])
    vs = kube.wait_for(vs_path(), lambda o: weights(o, "audited") == [20, 80])
    assert vs["spec"] == original["spec"]
    mc = wait_phase(kube, "mnist", "Active")
    assert mc["status"]["virtualService"] == "default/mnist-next"
    assert mc["status"]["addedCandidateRoutes"] == ["predict"]
    kube.delete(f"{MCANARY}/mnist")
    kube.wait_gone(f"{MCANARY}/mnist", timeout=10)
    assert kube.get(vs_path(name="mnist-next"))["spec"] == other["spec"]
