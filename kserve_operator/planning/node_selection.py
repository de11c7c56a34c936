"""Which nodes may run a model's preloader, with the scheduler's own semantics, and which to pick.

A node qualifies when the nodeSelector matches its labels, every NoSchedule/NoExecute taint is
tolerated (an unschedulable node counts as tainted `node.kubernetes.io/unschedulable:NoSchedule`,
as the scheduler's NodeUnschedulable plugin treats it), one required node-affinity term matches,
and every requested resource fits its allocatable (an extended resource the node does not list,
such as `nvidia.com/gpu` on a CPU node, has 0). Pure: the controller passes the Nodes it read.

A reconcile's cost must not grow with the cluster's Nodes: the Node informer indexes each Node
by the extended resources it offers (`offered_extended_resources`), and a ModelPrewarm that asks
for one reads only the Nodes offering it (`narrowing_resource`); the others are counted, not read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.resources.prewarm import (
    LABEL_HOSTNAME,
    PrewarmSpec,
    Requirement,
    SelectorTerm,
    Toleration,
    parse_quantity,
)

UNSCHEDULABLE_TAINT_KEY = "node.kubernetes.io/unschedulable"
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
EXTENDED_RESOURCE_INDEX = "offered-extended-resources"  # the Node informer's index: resource name -> Nodes


def is_extended_resource(name: str) -> bool:
    """A domain-prefixed resource a device plugin advertises (nvidia.com/gpu), not cpu or memory."""
    return "/" in name and not name.startswith(("kubernetes.io/", "requests.", "limits."))


def offered_extended_resources(raw: Mapping[str, Any]) -> list[str]:
    """The extended resources a Node has more than 0 of allocatable (the informer's index function)."""
    allocatable = (raw.get("status") or {}).get("allocatable") or {}
    offered = []
    for name, value in allocatable.items():
        if not is_extended_resource(str(name)):
            continue
        try:
            if parse_quantity(value, field=f"allocatable {name}") > 0:
                offered.append(str(name))
        except InvalidSpec:
            continue
    return offered


def narrowing_resources(spec: PrewarmSpec) -> tuple[str, ...]:
    """The extended resources the spec asks for: a Node that offers none of one of them cannot qualify."""
    return tuple(sorted(name for name in spec.requested() if is_extended_resource(name)))


@dataclasses.dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    allocatable: Mapping[str, str]
    unschedulable: bool
    deleting: bool = False

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> NodeView:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        taints = tuple(
            Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
            for t in spec.get("taints") or () if isinstance(t, Mapping)
        )
        return cls(
            name=str(meta.get("name", "")),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            taints=taints,
            allocatable={str(k): str(v) for k, v in ((raw.get("status") or {}).get("allocatable") or {}).items()},
            unschedulable=bool(spec.get("unschedulable")),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def hostname(self) -> str:
        """The value a Pod's `kubernetes.io/hostname` nodeSelector must carry to land here."""
        return self.labels.get(LABEL_HOSTNAME, self.name)

    def blocking_taints(self) -> tuple[Taint, ...]:
        taints = [t for t in self.taints if t.effect in BLOCKING_EFFECTS]
        if self.unschedulable:
            taints.append(Taint(UNSCHEDULABLE_TAINT_KEY, "", "NoSchedule"))
        return tuple(taints)


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """Kubernetes' ToleratesTaint: an empty effect matches every effect, an empty key with
    Exists matches every key, Exists ignores the value, Equal compares it."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == "Exists":
        return True
    return toleration.operator in ("Equal", "") and toleration.value == taint.value


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def requirement_matches(requirement: Requirement, values: Mapping[str, str]) -> bool:
    """One node-selector requirement against a node's labels (or fields)."""
    present = requirement.key in values
    value = values.get(requirement.key, "")
    op = requirement.operator
    if op == "In":
        return present and value in requirement.values
    if op == "NotIn":
        return not present or value not in requirement.values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        if not present or len(requirement.values) != 1:
            return False
        have, bound = _integer(value), _integer(requirement.values[0])
        if have is None or bound is None:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def term_matches(term: SelectorTerm, node: NodeView) -> bool:
    """Requirements of one term are ANDed; an empty term matches no node (as in Kubernetes)."""
    if not term.match_expressions and not term.match_fields:
        return False
    fields = {"metadata.name": node.name}
    return all(requirement_matches(r, node.labels) for r in term.match_expressions) and all(
        requirement_matches(r, fields) for r in term.match_fields
    )


def why_not(node: NodeView, spec: PrewarmSpec, requested: Mapping[str, Decimal]) -> str | None:
    """None when the node qualifies; otherwise the first reason, phrased for a condition message."""
    if node.deleting:
        return "being deleted"
    for key, value in spec.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} does not match"
    for taint in node.blocking_taints():
        if not any(tolerates(t, taint) for t in spec.tolerations):
            return f"taint {taint} is not tolerated"
    if spec.required_terms is not None and not any(term_matches(t, node) for t in spec.required_terms):
        return "required node affinity does not match"
    for name, amount in sorted(requested.items()):
        try:
            have = parse_quantity(node.allocatable.get(name, "0"), field=f"allocatable {name}")
        except InvalidSpec:
            have = Decimal(0)
        if have < amount:
            return f"no {name} allocatable" if have == 0 else f"{name} allocatable {have} < {amount}"
    return None


@dataclasses.dataclass(frozen=True)
class Qualification:
    qualifying: tuple[NodeView, ...]
    rejected: Mapping[str, str]  # node name -> why not
    excluded: Mapping[str, int] = dataclasses.field(default_factory=dict)  # why not -> Nodes not read

    def summary(self) -> str:
        """`3 nodes: 2 nodeSelector gpu=a100 does not match; 1 no nvidia.com/gpu allocatable`."""
        counts: dict[str, int] = dict(self.excluded)
        for reason in self.rejected.values():
            counts[reason] = counts.get(reason, 0) + 1
        parts = [f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
        return "; ".join(parts) if parts else "no nodes in the cluster"


def qualify(nodes: Iterable[NodeView], spec: PrewarmSpec, excluded: Mapping[str, int] | None = None) -> Qualification:
    """`nodes`: those read; `excluded`: Nodes not read because an index ruled them out, counted by why."""
    requested = spec.requested()
    qualifying, rejected = [], {}
    for node in sorted(nodes, key=lambda n: n.name):
        reason = why_not(node, spec, requested)
        if reason is None:
            qualifying.append(node)
        else:
            rejected[node.name] = reason
    return Qualification(tuple(qualifying), rejected, {k: v for k, v in (excluded or {}).items() if v})


def choose_nodes(
    qualifying: Sequence[NodeView], count: int, *, current: Iterable[str] = (), warm: Iterable[str] = (),
    serving: Iterable[str] = (),
) -> tuple[NodeView, ...]:
    """Pick `count` nodes: nodes where the predictor serves come first (the more of its Pods, the
    earlier), so warming follows serving; then those already chosen and warm for this model
    version, then the ones already chosen (a Job runs there), then nodes warm for this version
    from earlier, then the rest by name. A node that stopped qualifying is simply absent, so its
    place goes to the next node in this order."""
    current_set, warm_set = set(current), set(warm)
    pods_on: dict[str, int] = {}
    for node in serving:
        pods_on[node] = pods_on.get(node, 0) + 1

    def rank(node: NodeView) -> tuple[int, int, str]:
        here, hot = node.name in current_set, node.name in warm_set
        return (-pods_on.get(node.name, 0), 0 if here and hot else 1 if here else 2 if hot else 3, node.name)

    return tuple(sorted(qualifying, key=rank)[:count])
