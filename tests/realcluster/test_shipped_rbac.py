"""The shipped RBAC grants exactly what the operator uses.

The API server audits every request of the operator's ServiceAccount during the tier (see
RealCluster). Run after the end-to-end tests of the three controllers (the conftest orders it
last): no request of the operator was refused (a missing grant), and every grant of
manifests/rbac/cluster-role.yaml and of the namespaced Roles the manifests bind to it (the
pre-warm namespace's, the webhook certificate's) was used by some request in that namespace (an
excess grant fails here, and is fixed in the manifest or covered by a scenario, never in this
test).
"""

from __future__ import annotations

import pytest
import yaml

from controlplane.cluster import RealCluster
from controlplane.rbac_usage import unused_grants, used
from tests.realcluster import conftest

E2E_MODULES = {"test_memcached_real.py", "test_prewarm_real.py", "test_canary_real.py", "test_placement_real.py",
               "test_leader_election_real.py"}  # the last: the leases Role (get, create, update)


def test_the_operator_used_every_shipped_grant_and_was_never_refused(real_cluster: RealCluster) -> None:
    missing = E2E_MODULES - conftest.PASSED
    if missing or conftest.FAILED & E2E_MODULES:
        pytest.skip(f"needs the whole end-to-end tier to have passed in this session (not run or failed: "
                    f"{sorted(missing | (conftest.FAILED & E2E_MODULES))})")
    events = real_cluster.plane.audit_events()
    assert events, "the API server audited no request of the operator"
    role = yaml.safe_load((conftest.ROOT / "manifests/rbac/cluster-role.yaml").read_text())
    _, denied = used(events, real_cluster.plane.outages)  # test_faults_real restarts kube-apiserver
    assert not denied, f"the operator was refused (a grant missing from the shipped ClusterRole): {denied}"
    unused = unused_grants(role, events)
    assert not unused, f"the shipped ClusterRole grants what the operator never used: {unused}"
    for path in sorted((conftest.ROOT / "manifests").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "Role":
                continue
            namespace = document["metadata"]["namespace"]
            in_namespace = [e for e in events if (e.get("objectRef") or {}).get("namespace") == namespace]
            unused = unused_grants(document, in_namespace)
            assert not unused, f"Role {namespace}/{document['metadata']['name']} grants what the operator never " \
                               f"used there: {unused}"
