"""Which RBAC grants a client used, from the API server's audit log.

A shipped ClusterRole should grant exactly what the operator does: ``unused_grants`` lists the
(apiGroup, resource, verb) triples the role grants but no audited request used, ``denied``
the requests the server refused with 403 (a grant that is missing).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Grant(NamedTuple):
    group: str
    resource: str  # "pods", or "pods/status" for a subresource
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


def granted(cluster_role: Mapping[str, Any]) -> set[Grant]:
    """Every triple the role's rules grant (rules with resourceNames or wildcards are not expanded)."""
    grants: set[Grant] = set()
    for rule in cluster_role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    grants.add(Grant(group, resource, verb))
    return grants


def _terminating_namespace(event: Mapping[str, Any]) -> bool:
    """A 403 from admission, not from RBAC: a create in a namespace being deleted (an Event about an
    object whose namespace a test tears down while the operator still runs)."""
    message = str((event.get("responseStatus") or {}).get("message", ""))
    return "because it is being terminated" in message


RESTART_SETTLE_SECONDS = 15.0  # after a kube-apiserver restart is ready, its RBAC caches may still be filling


def _received(event: Mapping[str, Any]) -> float | None:
    stamp = event.get("requestReceivedTimestamp")
    try:
        return datetime.datetime.fromisoformat(str(stamp)).timestamp() if stamp else None
    except ValueError:
        return None


def _during_restart(event: Mapping[str, Any], outages: Iterable[tuple[float, float]]) -> bool:
    """Received while kube-apiserver was restarting (down, or ready less than RESTART_SETTLE_SECONDS ago)."""
    at = _received(event)
    return at is not None and any(down <= at <= ready + RESTART_SETTLE_SECONDS for down, ready in outages)


def used(events: Iterable[Mapping[str, Any]],
         outages: Iterable[tuple[float, float]] = ()) -> tuple[set[Grant], list[str]]:
    """The triples the audited requests were authorised for, and the requests refused with 403.
    `outages`: (down, ready) wall-clock times of kube-apiserver restarts; a 403 just after one (its
    authorizer's caches not filled yet) is not counted as a missing grant."""
    outages = list(outages)
    seen: set[Grant] = set()
    denied: list[str] = []
    for event in events:
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            continue  # discovery, /version, /healthz
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        grant = Grant(ref.get("apiGroup", ""), resource, str(event.get("verb", "")))
        code = int((event.get("responseStatus") or {}).get("code", 0))
        if code == 403 and _terminating_namespace(event):
            seen.add(grant)  # authorised; the NamespaceLifecycle admission plugin refused it afterwards
        elif code == 403 and _during_restart(event, outages):
            continue
        elif code == 403:
            denied.append(f"{grant} ({ref.get('namespace', '')}/{ref.get('name', '')}): {event.get('requestURI', '')}")
        elif code:
            seen.add(grant)  # any other answer (a 404, a 409, a 422 too) came after authorisation
    return seen, denied


def unused_grants(cluster_role: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> list[str]:
    seen, _ = used(events)
    return sorted(str(grant) for grant in granted(cluster_role) - seen)
