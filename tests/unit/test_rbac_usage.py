"""The RBAC audit's reading of the audit log (controlplane/rbac_usage.py): a 403 is a missing grant,
except one received while kube-apiserver was restarting (its authorizer's caches still filling:
tests/realcluster/test_faults_real.py restarts it in the same session)."""

from __future__ import annotations

import datetime
from typing import Any

from controlplane.rbac_usage import RESTART_SETTLE_SECONDS, Grant, used

T0 = datetime.datetime(2026, 12, 7, 13, 0, tzinfo=datetime.UTC)


def event(verb: str, resource: str, code: int, at: float, group: str = "") -> dict[str, Any]:
    stamp = (T0 + datetime.timedelta(seconds=at)).isoformat().replace("+00:00", "Z")
    return {"verb": verb, "objectRef": {"resource": resource, "apiGroup": group, "namespace": "ns", "name": "x"},
            "responseStatus": {"code": code}, "requestReceivedTimestamp": stamp, "requestURI": f"/{resource}"}


def test_a_refusal_is_a_missing_grant_unless_it_came_while_the_api_server_restarted() -> None:
    down, ready = T0.timestamp() + 100, T0.timestamp() + 110
    events = [event("get", "pods", 200, 0), event("update", "leases", 403, 105, "coordination.k8s.io"),
              event("watch", "services", 403, 110 + RESTART_SETTLE_SECONDS - 1),
              event("list", "secrets", 403, 110 + RESTART_SETTLE_SECONDS + 5)]
    seen, denied = used(events, [(down, ready)])
    assert seen == {Grant("", "pods", "get")}
    assert len(denied) == 1 and denied[0].startswith("list secrets")
    _, without_outages = used(events)
    assert len(without_outages) == 3
