"""Which ModelPrewarms a Node's change can affect, so a Node event wakes those and no others.

A ModelPrewarm at its `nodeCount` keeps its nodes (the ranking in `node_selection.choose_nodes`
puts current and warm nodes before any newcomer), so a Node matters to it only when the Node is
one of its own (a Job or a status entry there: the Node may stop qualifying, change its hostname,
or go) or when the ModelPrewarm is short of qualifying Nodes (any Node may now qualify). With
thousands of Nodes whose heartbeats, taints and labels change all the time, waking every
ModelPrewarm on every change costs O(Nodes x ModelPrewarms); this costs O(those affected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name) of a ModelPrewarm


def nodes_in_status(status: Mapping[str, Any] | None) -> frozenset[str]:
    """The Nodes a ModelPrewarm's status names (one entry per node with a Job or an outcome)."""
    return frozenset(str(entry.get("name")) for entry in (status or {}).get("nodes") or ()
                     if isinstance(entry, Mapping) and entry.get("name"))


def is_short(status: Mapping[str, Any] | None, spec: Mapping[str, Any] | None) -> bool:
    """Fewer qualifying Nodes than wanted (`nodeCount`, or more for a canary): a Node that starts
    to qualify would be used."""
    qualifying = (status or {}).get("qualifyingNodes")
    wanted = (status or {}).get("desiredNodes") or (spec or {}).get("nodeCount", 1)  # raised by a canary
    return isinstance(qualifying, int) and isinstance(wanted, int) and qualifying < wanted


@dataclasses.dataclass
class NodeInterest:
    """Node name -> the ModelPrewarms using it, and the ModelPrewarms short of Nodes."""

    _users: dict[str, set[Key]] = dataclasses.field(default_factory=dict)
    _nodes: dict[Key, frozenset[str]] = dataclasses.field(default_factory=dict)
    _short: set[Key] = dataclasses.field(default_factory=set)

    def record(self, key: Key, nodes: Iterable[str], *, short: bool) -> None:
        """What the last reconcile of `key` planned: its Nodes and whether it lacks some."""
        fresh = frozenset(nodes)
        previous = self._nodes.get(key, frozenset())
        for node in previous - fresh:
            users = self._users.get(node)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[node]
        for node in fresh - previous:
            self._users.setdefault(node, set()).add(key)
        self._nodes[key] = fresh
        if short:
            self._short.add(key)
        else:
            self._short.discard(key)

    def forget(self, key: Key) -> None:
        self.record(key, (), short=False)
        self._nodes.pop(key, None)

    def affected(self, node: str) -> list[Key]:
        """The ModelPrewarms a change of `node` can affect, sorted (a stable wake-up order)."""
        return sorted(self._users.get(node, set()) | self._short)
