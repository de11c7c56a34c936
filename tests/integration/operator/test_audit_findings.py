"""The outside audit's three findings, against the real operator process on the emulated cluster,
with the emulator failing chosen requests on demand (devcluster/faults.py).

1. Retry-After: three 429s (Retry-After) on the Deployment PATCH; no PATCH of the Deployment,
   by any path (the handler's retry, the resync timer, a child event), comes sooner than asked.
2. The finalizer window: kopf's own PATCH that adds the finalizer loses two races (the 422 a
   JSON patch pinned to a stale resourceVersion gets; kopf tries again on the object's next
   event); meanwhile the resync timer runs, and must create nothing. A ModelCanary likewise
   writes no route before its finalizer is on.
3. An invalid name: one WARNING in the operator's log, however many resyncs.

The same findings against the reconcile core with a fake API: tests/unit/operator/test_audit_findings.py.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from kserve_operator.settings import FINALIZER
from tests.integration.operator.canary_world import MCANARY, install_world, model_canary, vs_path, weights
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.test_memcached_controller import DEPLOY, MC, SVC, memcached

pytestmark = pytest.mark.integration
RETRY_AFTER = 2  # seconds; the audit saw 5, a shorter one keeps the test short and proves the same


def running(kube: Any, name: str) -> Any:
    return kube.wait_for(f"{MC}/{name}", lambda o: o.get("status", {}).get("phase") == "Running")


def test_no_path_patches_a_deployment_before_the_retry_after_is_over(cluster: Any, kube: Any,
                                                                     start_operator: StartOperator) -> None:
    start_operator(resync=0.3)  # a resync tick every 0.3 s: before the fix it patched within one
    kube.create(MC, memcached("ra", size=1))
    running(kube, "ra")
    target = f"{DEPLOY}/ra"
    rule = cluster.inject_fault("PATCH", target, count=3, status=429, retry_after=RETRY_AFTER)
    since = time.time()
    kube.patch(f"{MC}/ra", {"spec": {"size": 2}})
    kube.wait_for(target, lambda d: d["spec"]["replicas"] == 2, timeout=40)
    assert rule.answered == 3
    patches = [r for r in cluster.requests if r.method == "PATCH" and r.path == target and r.timestamp >= since]
    assert [r.status for r in patches][:4] == [429, 429, 429, 200]
    gaps = [later.timestamp - earlier.timestamp for earlier, later in itertools.pairwise(patches[:4])]
    # The server stamps each request on arrival; the client learns of the 429 after that, so a gap
    # can only be longer than the Retry-After, never shorter (10 ms for the clock's resolution).
    assert min(gaps) >= RETRY_AFTER - 0.01, f"a PATCH came {min(gaps):.2f}s after a 429 asking for {RETRY_AFTER}s"


def test_a_memcached_gets_no_children_while_its_finalizer_is_held_up(cluster: Any, kube: Any,
                                                                     start_operator: StartOperator) -> None:
    start_operator(resync=0.3)
    rule = cluster.inject_fault("PATCH", f"{MC}/fin", count=2, status=422, user_agent="kopf/")
    kube.create(MC, memcached("fin", size=1))
    for lost in (1, 2):
        cluster.wait_for(lambda: rule.answered >= lost, timeout=10)  # noqa: B023 (called at once)
        time.sleep(1.2)  # four resync ticks in the window
        assert not kube.exists(f"{DEPLOY}/fin") and not kube.exists(f"{SVC}/fin"), \
            "children were created before the finalizer that scales them down on delete"
        assert FINALIZER not in (kube.get(f"{MC}/fin")["metadata"].get("finalizers") or [])
        # The write that made kopf's PATCH stale (here, by hand) brings the event kopf retries on.
        kube.patch(f"{MC}/fin", {"metadata": {"labels": {"touched": str(lost)}}})
    running(kube, "fin")
    assert FINALIZER in kube.get(f"{MC}/fin")["metadata"]["finalizers"]
    assert kube.get(f"{DEPLOY}/fin")["spec"]["replicas"] == 1


def test_a_memcached_deleted_before_its_finalizer_never_had_pods_to_stop(cluster: Any, kube: Any,
                                                                         start_operator: StartOperator) -> None:
    """The audit's window, held open: kopf never gets its finalizer on, the cache is deleted
    (at once: nothing holds it). Its pods would have been killed, not scaled down; so there
    must never have been any."""
    start_operator(resync=0.3)
    rule = cluster.inject_fault("PATCH", f"{MC}/early", count=1000, status=422, user_agent="kopf/")
    kube.create(MC, memcached("early", size=1))
    cluster.wait_for(lambda: rule.answered >= 1, timeout=10)
    time.sleep(1.2)  # four resync ticks in the window
    kube.delete(f"{MC}/early")
    cluster.wait_for(lambda: not kube.exists(f"{MC}/early"), timeout=10)
    time.sleep(0.6)
    created = cluster.request_log.writes(user_agent="kserve-operator", resources=("deployments", "services"))
    assert created == [], f"the operator wrote children of a cache without its finalizer: {created}"


def test_a_canary_writes_no_route_while_its_finalizer_is_held_up(cluster: Any, kube: Any,
                                                                 start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=0.3)
    rule = cluster.inject_fault("PATCH", f"{MCANARY}/mnist", count=1, status=422, user_agent="kopf/")
    kube.create(MCANARY, model_canary(percent=20, routes=["predict"]))
    cluster.wait_for(lambda: rule.answered >= 1, timeout=10)
    time.sleep(1.5)  # the daemon's first pass and a few resyncs
    assert weights(kube.get(vs_path())) == [100], "a route was written before the finalizer that restores it"
    kube.patch(f"{MCANARY}/mnist", {"metadata": {"labels": {"touched": "1"}}})
    kube.wait_for(vs_path(), lambda vs: weights(vs) == [80, 20], timeout=10)
    assert FINALIZER in kube.get(f"{MCANARY}/mnist")["metadata"]["finalizers"]


def test_an_invalid_name_is_logged_once_however_many_resyncs(cluster: Any, kube: Any,
                                                             start_operator: StartOperator) -> None:
    op = start_operator(resync=0.2)
    kube.create(MC, memcached("with.dots", size=1))
    kube.wait_for(f"{MC}/with.dots", lambda o: o.get("status", {}).get("phase") == "Error")
    time.sleep(2.5)  # a dozen resyncs
    said = [line for line in op.log().splitlines() if "cannot name the cache's Service" in line]
    assert len(said) == 1, "\n".join(said)
    warnings = [e for e in kube.list("/api/v1/namespaces/default/events")
                if e.get("involvedObject", {}).get("name") == "with.dots" and e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["InvalidName"]
