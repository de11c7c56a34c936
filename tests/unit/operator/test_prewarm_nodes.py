"""Node qualification with the scheduler's semantics, and the choice of nodes."""

from __future__ import annotations

import pytest

from kserve_operator.planning.node_selection import NodeView, Taint, choose_nodes, qualify, tolerates, why_not
from kserve_operator.resources.prewarm import Toleration, parse_spec
from tests.unit.operator.prewarm_shapes import node, views

GPU_SPEC = {"storageUri": "s3://models/mnist", "resources": {"limits": {"nvidia.com/gpu": "1"}}}


def reason(raw: dict[str, object], **spec: object) -> str | None:
    parsed = parse_spec({**GPU_SPEC, **spec})
    return why_not(NodeView.parse(raw), parsed, parsed.requested())


@pytest.mark.parametrize(("toleration", "taint", "expected"), [
    (Toleration("gpu", "Equal", "a100", "NoSchedule"), Taint("gpu", "a100", "NoSchedule"), True),
    (Toleration("gpu", "Equal", "h100", "NoSchedule"), Taint("gpu", "a100", "NoSchedule"), False),
    (Toleration("gpu", "Exists", "", "NoSchedule"), Taint("gpu", "a100", "NoSchedule"), True),
    (Toleration("gpu", "Exists", "", ""), Taint("gpu", "a100", "NoExecute"), True),  # empty effect: all
    (Toleration("gpu", "Exists", "", "NoSchedule"), Taint("gpu", "a100", "NoExecute"), False),
    (Toleration("", "Exists", "", ""), Taint("anything", "x", "NoExecute"), True),  # empty key + Exists: all
    (Toleration("other", "Exists", "", ""), Taint("gpu", "", "NoSchedule"), False),
    (Toleration("gpu", "Equal", "", "NoSchedule"), Taint("gpu", "", "NoSchedule"), True),
])
def test_toleration_semantics(toleration: Toleration, taint: Taint, expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


def test_node_selector_must_match_every_label() -> None:
    gpu = node("g1", labels={"pool": "a100", "zone": "a"})
    assert reason(gpu, nodeSelector={"pool": "a100"}) is None
    assert reason(gpu, nodeSelector={"pool": "a100", "zone": "b"}) == "nodeSelector zone=b does not match"


def test_blocking_taints_need_tolerations_and_prefer_no_schedule_does_not_block() -> None:
    tainted = node("g1", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
    assert reason(tainted) == "taint nvidia.com/gpu:NoSchedule is not tolerated"
    assert reason(tainted, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]) is None
    soft = node("g2", taints=[{"key": "spot", "value": "true", "effect": "PreferNoSchedule"}])
    assert reason(soft) is None
    evicting = node("g3", taints=[{"key": "maintenance", "value": "x", "effect": "NoExecute"}])
    assert reason(evicting) == "taint maintenance=x:NoExecute is not tolerated"


def test_unschedulable_node_is_out_unless_its_taint_is_tolerated() -> None:
    cordoned = node("g1", unschedulable=True)
    assert reason(cordoned) == "taint node.kubernetes.io/unschedulable:NoSchedule is not tolerated"
    assert reason(cordoned, tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]) is None


def test_extended_resources_must_be_allocatable() -> None:
    assert reason(node("cpu-only", gpus=0)) == "no nvidia.com/gpu allocatable"
    assert reason(node("one", gpus=1), resources={"limits": {"nvidia.com/gpu": "2"}}) == \
        "nvidia.com/gpu allocatable 1 < 2"
    assert reason(node("cpu-only", gpus=0), resources={"requests": {"cpu": "500m", "memory": "1Gi"}}) is None
    assert reason(node("big"), resources={"requests": {"memory": "128Gi"}}) == \
        f"memory allocatable {64 * 2**30} < {128 * 2**30}"


def affinity(*terms: list[dict[str, object]]) -> dict[str, object]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": term} for term in terms]}}}


@pytest.mark.parametrize(("expression", "matches"), [
    ({"key": "gpu", "operator": "In", "values": ["a100", "h100"]}, True),
    ({"key": "gpu", "operator": "In", "values": ["t4"]}, False),
    ({"key": "gpu", "operator": "NotIn", "values": ["t4"]}, True),
    ({"key": "absent", "operator": "NotIn", "values": ["t4"]}, True),  # NotIn holds when the label is absent
    ({"key": "gpu", "operator": "Exists"}, True),
    ({"key": "gpu", "operator": "DoesNotExist"}, False),
    ({"key": "absent", "operator": "DoesNotExist"}, True),
    ({"key": "memory-gb", "operator": "Gt", "values": ["40"]}, True),
    ({"key": "memory-gb", "operator": "Gt", "values": ["80"]}, False),
    ({"key": "memory-gb", "operator": "Lt", "values": ["81"]}, True),
    ({"key": "gpu", "operator": "Gt", "values": ["1"]}, False),  # not an integer: no match
    ({"key": "absent", "operator": "Lt", "values": ["1"]}, False),
])
def test_required_affinity_operators(expression: dict[str, object], matches: bool) -> None:
    raw = node("g1", labels={"gpu": "a100", "memory-gb": "80"})
    assert (reason(raw, affinity=affinity([expression])) is None) is matches


def test_affinity_terms_are_ored_and_expressions_anded() -> None:
    raw = node("g1", labels={"gpu": "a100", "zone": "a"})
    in_a100 = {"key": "gpu", "operator": "In", "values": ["a100"]}
    zone_b = {"key": "zone", "operator": "In", "values": ["b"]}
    assert reason(raw, affinity=affinity([in_a100, zone_b])) == "required node affinity does not match"
    assert reason(raw, affinity=affinity([zone_b], [in_a100])) is None
    assert reason(raw, affinity=affinity([])) == "required node affinity does not match"  # empty term: none
    by_name = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["g1"]}]}]}}}
    assert reason(raw, affinity=by_name) is None


def test_qualify_counts_reasons_for_the_condition() -> None:
    spec = parse_spec({**GPU_SPEC, "nodeSelector": {"pool": "gpu"}})
    found = qualify(views(node("a", labels={"pool": "gpu"}), node("b"), node("c"),
                          node("d", labels={"pool": "gpu"}, gpus=0)), spec)
    assert [n.name for n in found.qualifying] == ["a"]
    assert found.summary() == "2 nodeSelector pool=gpu does not match; 1 no nvidia.com/gpu allocatable"


def test_choose_prefers_warm_current_nodes_then_a_stable_order() -> None:
    nodes = views(node("a"), node("b"), node("c"), node("d"))
    assert [n.name for n in choose_nodes(nodes, 2)] == ["a", "b"]
    assert [n.name for n in choose_nodes(nodes, 2, warm={"c"})] == ["c", "a"]
    assert [n.name for n in choose_nodes(nodes, 2, current={"d", "b"}, warm={"d"})] == ["d", "b"]
    assert [n.name for n in choose_nodes(nodes, 3, current={"d"}, warm={"c"})] == ["d", "c", "a"]
    # a lost node is simply not among the qualifying ones: the next one in order takes its place
    assert [n.name for n in choose_nodes(views(node("a"), node("c"), node("d")), 2, current={"a", "b"})] == \
        ["a", "c"]
