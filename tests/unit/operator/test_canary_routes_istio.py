"""Weights of an Istio VirtualService: only the managed weights move, everything else stays (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.planning.routes import istio as vsplan
from kserve_operator.planning.routes.istio import RoutingProblem, plan_release, plan_weights
from kserve_operator.resources.canary_conditions import CanaryReason
from tests.unit.operator.canary_shapes import CANDIDATE_HOST, STABLE_HOST, canary_spec, mnist_vs

STABLE_NAMED = ("predict", "audited", "http[5]")


def applied(vs: dict[str, Any], http: list[dict[str, Any]]) -> dict[str, Any]:
    """The VirtualService as the API server stores it after the merge patch."""
    result = copy.deepcopy(vs)
    result["spec"]["http"] = copy.deepcopy(http)
    return result


def without_weights(route: dict[str, Any]) -> dict[str, Any]:
    return {**route, "route": [{k: v for k, v in d.items() if k != "weight"} for d in route.get("route") or []]}


def test_by_default_every_http_route_sending_to_stable_is_managed() -> None:
    plan = plan_weights(mnist_vs(), canary_spec(), 20)
    assert plan.managed == STABLE_NAMED  # not explain, the delegate, the redirect; TCP/TLS never


def test_twenty_percent_in_each_managed_route() -> None:
    vs = mnist_vs()
    plan = plan_weights(vs, canary_spec(percent=20), 20)
    predict, audited, catch_all = plan.rules[1], plan.rules[2], plan.rules[5]
    assert predict["route"] == [
        {"destination": {"host": STABLE_HOST, "port": {"number": 80}}, "weight": 80,
         "headers": {"response": {"set": {"x-served-by": "stable"}}}},
        {"destination": {"host": CANDIDATE_HOST, "port": {"number": 80}}, "weight": 20},
    ]
    # The audit sink keeps its 20; stable and candidate share the 80 it leaves.
    assert [d["weight"] for d in audited["route"]] == [20, 64, 16]
    assert catch_all["route"][1] == {"destination": {"host": CANDIDATE_HOST, "port": {"number": 80}}, "weight": 20}
    assert (plan.stable_weight, plan.candidate_weight) == (80, 20)
    assert plan.appended == STABLE_NAMED
    assert plan.changed


def test_everything_but_the_managed_weights_is_kept_whole_and_in_order() -> None:
    vs = mnist_vs()
    plan = plan_weights(vs, canary_spec(), 35)
    after = applied(vs, plan.rules)
    assert {k: v for k, v in after.items() if k != "spec"} == {k: v for k, v in vs.items() if k != "spec"}
    assert {k: v for k, v in after["spec"].items() if k != "http"} == {
        k: v for k, v in vs["spec"].items() if k != "http"}
    for index, (before, now) in enumerate(zip(vs["spec"]["http"], after["spec"]["http"], strict=True)):
        assert list(now) == list(before), f"key order of route {index}"
        assert {k: v for k, v in now.items() if k != "route"} == {k: v for k, v in before.items() if k != "route"}
        if vsplan.route_key(before, index) not in STABLE_NAMED:
            assert now == before
            continue
        kept = without_weights(now)["route"][: len(before["route"])]
        assert kept == without_weights(before)["route"]
        assert sum(d["weight"] for d in now["route"]) == 100


def test_named_routes_limit_what_is_managed() -> None:
    vs = mnist_vs()
    plan = plan_weights(vs, canary_spec(routes=["predict"]), 50)
    assert plan.managed == ("predict",)
    assert [r for i, r in enumerate(plan.rules) if i != 1] == [r for i, r in enumerate(vs["spec"]["http"]) if i != 1]


def test_planning_the_weights_in_force_writes_nothing() -> None:
    vs = mnist_vs()
    for percent in (0, 1, 20, 50, 99, 100):
        first = applied(vs, plan_weights(vs, canary_spec(), percent).rules)
        again = plan_weights(first, canary_spec(), percent)
        assert not again.changed, percent
        assert again.rules == first["spec"]["http"]


def test_zero_percent_on_an_untouched_service_is_no_write() -> None:
    plan = plan_weights(mnist_vs(), canary_spec(percent=0), 0)
    assert not plan.changed and plan.appended == ()
    assert (plan.stable_weight, plan.candidate_weight) == (100, 0)


def test_a_candidate_destination_already_there_is_weighted_not_duplicated() -> None:
    vs = mnist_vs()
    vs["spec"]["http"][1]["route"].append(
        {"destination": {"host": "torch-mnist-v2-predictor", "port": {"number": 80}}, "weight": 0})
    plan = plan_weights(vs, canary_spec(routes=["predict"]), 30)
    assert [d["weight"] for d in plan.rules[1]["route"]] == [70, 30]
    assert plan.rules[1]["route"][1]["destination"]["host"] == "torch-mnist-v2-predictor"  # as written
    assert plan.appended == ()
    released = plan_release(applied(vs, plan.rules), canary_spec(routes=["predict"]), ("predict",), ())
    assert [d["weight"] for d in released.rules[1]["route"]] == [100, 0]  # not ours to remove


def test_release_gives_stable_everything_and_removes_what_we_added() -> None:
    vs = mnist_vs()
    spec = canary_spec()
    plan = plan_weights(vs, spec, 40)
    released = plan_release(applied(vs, plan.rules), spec, plan.managed, plan.appended)
    original = vs["spec"]["http"]
    assert released.rules[:5] == original[:5]
    # The unnamed catch-all had one destination with Istio's implied 100: now written explicitly.
    assert released.rules[5] == {**original[5], "route": [{**original[5]["route"][0], "weight": 100}]}
    assert (released.stable_weight, released.candidate_weight) == (100, 0)


def test_release_leaves_routes_it_cannot_recognise_alone() -> None:
    vs = mnist_vs()
    spec = canary_spec(routes=["predict"])
    moved = applied(vs, plan_weights(vs, spec, 40).rules)
    moved["spec"]["http"][1]["route"][0]["destination"]["host"] = "someone-else.models.svc.cluster.local"
    released = plan_release(moved, spec, ("predict",), ("predict",))
    assert not released.changed


def test_a_port_and_subset_on_the_backends() -> None:
    vs = mnist_vs()
    vs["spec"]["http"][1]["route"] = [
        {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 100}]
    spec = canary_spec(routes=["predict"], stable={"host": "reviews", "subset": "v1"},
                       candidate={"host": "reviews", "subset": "v2", "port": 9090})
    plan = plan_weights(vs, spec, 25)
    assert plan.rules[1]["route"] == [
        {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 75},
        {"destination": {"host": "reviews.models.svc.cluster.local", "subset": "v2", "port": {"number": 9090}},
         "weight": 25},
    ]


@pytest.mark.parametrize(("changes", "edit", "reason", "words"), [
    ({"routes": ["nope"]}, None, CanaryReason.ROUTE_NOT_FOUND, "no HTTP route named nope"),
    ({"routes": ["explain"]}, None, CanaryReason.STABLE_NOT_ROUTED, "sends nothing to the stable backend"),
    ({"routes": ["legacy"]}, None, CanaryReason.STABLE_NOT_ROUTED, "delegates to another VirtualService"),
    ({"stable": {"inferenceService": "other"}}, None, CanaryReason.STABLE_NOT_ROUTED, "no HTTP route"),
    ({"routes": ["audited"]}, lambda vs: vs["spec"]["http"][2]["route"][0].update(weight=120),
     CanaryReason.WEIGHTS_OVERFLOW, "already take 120%"),
    ({"routes": ["predict"]}, lambda vs: vs["spec"]["http"][1]["route"].append(
        {"destination": {"host": STABLE_HOST, "port": {"number": 81}}, "weight": 0}),
     CanaryReason.AMBIGUOUS_DESTINATION, "through 2 destinations"),
])
def test_routes_that_cannot_carry_the_split(changes: dict[str, Any], edit: Any, reason: str, words: str) -> None:
    vs = mnist_vs()
    if edit:
        edit(vs)
    with pytest.raises(RoutingProblem) as caught:
        plan_weights(vs, canary_spec(**changes), 20)
    assert caught.value.reason == reason
    assert words in caught.value.message


def test_the_patch_is_conditional_on_the_version_read() -> None:
    vs = mnist_vs()
    plan = plan_weights(vs, canary_spec(), 10)
    assert vsplan.weights_patch(vs, plan.rules) == {"metadata": {"resourceVersion": "4711"},
                                                  "spec": {"http": plan.rules}}


def test_weights_in_force_read_from_the_object() -> None:
    vs = mnist_vs()
    assert vsplan.weights_in_force(vs, canary_spec()) == (100, 0)
    assert vsplan.weights_in_force(applied(vs, plan_weights(vs, canary_spec(), 10).rules), canary_spec()) == (90, 10)
    assert vsplan.weights_in_force(vs, canary_spec(routes=["nope"])) is None


@pytest.mark.parametrize(("meta", "owned"), [
    ({"ownerReferences": [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                           "name": "torch-mnist", "uid": "u", "controller": True}]}, "InferenceService torch-mnist"),
    ({"ownerReferences": [{"apiVersion": "networking.internal.knative.dev/v1alpha1", "kind": "Ingress",
                           "name": "mnist", "uid": "u"}]}, "Knative's Ingress"),
    ({"labels": {"serving.kserve.io/inferenceservice": "torch-mnist"}}, "serving.kserve.io/inferenceservice"),
    ({"labels": {"app": "mnist"}, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x",
                                                       "uid": "u"}]}, None),
])
def test_a_virtual_service_kserve_or_knative_rewrites_is_recognised(meta: dict[str, Any], owned: str | None) -> None:
    vs = mnist_vs()
    vs["metadata"].update(meta)
    found = vsplan.foreign_owner(vs)
    if owned is None:
        assert found is None
    else:
        assert found is not None and owned in found and "platform team owns" in found


def _route(others: list[int], stable: int | None, candidate: int | None) -> dict[str, Any]:
    destinations: list[dict[str, Any]] = [
        {"destination": {"host": f"other-{i}.models.svc.cluster.local", "subset": f"s{i}"}, "weight": w,
         "headers": {"request": {"set": {"x-i": str(i)}}}}
        for i, w in enumerate(others)]
    stable_entry: dict[str, Any] = {"destination": {"host": STABLE_HOST, "port": {"number": 8080}}}
    if stable is not None:
        stable_entry["weight"] = stable
    destinations.insert(len(destinations) // 2, stable_entry)
    if candidate is not None:
        destinations.append({"destination": {"host": CANDIDATE_HOST}, "weight": candidate})
    return {"name": "r", "match": [{"uri": {"prefix": "/"}}], "timeout": "3s", "route": destinations}


@given(
    others=st.lists(st.integers(0, 40), max_size=3).filter(lambda ws: sum(ws) <= 100),
    stable=st.one_of(st.none(), st.integers(0, 100)),
    candidate=st.one_of(st.none(), st.integers(0, 100)),
    percent=st.integers(0, 100),
)
def test_any_route_sums_to_100_and_keeps_every_other_field(
    others: list[int], stable: int | None, candidate: int | None, percent: int,
) -> None:
    vs = mnist_vs()
    vs["spec"]["http"] = [vs["spec"]["http"][0], _route(others, stable, candidate)]
    spec = canary_spec(routes=["r"])
    plan = plan_weights(vs, spec, percent)
    route = plan.rules[1]
    weights = [vsplan._weight(d, len(route["route"])) for d in route["route"]]
    assert sum(weights) == 100
    assert all(isinstance(w, int) and w >= 0 for w in weights)
    before = vs["spec"]["http"][1]["route"]
    assert without_weights(route)["route"][: len(before)] == without_weights(vs["spec"]["http"][1])["route"]
    for i, d in enumerate(before):  # other destinations keep their weights exactly
        if d["destination"]["host"] not in (STABLE_HOST, CANDIDATE_HOST):
            assert route["route"][i] == d
    assert plan.rules[0] == vs["spec"]["http"][0]
    remaining = 100 - sum(others)
    assert plan.candidate_weight == vsplan.share_of(remaining, percent)
    # Released: the candidate gets nothing and the sum still holds.
    released = plan_release(applied(vs, plan.rules), spec, plan.managed, plan.appended)
    rel = released.rules[1]["route"]
    assert sum(vsplan._weight(d, len(rel)) for d in rel) == 100
    assert len(rel) == len(before)


def test_a_route_dropped_from_the_spec_is_given_back() -> None:
    vs = mnist_vs()
    both = plan_weights(vs, canary_spec(routes=["predict", "audited"]), 30)
    moved = applied(vs, both.rules)
    narrowed = plan_weights(moved, canary_spec(routes=["audited"]), 30, previously=both.managed,
                            added=both.appended)
    assert narrowed.managed == ("audited",) and narrowed.removed == ("predict",)
    assert narrowed.rules[1] == vs["spec"]["http"][1]  # predict exactly as before the canary
    assert [d["weight"] for d in narrowed.rules[2]["route"]] == [20, 56, 24]
    again = plan_weights(applied(moved, narrowed.rules), canary_spec(routes=["audited"]), 30,
                         previously=narrowed.managed, added=("audited",))
    assert not again.changed
