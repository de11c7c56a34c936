"""The operator's leader-election Lease as the failover test and bench watch it: who holds it."""

from __future__ import annotations

import time

from devcluster.client import ApiError, ClusterClient

LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kserve-operator/leases/kserve-operator"


def lease_holder(kube: ClusterClient) -> str:
    """The Lease's holderIdentity; empty when it is released or gone."""
    try:
        return str(kube.get(LEASE_PATH).get("spec", {}).get("holderIdentity") or "")
    except ApiError as exc:
        if exc.status == 404:
            return ""
        raise


def wait_for_holder(kube: ClusterClient, name: str, timeout: float, poll: float) -> float:
    """Poll until replica `name` (identity `<name>_<suffix>`) holds the Lease; the monotonic time seen."""
    deadline = time.monotonic() + timeout
    while not lease_holder(kube).startswith(f"{name}_"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not take the Lease within {timeout} s (holder {lease_holder(kube)!r})")
        time.sleep(poll)
    return time.monotonic()
