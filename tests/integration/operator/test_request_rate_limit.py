"""The client-side request limit (clients/rate_limiter.py) on the emulated API server, counted in its
request log: the operator's own client never sends more than burst + qps*t requests in any window of
t seconds, a write queued behind reads goes before the reads queued after it, and a restarted
operator with caches to repair spreads its requests (kopf's own watches and patches are apart).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devcluster.requestlog import RequestRecord
from kserve_operator import observability
from kserve_operator.clients.kube import KubernetesApi, PatchType
from kserve_operator.clients.rate_limiter import TokenBucket
from kserve_operator.resources.kinds import Kind
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration

CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
AGENT = "kserve-operator-limit-test"
OPERATOR = "kserve-operator"  # the operator's own client (kopf's is kopf/...)
ARRIVAL_JITTER = 1.0  # s between a token and the server's record of the request, at most (loaded 2-core CI)
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
SVC = "/api/v1/namespaces/default/services"


def within_bucket(times: Sequence[float], qps: float, burst: int) -> list[str]:
    """Every window [a, b] of arrival times over burst + qps*(b - a + jitter): the violations."""
    ordered = sorted(times)
    problems = []
    for first in range(len(ordered)):
        for last in range(first, len(ordered)):
            allowed = burst + qps * (ordered[last] - ordered[first] + ARRIVAL_JITTER)
            if last - first + 1 > allowed:
                problems.append(f"{last - first + 1} requests in {ordered[last] - ordered[first]:.3f}s "
                                f"(at most {allowed:.1f})")
    return problems


def ours(cluster: EmulatedCluster, agent: str, since: float = 0.0) -> list[RequestRecord]:
    return [r for r in cluster.request_log.snapshot() if r.user_agent.startswith(agent) and r.timestamp >= since]


@pytest.fixture
async def limited(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = await KubernetesApi.connect(user_agent=AGENT, limiter=TokenBucket(20, 5))
    yield client
    await client.close()


def _throttle_count(method: str) -> float:
    return observability.REGISTRY.get_sample_value("kserve_operator_api_rate_limiter_wait_seconds_count",
                                                   {"method": method}) or 0.0


async def test_every_request_takes_a_token_and_a_write_keeps_its_place(
        limited: KubernetesApi, kube: ClusterClient, cluster: EmulatedCluster) -> None:
    kube.create("/api/v1/namespaces/default/configmaps",
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "0"}})
    gets_before = _throttle_count("GET")
    started = time.monotonic()
    early = [asyncio.create_task(limited.get(CONFIG_MAP, "cm", "default")) for _ in range(20)]
    write = asyncio.create_task(limited.patch(CONFIG_MAP, "cm", {"data": {"k": "1"}}, namespace="default",
                                              patch_type=PatchType.MERGE))
    late = [asyncio.create_task(limited.get(CONFIG_MAP, "cm", "default")) for _ in range(20)]
    await asyncio.gather(*early, write, *late)
    elapsed = time.monotonic() - started
    assert elapsed >= (41 - 5) / 20 - 0.05  # 5 at once, then 20 per second
    records = ours(cluster, AGENT)
    assert [r.method for r in records].count("GET") == 40
    assert not within_bucket([r.timestamp for r in records], qps=20, burst=5)
    order = [r.method for r in sorted(records, key=lambda r: r.timestamp)]
    assert order.index("PATCH") >= 15, order  # behind (nearly) every earlier read, none of the later ones
    assert order.index("PATCH") <= 25, order
    assert _throttle_count("GET") - gets_before == 40
    waited = observability.REGISTRY.get_sample_value("kserve_operator_api_rate_limiter_wait_seconds_sum",
                                                     {"method": "GET"})
    assert waited is not None and waited > 1.0


def memcached(name: str) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 1}}


def test_a_restart_with_caches_to_repair_stays_within_the_bucket(
        cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator) -> None:
    """12 caches whose Deployments and Services went while the operator was down: the restarted
    operator lists and watches, then recreates 24 children, writes statuses and Events; every window
    of its own requests holds at most burst + qps*t of them, and all caches come back."""
    qps, burst, count = 10, 10, 12
    first = start_operator(resync=60)
    for i in range(count):
        kube.create(MC, memcached(f"cache-{i}"))
    for i in range(count):
        kube.wait_for(f"{MC}/cache-{i}", lambda o: o.get("status", {}).get("phase") == "Running", timeout=20)
    first.stop()
    for i in range(count):
        kube.delete(f"{DEPLOY}/cache-{i}")
        kube.delete(f"{SVC}/cache-{i}")
    since = time.time()
    start_operator(resync=60, KUBE_API_QPS=str(qps), KUBE_API_BURST=str(burst))
    for i in range(count):
        kube.wait_for(f"{DEPLOY}/cache-{i}", lambda o: True, timeout=30)
        kube.wait_for(f"{SVC}/cache-{i}", lambda o: True, timeout=30)
    cluster.wait_quiet(1.0, timeout=30, user_agent=OPERATOR)
    times = [r.timestamp for r in ours(cluster, OPERATOR, since)]
    assert len(times) > 3 * burst  # enough that an unlimited client would break the bound at once
    assert not within_bucket(times, qps=qps, burst=burst)[:5]
    assert max(times) - min(times) >= (len(times) - burst) / qps - ARRIVAL_JITTER
