"""What the informers keep and answer, on the emulated API server (clients/stored_objects.py, the
Namespace and ServiceAccount informers):

- a stored object has lost kubectl's last-applied copy (and managedFields) but a conditional write
  from it still works, and the write's answer reaches its caller whole;
- an opted-in InferenceService and a ModelPrewarm whose Job still runs (it re-reads its tenant's
  service account on every pass) cost 0 requests at rest, and a restarted operator reads neither
  a namespace nor a service account by GET;
- a ModelPrewarm waiting for its service account starts as soon as the account appears (its
  informer's event wakes it; no resync timer helps here).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import ClusterClient, EmulatedCluster
from devstack.simulated_gpu_pool import add_gpu_nodes
from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.kube import KubernetesApi, PatchType
from kserve_operator.clients.stored_objects import LAST_APPLIED
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.resources.kinds import Kind
from kserve_operator.resources.prewarm_conditions import PrewarmReason
from tests.integration.operator.conftest import StartOperator
from tests.integration.operator.prewarm_world import JOBS, condition, torch_mnist

pytestmark = pytest.mark.integration

CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
AGENT = "kserve-operator-store-test"
OPERATOR = "kserve-operator"
TEAM = "team"
TEAM_ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{TEAM}/inferenceservices"
TEAM_PREWARM = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{TEAM}/modelprewarms"


@pytest.fixture
async def cached(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[CachedKubeApi]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    api = CachedKubeApi(await KubernetesApi.connect(user_agent=AGENT), backoff=backoff_delay)
    yield api
    await api.close()


async def test_a_stored_object_loses_the_bookkeeping_and_still_writes_conditionally(
        cached: CachedKubeApi, kube: ClusterClient) -> None:
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "default"},
               "data": {"k": "1"}}
    body = json.loads(json.dumps(applied))
    body["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(applied), "team": "a"}
    kube.create("/api/v1/namespaces/default/configmaps", body)
    informer = cached.inform(CONFIG_MAP, namespace="default")
    await cached.start()
    stored = informer.get("default", "cm")
    assert stored is not None and stored["metadata"]["annotations"] == {"team": "a"}
    assert "managedFields" not in stored["metadata"] and stored["metadata"]["resourceVersion"]

    read = await cached.get(CONFIG_MAP, "cm", "default")
    assert read is not None
    pinned = [{"op": "test", "path": "/metadata/resourceVersion", "value": read["metadata"]["resourceVersion"]},
              {"op": "replace", "path": "/data/k", "value": "2"}]
    answer = await cached.patch(CONFIG_MAP, "cm", pinned, namespace="default", patch_type=PatchType.JSON)
    assert LAST_APPLIED in answer["metadata"]["annotations"]  # the caller gets the server's answer whole
    stored = informer.get("default", "cm")
    assert stored is not None and stored["data"] == {"k": "2"} and LAST_APPLIED not in stored["metadata"]["annotations"]
    assert stored["metadata"]["resourceVersion"] == answer["metadata"]["resourceVersion"]


def team_service(account: str) -> dict[str, Any]:
    """The sample InferenceService in TEAM, opted in by the namespace's label (not its own annotation)."""
    isvc = torch_mnist()
    isvc["metadata"] = {"name": "scorer", "namespace": TEAM}
    isvc["spec"]["predictor"]["serviceAccountName"] = account
    return isvc


def opted_in_team(kube: ClusterClient) -> None:
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": TEAM, "labels": {"serverless.xyz/prewarm": "enabled"}}})


def operator_requests(cluster: EmulatedCluster, since: float) -> list[str]:
    return [f"{r.method}{' watch' if r.watch else ''} {r.resource}" for r in cluster.request_log.snapshot()
            if r.user_agent.startswith(OPERATOR) and r.timestamp >= since]


def test_a_running_prewarm_reads_nothing_at_rest_nor_by_get_after_a_restart(
        cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator) -> None:
    add_gpu_nodes(cluster, "gpu-1")  # the Job is never completed here: it runs, and the plan waits on it
    opted_in_team(kube)
    kube.create(f"/api/v1/namespaces/{TEAM}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "models-s3"}})
    first = start_operator(resync=1.0)
    kube.create(TEAM_ISVC, team_service("models-s3"))
    kube.wait_for(f"{TEAM_PREWARM}/scorer", lambda o: o.get("status", {}).get("phase") == "Warming", timeout=20)
    assert len(kube.list(JOBS)) == 1
    cluster.wait_quiet(1.5, timeout=20, user_agent=OPERATOR)
    since = time.time()
    time.sleep(4)  # four resync passes, each re-reading the running plan's service account
    assert operator_requests(cluster, since) == []

    first.stop()
    since = time.time()
    start_operator(resync=1.0)
    time.sleep(3)
    cluster.wait_quiet(1.0, timeout=20, user_agent=OPERATOR)
    reads = [r for r in cluster.request_log.snapshot() if r.user_agent.startswith(OPERATOR) and r.timestamp >= since
             and r.resource in ("namespaces", "serviceaccounts")]
    assert [f"{r.resource}/{r.name}" for r in reads if r.name] == []  # none read one by one
    listed = sorted(f"{r.resource}{' watch' if r.watch else ''}" for r in reads)
    assert listed == ["namespaces", "namespaces watch", "serviceaccounts", "serviceaccounts watch"], listed
    assert len(kube.list(JOBS)) == 1


def test_a_new_inference_service_gets_its_prewarm_without_a_get_first(
        cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator) -> None:
    """The ModelPrewarm informer covers every ModelPrewarm in scope: a miss is the answer, so the
    watcher creates the ModelPrewarm of a new InferenceService without a GET that could only 404."""
    add_gpu_nodes(cluster, "gpu-1")
    opted_in_team(kube)
    kube.create(f"/api/v1/namespaces/{TEAM}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "models-s3"}})
    start_operator()
    since = time.time()
    kube.create(TEAM_ISVC, team_service("models-s3"))
    kube.wait_for(f"{TEAM_PREWARM}/scorer", lambda o: o.get("status", {}).get("phase") == "Warming", timeout=20)
    gets = [r.name for r in cluster.request_log.snapshot() if r.user_agent.startswith(OPERATOR)
            and r.timestamp >= since and r.resource == "modelprewarms" and r.method == "GET" and r.name
            and not r.watch and r.subresource is None]
    assert gets == []


def test_a_prewarm_waiting_for_its_service_account_starts_when_it_appears(
        cluster: EmulatedCluster, kube: ClusterClient, start_operator: StartOperator) -> None:
    add_gpu_nodes(cluster, "gpu-1")
    opted_in_team(kube)
    start_operator(resync=60.0)  # no timer pass within the test: only the account's event can wake it
    kube.create(TEAM_ISVC, team_service("late"))
    kube.wait_for(f"{TEAM_PREWARM}/scorer", lambda o: condition(o, "Ready").get("reason") == PrewarmReason.NO_ACCOUNT
                  or condition(o, "Degraded").get("reason") == PrewarmReason.NO_ACCOUNT, timeout=20)
    assert kube.list(JOBS) == []
    kube.create(f"/api/v1/namespaces/{TEAM}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "late"}})
    cluster.wait_for(lambda: len(kube.list(JOBS)) == 1, timeout=10)
