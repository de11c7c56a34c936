"""What a ModelPrewarm reads of the Nodes, and what of a Node's change concerns it at all.

Split from controllers/prewarm.py: the Node side of the reconcile, O(1) in the cluster's Nodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kserve_operator.clients.informer import Informer
from kserve_operator.clients.kube import KubeApi
from kserve_operator.errors import InvalidSpec
from kserve_operator.planning.node_selection import EXTENDED_RESOURCE_INDEX, NodeView, narrowing_resources
from kserve_operator.resources.kinds import NODE
from kserve_operator.resources.prewarm import parse_spec


async def candidate_nodes(api: KubeApi, nodes: Informer | None, body: Mapping[str, Any]) -> tuple[
        list[NodeView], dict[str, int]]:
    """The Nodes that can qualify, and the others counted by why not: a spec asking for an extended
    resource (nvidia.com/gpu) reads only the Nodes offering it (the informer's index), so the cost
    does not grow with the cluster's CPU Nodes. Every Node otherwise (no informer yet, no such
    request, or a spec the plan will reject anyway)."""
    narrowing: tuple[str, ...] = ()
    if nodes is not None and nodes.synced.is_set():
        try:
            narrowing = narrowing_resources(parse_spec(body.get("spec")))
        except InvalidSpec:
            narrowing = ()
    if not narrowing or nodes is None:
        return [NodeView.parse(n) for n in await api.list(NODE)], {}
    resource = min(narrowing, key=lambda name: nodes.count_by_index(EXTENDED_RESOURCE_INDEX, name))
    offering = nodes.by_index(EXTENDED_RESOURCE_INDEX, resource)
    return [NodeView.parse(n) for n in offering], {f"no {resource} allocatable": len(nodes) - len(offering)}


def node_fingerprint(body: Mapping[str, Any]) -> str:
    """What qualification reads of a Node; heartbeats and conditions leave it unchanged."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    return json.dumps([meta.get("labels"), spec.get("taints"), spec.get("unschedulable"),
                       (body.get("status") or {}).get("allocatable"), bool(meta.get("deletionTimestamp"))],
                      sort_keys=True)
