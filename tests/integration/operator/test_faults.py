"""Faults on the emulated cluster, against the real operator process: a storm of 429s with
Retry-After across 60 objects at once, and an operator killed with -9 in the middle of a scale and
restarted slowly. Nothing is lost (every object converges, none left unmanaged) and nothing is done
twice (no second Job for a node, no second scale Event).

The emulator answers the injected failures (devcluster/faults.py) and records every request with
the object it names (a create's name comes from its body), which is what the Retry-After check
reads: each client's next request for an object arrives no sooner than the Retry-After it was given.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devcluster.requestlog import RequestRecord
from devstack.simulated_gpu_pool import GPU_LABELS, GPU_TAINTS
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import JOBS, PREWARM, node_of, preloader_result
from tests.integration.operator.test_memcached_controller import DEPLOY, EVENTS, MC, SVC, memcached

pytestmark = pytest.mark.integration

RETRY_AFTER = 2  # seconds
MEMCACHEDS, PREWARMS, NODE_COUNT = 40, 20, 2
OWNER = re.compile(r"^((?:mc|pw)-\d\d)(?:$|[.-])")  # mc-07, mc-07.<event>, pw-03-gpu-1-<hash>
OURS, KOPF = "kserve-operator", "kopf/"


def prewarm(name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm", "metadata": {"name": name},
            "spec": {"storageUri": "s3://models/mnist", "nodeCount": NODE_COUNT,
                     "resources": {"limits": {"nvidia.com/gpu": "1"}},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}


def owner(record: RequestRecord) -> str | None:
    found = OWNER.match(record.name or "")
    return found.group(1) if found else None


SIBLING_WINDOW = 0.5  # seconds: a new cache's Deployment and Service creates are sent together


def siblings(first: RequestRecord, second: RequestRecord) -> bool:
    """Creates in two collections sent together (a new Memcached's Deployment and Service): the second
    was on its way before the first's 429 came back, so it is no retry of it."""
    return first.method == second.method == "POST" and first.path != second.path \
        and second.timestamp - first.timestamp < SIBLING_WINDOW


def early_retries(records: Iterable[RequestRecord], agent: str) -> list[str]:
    """Requests by `agent` for an object (not watches) that came sooner after a 429 for that object
    than its Retry-After (a sibling create sent beside the refused one aside). Arrival times are
    stamped by the server, so the client's own delay in reading the 429 only makes a gap longer
    (10 ms for the clock's resolution)."""
    by_owner: defaultdict[str, list[RequestRecord]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.timestamp):
        key = owner(record)
        if key and not record.watch and record.user_agent.startswith(agent):
            by_owner[key].append(record)
    early = []
    for key, seen in by_owner.items():
        for i, refused in enumerate(seen):
            if refused.status != 429:
                continue
            following = next((r for r in seen[i + 1:] if not siblings(refused, r)), None)
            gap = None if following is None else following.timestamp - refused.timestamp
            if following is not None and gap is not None and gap < RETRY_AFTER - 0.01:
                early.append(f"{key}: {following.method} {following.path} {gap:.2f}s after a 429 on "
                             f"{refused.method} {refused.path}")
    return early


def scale_events(kube: ClusterClient, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list(EVENTS) if e["involvedObject"].get("name") == name
            and e["reason"] in ("ScaledUp", "ScaledDown")]


def test_a_429_storm_across_60_objects_loses_nothing_and_does_nothing_twice(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator,
) -> None:
    for node in ("gpu-1", "gpu-2", "gpu-3", "gpu-4"):
        cluster.add_node(node, gpus=8, labels=GPU_LABELS, taints=GPU_TAINTS)
    cluster.sim.auto_complete_jobs(succeeded=True, message=preloader_result())
    caches = [f"mc-{i:02d}" for i in range(MEMCACHEDS)]
    models = [f"pw-{i:02d}" for i in range(PREWARMS)]
    start_operator(resync=1)
    began = time.time()

    # The creation storm: every kind of write the operator (and kopf) makes for these objects is
    # refused at least once with 429 and Retry-After, the collections' creates included.
    storm = [cluster.inject_fault("POST", DEPLOY, count=MEMCACHEDS, retry_after=RETRY_AFTER, user_agent=OURS),
             cluster.inject_fault("POST", SVC, count=MEMCACHEDS // 2, retry_after=RETRY_AFTER, user_agent=OURS),
             cluster.inject_fault("POST", JOBS, count=PREWARMS, retry_after=RETRY_AFTER, user_agent=OURS)]
    for name in caches:
        storm.append(cluster.inject_fault("PATCH", f"{MC}/{name}/status", count=2, retry_after=RETRY_AFTER))
        storm.append(cluster.inject_fault("PATCH", f"{MC}/{name}", count=1, retry_after=RETRY_AFTER,
                                          user_agent=KOPF))  # kopf's finalizer
    for name in models:
        storm.append(cluster.inject_fault("PATCH", f"{PREWARM}/{name}/status", count=2, retry_after=RETRY_AFTER))
        storm.append(cluster.inject_fault("PATCH", f"{PREWARM}/{name}", count=1, retry_after=RETRY_AFTER,
                                          user_agent=KOPF))
    for name in caches:
        kube.create(MC, memcached(name, size=1))
    for name in models:
        kube.create(PREWARM, prewarm(name))

    def settled() -> list[str]:
        """What has not converged yet (empty when everything has)."""
        waiting = [c["metadata"]["name"] for c in kube.list(MC) if (c.get("status") or {}).get("phase") != "Running"]
        waiting += [p["metadata"]["name"] for p in kube.list(PREWARM) if (p.get("status") or {}).get("phase") != "Warm"]
        return waiting

    cluster.wait_for(lambda: not settled(), timeout=120, interval=0.5, message=lambda: f"not converged: {settled()}")
    converged = time.time() - began
    unused = [f"{r.method} {r.path}: {r.answered}/{r.count}" for r in storm if r.answered == 0]
    assert not unused, f"fault rules no request met (the storm missed them): {unused}"
    refused = sum(r.answered for r in storm)

    # The scale storm: every Deployment PATCH refused twice, each cache scaled once.
    for name in caches:
        cluster.inject_fault("PATCH", f"{DEPLOY}/{name}", count=2, retry_after=RETRY_AFTER, user_agent=OURS)
    scaled_at = time.time()
    for name in caches:
        kube.patch(f"{MC}/{name}", {"spec": {"size": 2}})
    cluster.wait_for(lambda: all(d["spec"]["replicas"] == 2 for d in kube.list(DEPLOY))
                     and all(c["status"].get("replicas") == 2 for c in kube.list(MC)), timeout=60, interval=0.5)
    cluster.wait_quiet(2.0, timeout=30, exclude_resources=())
    print(f"\n429 storm: {refused} creation-time 429s, converged in {converged:.1f} s; "
          f"{MEMCACHEDS} scales through 2 x 429 each in {time.time() - scaled_at:.1f} s")

    requests = cluster.requests
    for agent in (OURS, KOPF):
        early = early_retries(requests, agent)
        assert not early, f"{agent} came back before the Retry-After:\n" + "\n".join(early[:20])
    for name in caches:  # nothing unmanaged, nothing twice
        cache = kube.get(f"{MC}/{name}")
        assert cache["metadata"].get("finalizers"), f"{name} has no finalizer"
        assert kube.exists(f"{SVC}/{name}")
        events = scale_events(kube, name)
        assert [e["reason"] for e in events] == ["ScaledUp"], f"{name}: {[e['message'] for e in events]}"
    created_jobs = [r for r in requests if r.method == "POST" and r.path == JOBS and r.status == 201]
    for name in models:
        jobs = [j for j in kube.list(JOBS) if owner_name(j) == name]
        nodes = [node_of(j) for j in jobs]
        assert len(nodes) == NODE_COUNT == len(set(nodes)), f"{name}: Jobs on {nodes}"
        warm = kube.get(f"{PREWARM}/{name}")
        assert sorted(n["name"] for n in warm["status"]["nodes"]) == sorted(nodes)
        assert len([r for r in created_jobs if owner(r) == name]) == NODE_COUNT, f"{name}: a Job created twice"


def owner_name(job: dict[str, Any]) -> str:
    return str(job["metadata"]["labels"]["serving.serverless.xyz/modelprewarm"])


@pytest.mark.parametrize("kill_at", ["after-the-event", "at-the-scale-patch"])
def test_an_operator_killed_mid_scale_and_restarted_slowly_scales_once(
    cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator, kill_at: str,
) -> None:
    """`after-the-event`: every status write fails (503), so each pass after the scale has scaled the
    Deployment and posted its Event but recorded nothing; killed there. `at-the-scale-patch`: killed
    the instant the scale's PATCH is answered, racing its Event. Restarted 6 s later, it must see the
    scale done (the Deployment says so) and neither scale nor announce it again."""
    first = start_operator(resync=0.5)
    kube.create(MC, memcached("cache", size=1))
    kube.wait_for(f"{MC}/cache", lambda o: (o.get("status") or {}).get("phase") == "Running", timeout=15)
    if kill_at == "after-the-event":
        cluster.inject_fault("PATCH", f"{MC}/cache/status", count=10_000, status=503, user_agent=OURS)
    since = time.time()
    kube.patch(f"{MC}/cache", {"spec": {"size": 3}})

    def scale_patched() -> bool:
        return any(r.method == "PATCH" and r.path == f"{DEPLOY}/cache" and r.status == 200 and r.timestamp >= since
                   for r in cluster.requests)

    if kill_at == "after-the-event":
        cluster.wait_for(lambda: scale_events(kube, "cache") and len(
            [r for r in cluster.requests if r.path == f"{MC}/cache/status" and r.timestamp >= since]) >= 2,
            timeout=15, interval=0.01)  # at least one retry after the scale, still unrecorded
    else:
        cluster.wait_for(scale_patched, timeout=15, interval=0.002)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    cluster.clear_faults()
    assert kube.get(f"{MC}/cache")["status"].get("replicas") != 3, "the status caught up before the kill"
    time.sleep(6)  # a slow restart
    start_operator(resync=0.5)
    kube.wait_for(f"{MC}/cache", lambda o: o["status"].get("replicas") == 3
                  and o["status"].get("phase") == "Running", timeout=20)
    cluster.wait_quiet(2.0, timeout=20)
    assert kube.get(f"{DEPLOY}/cache")["spec"]["replicas"] == 3
    events = scale_events(kube, "cache")
    scale_patches = [r for r in cluster.requests if r.method == "PATCH" and r.path == f"{DEPLOY}/cache"
                     and r.status == 200 and r.timestamp >= since]
    assert len(scale_patches) == 1, "the Deployment was scaled again after the restart"
    if kill_at == "after-the-event":
        assert len(events) == 1, [e["message"] for e in events]
    else:  # killed before or after its Event was posted: one, or (lost with the process) none, never two
        assert len(events) <= 1, [e["message"] for e in events]
