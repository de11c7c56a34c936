"""Weights of a Gateway API HTTPRoute: only the managed backendRefs' weights move, everything else
stays (pure). The same outcomes as the VirtualService planner's tests where the kinds agree."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.mnist_httproute import CANDIDATE_SERVICE, STABLE_SERVICE, mnist_route
from kserve_operator.planning.routes import httproute as hr
from kserve_operator.planning.routes.httproute import RoutingProblem, plan_release, plan_weights
from kserve_operator.resources.canary_conditions import CanaryReason
from tests.unit.operator.canary_shapes import route_spec

MANAGED = ("predict", "audited", "rules[4]")
CANDIDATE_REF = {"group": "", "kind": "Service", "name": CANDIDATE_SERVICE, "port": 80}


def applied(route: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The HTTPRoute as the API server stores it after the plan's JSON patch."""
    result: dict[str, Any] = jsonpatch.apply_patch(route, hr.weights_patch(route, rules))
    assert result["spec"]["rules"] == rules
    return result


def without_weights(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in ref.items() if k != "weight"} for ref in refs]


def weights(rule: dict[str, Any]) -> list[int]:
    return [ref.get("weight", 1) for ref in rule["backendRefs"]]


def test_by_default_every_rule_with_the_stable_service_is_managed() -> None:
    assert plan_weights(mnist_route(), route_spec(), 20).managed == MANAGED  # not explain, not the redirect


def test_twenty_percent_in_each_managed_rule() -> None:
    plan = plan_weights(mnist_route(), route_spec(), 20)
    predict, audited, catch_all = plan.rules[1], plan.rules[2], plan.rules[4]
    stable = mnist_route()["spec"]["rules"][1]["backendRefs"][0]
    assert predict["backendRefs"] == [{**stable, "weight": 80}, {**CANDIDATE_REF, "weight": 20}]
    assert weights(audited) == [20, 64, 16]  # the audit sink keeps its 20; stable and candidate share 80
    assert catch_all["backendRefs"][1] == {**CANDIDATE_REF, "weight": 20}
    assert (plan.stable_weight, plan.candidate_weight) == (80, 20)
    assert plan.appended == MANAGED and plan.changed


def test_everything_but_the_managed_weights_is_kept_whole_and_in_order() -> None:
    route = mnist_route()
    after = applied(route, plan_weights(route, route_spec(), 35).rules)
    assert {k: v for k, v in after.items() if k != "spec"} == {k: v for k, v in route.items() if k != "spec"}
    assert {k: v for k, v in after["spec"].items() if k != "rules"} == {
        k: v for k, v in route["spec"].items() if k != "rules"}  # parentRefs, hostnames
    for index, (before, now) in enumerate(zip(route["spec"]["rules"], after["spec"]["rules"], strict=True)):
        assert list(now) == list(before), f"key order of rule {index}"
        assert {k: v for k, v in now.items() if k != "backendRefs"} == {
            k: v for k, v in before.items() if k != "backendRefs"}  # matches, filters, timeouts
        if hr.rule_key(before, index) not in MANAGED:
            assert now == before
            continue
        assert without_weights(now["backendRefs"])[: len(before["backendRefs"])] == without_weights(
            before["backendRefs"])  # a backendRef's own filters too
        assert sum(weights(now)) == 100


def test_the_patch_replaces_only_the_changed_backend_refs_pinned_to_the_version() -> None:
    route = mnist_route()
    plan = plan_weights(route, route_spec(rules=["predict"]), 10)
    assert hr.weights_patch(route, plan.rules) == [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": "815"},
        {"op": "replace", "path": "/spec/rules/1/backendRefs", "value": plan.rules[1]["backendRefs"]},
    ]


def test_named_rules_limit_what_is_managed() -> None:
    route = mnist_route()
    plan = plan_weights(route, route_spec(rules=["predict"]), 50)
    assert plan.managed == ("predict",)
    assert [r for i, r in enumerate(plan.rules) if i != 1] == [
        r for i, r in enumerate(route["spec"]["rules"]) if i != 1]


@pytest.mark.parametrize("percent", [0, 1, 20, 50, 99, 100])
def test_planning_the_weights_in_force_writes_nothing(percent: int) -> None:
    route = mnist_route()
    first = applied(route, plan_weights(route, route_spec(), percent).rules)
    again = plan_weights(first, route_spec(), percent)
    assert not again.changed
    assert again.rules == first["spec"]["rules"]


def test_zero_percent_on_an_untouched_route_is_no_write() -> None:
    plan = plan_weights(mnist_route(), route_spec(), 0)  # a lone stable backendRef weighing 1 is 100%
    assert not plan.changed and plan.appended == ()
    assert (plan.stable_weight, plan.candidate_weight) == (100, 0)


def test_a_hundred_percent_leaves_stable_at_weight_zero() -> None:
    plan = plan_weights(mnist_route(), route_spec(rules=["predict"]), 100)
    assert weights(plan.rules[1]) == [0, 100]


def test_weights_are_proportions_a_missing_one_weighs_one() -> None:
    route = mnist_route()
    del route["spec"]["rules"][1]["backendRefs"][0]["weight"]  # as a client writes it without the CRD's default
    assert not plan_weights(route, route_spec(rules=["predict"]), 0).changed
    assert weights(plan_weights(route, route_spec(rules=["predict"]), 30).rules[1]) == [70, 30]
    scaled = mnist_route()  # 9:1 is already 10%: left as written
    scaled["spec"]["rules"][1]["backendRefs"] = [{**scaled["spec"]["rules"][1]["backendRefs"][0], "weight": 9},
                                                 {**CANDIDATE_REF, "weight": 1}]
    plan = plan_weights(scaled, route_spec(rules=["predict"]), 10)
    assert not plan.changed and (plan.stable_weight, plan.candidate_weight) == (90, 10)


def test_a_candidate_backend_ref_already_there_is_weighted_not_duplicated() -> None:
    route = mnist_route()
    route["spec"]["rules"][1]["backendRefs"].append({**CANDIDATE_REF, "weight": 0})
    plan = plan_weights(route, route_spec(rules=["predict"]), 30)
    assert weights(plan.rules[1]) == [70, 30] and plan.appended == ()
    released = plan_release(applied(route, plan.rules), route_spec(rules=["predict"]), ("predict",), ())
    assert weights(released.rules[1]) == [100, 0]  # not ours to remove


def test_release_gives_stable_everything_and_removes_what_we_added() -> None:
    route = mnist_route()
    spec = route_spec()
    plan = plan_weights(route, spec, 40)
    released = plan_release(applied(route, plan.rules), spec, plan.managed, plan.appended)
    original = route["spec"]["rules"]
    assert released.rules[:4] == [original[0], {**original[1], "backendRefs": [
        {**original[1]["backendRefs"][0], "weight": 100}]}, original[2], original[3]]
    assert released.rules[4]["backendRefs"] == [{**original[4]["backendRefs"][0], "weight": 100}]  # 100 of 100
    assert (released.stable_weight, released.candidate_weight) == (100, 0)
    assert not plan_release(applied(route, released.rules), spec, plan.managed, ()).changed


def test_a_candidate_in_another_namespace_is_named_with_it() -> None:
    spec = route_spec(rules=["predict"], candidate={"host": "torch-mnist-v2-predictor.canaries"})
    ref = plan_weights(mnist_route(), spec, 10).rules[1]["backendRefs"][1]
    assert ref == {**CANDIDATE_REF, "namespace": "canaries", "weight": 10}


def _edit(rule: int, change: Any) -> Any:
    return lambda route: change(route["spec"]["rules"][rule])


@pytest.mark.parametrize(("rules", "changes", "edit", "reason", "words"), [
    (["nope"], {}, None, CanaryReason.ROUTE_NOT_FOUND, "has no rule named nope"),
    (["explain"], {}, None, CanaryReason.STABLE_NOT_ROUTED, "has no backendRef to the stable backend"),
    (["docs"], {}, None, CanaryReason.STABLE_NOT_ROUTED, "has no backendRef to the stable backend"),
    (None, {"stable": {"inferenceService": "other"}}, None, CanaryReason.STABLE_NOT_ROUTED, "no rule of HTTPRoute"),
    (["audited"], {}, _edit(2, lambda r: r["backendRefs"][0].update(weight=120)),
     CanaryReason.WEIGHTS_OVERFLOW, "already weigh 120"),
    (["audited"], {}, _edit(2, lambda r: r["backendRefs"][0].update(weight=10)),
     CanaryReason.WEIGHTS_NOT_PERCENT, "weigh 90 in all"),
    (["predict"], {}, _edit(1, lambda r: r["backendRefs"].append({**r["backendRefs"][0], "port": 81})),
     CanaryReason.AMBIGUOUS_DESTINATION, "through 2 backendRefs"),
    (["predict"], {"stable": {"host": STABLE_SERVICE, "subset": "v1"}, "candidate": {"host": CANDIDATE_SERVICE}},
     None, CanaryReason.BACKEND_NOT_A_SERVICE, "names a subset"),
    (["predict"], {"candidate": {"host": "mnist.example.com"}}, None, CanaryReason.BACKEND_NOT_A_SERVICE,
     "not a cluster Service"),
    (["predict"], {}, _edit(1, lambda r: r["backendRefs"][0].update(group="inference.networking.k8s.io",
                                                                      kind="InferencePool")),
     CanaryReason.STABLE_NOT_ROUTED, "has no backendRef to the stable backend"),
])
def test_rules_that_cannot_carry_the_split(rules: list[str] | None, changes: dict[str, Any], edit: Any,
                                           reason: str, words: str) -> None:
    route = mnist_route()
    if edit:
        edit(route)
    with pytest.raises(RoutingProblem) as caught:
        plan_weights(route, route_spec(rules=rules, **changes), 20)
    assert caught.value.reason == reason
    assert words in caught.value.message


@pytest.mark.parametrize(("ref", "reason"), [
    ({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "torch-mnist",
      "controller": True}, CanaryReason.FOREIGN_OWNER),
    ({"apiVersion": "gateway.example.com/v1", "kind": "RouteGenerator", "name": "g", "controller": True},
     CanaryReason.FOREIGN_CONTROLLER),
    ({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "torch-mnist"}, None),
    ({"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary", "name": "m", "controller": True},
     None),
])
def test_an_http_route_another_controller_owns_is_recognised(ref: dict[str, Any], reason: str | None) -> None:
    route = mnist_route()
    route["metadata"]["ownerReferences"] = [{**ref, "uid": "u"}]
    found = hr.owner_problem(route)
    assert (found.reason if found else None) == reason
    if found is not None:
        assert f"{ref['kind']} {ref['name']}" in found.message and "platform team owns" in found.message


@given(
    others=st.lists(st.integers(0, 40), max_size=3).filter(lambda ws: sum(ws) <= 100),
    candidate=st.one_of(st.none(), st.integers(0, 100)),
    percent=st.integers(0, 100),
)
def test_any_rule_sums_to_100_and_keeps_every_other_field(others: list[int], candidate: int | None,
                                                          percent: int) -> None:
    left = 100 - sum(others) - (candidate or 0)
    refs: list[dict[str, Any]] = [{"name": f"other-{i}", "port": 80, "weight": w,
                                   "filters": [{"type": "RequestHeaderModifier",
                                                "requestHeaderModifier": {"set": [{"name": "x-i", "value": str(i)}]}}]}
                                  for i, w in enumerate(others)]
    refs.insert(len(refs) // 2, {"name": STABLE_SERVICE, "port": 8080, "weight": max(left, 0) if others else 7})
    if candidate is not None:
        refs.append({"name": CANDIDATE_SERVICE, "port": 8080, "weight": candidate})
    if others and left < 0:
        return  # not percents to begin with: refused (tested above)
    route = mnist_route()
    route["spec"]["rules"] = [route["spec"]["rules"][0], {"name": "r", "timeouts": {"request": "3s"},
                                                          "backendRefs": refs}]
    spec = route_spec(rules=["r"])
    plan = plan_weights(route, spec, percent)
    rule = plan.rules[1]
    assert sum(weights(rule)) == 100 or not plan.changed
    assert without_weights(rule["backendRefs"])[: len(refs)] == without_weights(refs)
    for i, ref in enumerate(refs):  # other backendRefs keep their weights exactly
        if ref["name"] not in (STABLE_SERVICE, CANDIDATE_SERVICE):
            assert rule["backendRefs"][i] == ref
    assert plan.rules[0] == route["spec"]["rules"][0]
    assert plan.candidate_weight == hr.share_of(100 - sum(others), percent)
    released = plan_release(applied(route, plan.rules), spec, plan.managed, plan.appended)
    assert sum(weights(released.rules[1])) == 100 or not released.changed
    assert len(released.rules[1]["backendRefs"]) == len(refs)


def test_a_rule_dropped_from_the_spec_is_given_back() -> None:
    route = mnist_route()
    both = plan_weights(route, route_spec(rules=["predict", "audited"]), 30)
    moved = applied(route, both.rules)
    narrowed = plan_weights(moved, route_spec(rules=["audited"]), 30, previously=both.managed, added=both.appended)
    assert narrowed.managed == ("audited",) and narrowed.removed == ("predict",)
    assert without_weights(narrowed.rules[1]["backendRefs"]) == without_weights(
        route["spec"]["rules"][1]["backendRefs"])
    assert weights(narrowed.rules[1]) == [100]
    assert weights(narrowed.rules[2]) == [20, 56, 24]
    again = plan_weights(applied(moved, narrowed.rules), route_spec(rules=["audited"]), 30,
                         previously=narrowed.managed, added=("audited",))
    assert not again.changed


def test_a_plan_never_touches_another_field() -> None:
    route = mnist_route()
    plan = plan_weights(route, route_spec(), 10)
    tampered = copy.deepcopy(plan.rules)
    tampered[1]["timeouts"] = {"request": "1s"}
    with pytest.raises(AssertionError, match="backendRefs only"):
        hr.weights_patch(route, tampered)
