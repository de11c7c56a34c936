"""A ModelPrewarm's reconcile costs O(1) in the cluster's Nodes (issue 17): it reads only the Nodes
that offer the extended resource it asks for (the Node informer's index), counts the others, and a
Node's change wakes only the ModelPrewarms it can affect."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from kserve_operator.clients.informer import Informer
from kserve_operator.controllers import prewarm, prewarm_nodes
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.node_interest import NodeInterest, is_short, nodes_in_status
from kserve_operator.planning.node_selection import (
    EXTENDED_RESOURCE_INDEX,
    narrowing_resources,
    offered_extended_resources,
    qualify,
)
from kserve_operator.resources.kinds import NODE
from kserve_operator.resources.prewarm import parse_spec
from tests.unit.operator.prewarm_shapes import node, views

GPU_SPEC = {"storageUri": "s3://models/mnist", "resources": {"limits": {"nvidia.com/gpu": "1"}}}


class NoServer:
    async def list_with_version(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the test fills the store itself")

    def watch(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the test fills the store itself")


class CountingApi:
    """Stands in for the KubeApi: counts the Node LISTs a reconcile would send (none, with the index)."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes, self.lists = nodes, 0

    async def list(self, kind: Any, *_: Any, **__: Any) -> list[dict[str, Any]]:
        assert kind == NODE
        self.lists += 1
        return self.nodes


def cluster(cpu: int, gpu: int) -> list[dict[str, Any]]:
    return [node(f"cpu-{i:04d}", gpus=0) for i in range(cpu)] + [node(f"gpu-{i}", gpus=8) for i in range(gpu)]


def indexed(nodes: list[dict[str, Any]]) -> Informer:
    informer = Informer(NoServer(), [NODE], backoff=backoff_delay,
                        indexes={EXTENDED_RESOURCE_INDEX: offered_extended_resources})
    for raw in nodes:
        informer.offer({**raw, "metadata": {**raw["metadata"], "resourceVersion": "1"}})
    informer.synced.set()
    return informer


def test_the_index_holds_extended_resources_offered_above_zero_only() -> None:
    assert offered_extended_resources(node("g", gpus=2)) == ["nvidia.com/gpu"]
    assert offered_extended_resources(node("c", gpus=0)) == []
    zero = node("z", gpus=1)
    zero["status"]["allocatable"].update({"nvidia.com/gpu": "0", "hugepages-2Mi": "1Gi", "amd.com/gpu": "bad"})
    assert offered_extended_resources(zero) == []  # 0, not extended, unparsable
    assert narrowing_resources(parse_spec(GPU_SPEC)) == ("nvidia.com/gpu",)
    assert narrowing_resources(parse_spec({"storageUri": "s3://m/x", "resources": {"requests": {"cpu": "1"}}})) == ()


def test_nodes_ruled_out_by_the_index_are_counted_in_the_condition() -> None:
    spec = parse_spec({**GPU_SPEC, "nodeCount": 3})
    result = qualify(views(node("gpu-0", gpus=8), node("gpu-1", gpus=8, unschedulable=True)), spec,
                     {"no nvidia.com/gpu allocatable": 1000})
    assert [n.name for n in result.qualifying] == ["gpu-0"]
    assert result.summary() == ("1000 no nvidia.com/gpu allocatable; "
                                "1 taint node.kubernetes.io/unschedulable:NoSchedule is not tolerated")


def test_a_gpu_prewarm_reads_only_the_gpu_nodes_and_sends_no_list() -> None:
    nodes = cluster(cpu=1000, gpu=3)
    api = CountingApi(nodes)
    candidates, excluded = asyncio.run(prewarm_nodes.candidate_nodes(api, indexed(nodes), {"spec": GPU_SPEC}))  # type: ignore[arg-type]
    assert [n.name for n in candidates] == ["gpu-0", "gpu-1", "gpu-2"]
    assert excluded == {"no nvidia.com/gpu allocatable": 1000}
    assert api.lists == 0


@pytest.mark.parametrize("case", ["cpu spec", "invalid spec", "informer not listed yet"])
def test_every_node_is_read_when_no_index_can_narrow(case: str) -> None:
    nodes = cluster(cpu=5, gpu=1)
    api = CountingApi(nodes)
    informer: Informer | None = indexed(nodes)
    spec: dict[str, Any] = {"storageUri": "s3://m/x", "resources": {"requests": {"cpu": "1"}}}
    if case == "invalid spec":
        spec = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}  # no storageUri: the plan reports it
    elif case == "informer not listed yet":
        spec, informer = GPU_SPEC, Informer(NoServer(), [NODE], backoff=backoff_delay)
    candidates, excluded = asyncio.run(prewarm_nodes.candidate_nodes(api, informer, {"spec": spec}))  # type: ignore[arg-type]
    assert len(candidates) == 6 and excluded == {} and api.lists == 1


def test_node_interest_names_the_prewarms_a_node_change_can_affect() -> None:
    interest = NodeInterest()
    interest.record(("ml", "a"), ["gpu-0", "gpu-1"], short=False)
    interest.record(("ml", "b"), ["gpu-1"], short=False)
    interest.record(("ml", "c"), [], short=True)  # fewer qualifying nodes than nodeCount: any node may help
    assert interest.affected("gpu-0") == [("ml", "a"), ("ml", "c")]
    assert interest.affected("gpu-1") == [("ml", "a"), ("ml", "b"), ("ml", "c")]
    assert interest.affected("cpu-0007") == [("ml", "c")]
    interest.record(("ml", "a"), ["gpu-2"], short=False)  # moved
    interest.record(("ml", "c"), ["gpu-0"], short=False)  # found its node
    assert interest.affected("gpu-0") == [("ml", "c")]
    assert interest.affected("cpu-0007") == []
    interest.forget(("ml", "b"))
    assert interest.affected("gpu-1") == []


def test_status_tells_which_nodes_are_used_and_whether_nodes_are_short() -> None:
    status = {"qualifyingNodes": 1, "nodes": [{"name": "gpu-0", "phase": "Warm"}, {"name": "gpu-3"}]}
    assert nodes_in_status(status) == {"gpu-0", "gpu-3"}
    assert is_short(status, {"nodeCount": 2}) and not is_short(status, {"nodeCount": 1})
    assert not is_short(status, {})  # nodeCount defaults to 1
    assert not is_short({"qualifyingNodes": None}, {"nodeCount": 2})  # the plan never got to the nodes


def test_a_node_change_wakes_only_the_prewarms_it_can_affect(monkeypatch: pytest.MonkeyPatch) -> None:
    woken: list[tuple[str, str]] = []

    async def run(memo: Any, namespace: str, name: str, *_: Any, **__: Any) -> None:
        woken.append((namespace, name))

    monkeypatch.setattr(prewarm, "_run", run)
    ctx = prewarm.PrewarmContext(settings=None, core=None)  # type: ignore[arg-type]
    ctx.known |= {("ml", "on-gpu-0"), ("ml", "on-gpu-1"), ("ml", "short")}
    ctx.node_interest.record(("ml", "on-gpu-0"), ["gpu-0"], short=False)
    ctx.node_interest.record(("ml", "on-gpu-1"), ["gpu-1"], short=False)
    ctx.node_interest.record(("ml", "short"), [], short=True)
    memo = kopf.Memo(prewarm=ctx)

    def change(raw: dict[str, Any], type: str = "MODIFIED") -> list[tuple[str, str]]:
        woken.clear()
        asyncio.run(prewarm.node_changed(raw, type, memo, None))
        return sorted(woken)

    for raw in cluster(cpu=2, gpu=2):  # the start-up listing sets the baseline and wakes nobody
        assert change(raw, None) == []
    tainted = node("gpu-0", gpus=8, taints=[{"key": "maintenance", "effect": "NoSchedule"}])
    assert change(tainted) == [("ml", "on-gpu-0"), ("ml", "short")]
    relabelled = node("cpu-0001", gpus=0, labels={"pool": "batch"})
    assert change(relabelled) == [("ml", "short")]  # not ml/on-gpu-*: a CPU node is no concern of theirs
    ctx.node_interest.record(("ml", "short"), ["gpu-1"], short=False)
    assert change(node("cpu-0000", gpus=0, labels={"pool": "x"})) == []
    assert change(node("gpu-1", gpus=8), "DELETED") == [("ml", "on-gpu-1"), ("ml", "short")]
