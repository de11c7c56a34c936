"""Faults on the real control plane: kube-apiserver restarted under a running operator, the operator
killed with -9 while it creates a ModelPrewarm's Jobs and restarted slowly, and two leader-election
replicas whose wall clocks are an hour apart.

The preloader Jobs run an image with no registered command (`PRELOADER_IMAGE`), so their pods are
status only (Running until deleted): the tests count Jobs, not bytes (test_prewarm_real.py warms for
real). The operator runs as its ServiceAccount, whose every request is in the API server's audit log:
that is where a Job created twice would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.cluster import RealCluster
from devcluster.client import ApiError
from devcluster.waiting import wait_for
from devstack.cuttable_proxy import CuttableProxy, point_kubeconfig_at
from devstack.leader_lease import LEASE_PATH, lease_holder
from devstack.mnist_virtualservice import virtual_service
from devstack.operator_process import OperatorProcess
from devstack.simulated_gpu_pool import GPU_LABELS, GPU_TAINTS
from kserve_operator.clients.leader_election import LeaseStore
from kserve_operator.controllers.leader_election import LeaderElector
from kserve_operator.planning.leader_election import ElectionTimings
from tests.realcluster.conftest import World

JOB_NS = "kserve-prewarm"
EXIT_LEADERSHIP_LOST = 3  # kserve_operator.__main__
STATUS_ONLY_IMAGE = "status-only/preloader:1"  # no local command: its pods run until deleted
MEMCACHED, PREWARM, CANARY = ("cache.serverless.xyz/v1alpha1", "memcacheds"), \
    ("serving.serverless.xyz/v1alpha1", "modelprewarms"), ("serving.serverless.xyz/v1alpha1", "modelcanaries")
ISVC = ("serving.kserve.io/v1beta1", "inferenceservices")


def gpu_nodes(world: World, count: int) -> list[str]:
    """Nodes with four GPUs each (the Jobs of several models fit), labelled and tainted as GPU nodes are."""
    names = [f"gpu-{i}-{world.namespace[-6:]}" for i in range(1, count + 1)]
    for name in names:
        world.cluster.add_node(name, gpus=4, labels=GPU_LABELS, taints=GPU_TAINTS)
        world.nodes.append(name)
    return names


def inference_service(world: World, name: str, *, prewarm_nodes: int | None = None) -> dict[str, Any]:
    annotations = {} if prewarm_nodes is None else {
        "serverless.xyz/prewarm": "true", "serverless.xyz/prewarm-nodes": str(prewarm_nodes),
        "serverless.xyz/prewarm-device": "cpu"}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": world.namespace, "annotations": annotations},
            "spec": {"predictor": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "model": {"modelFormat": {"name": "pytorch"}, "storageUri": f"s3://models/{name}",
                          "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}}}}}}


def memcached(world: World, name: str, size: int) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": world.namespace}, "spec": {"size": size}}


def jobs_of(world: World, prewarm: str) -> list[dict[str, Any]]:
    return world.kube.list(f"/apis/batch/v1/namespaces/{JOB_NS}/jobs",
                           label_selector=f"serving.serverless.xyz/prewarm-namespace={world.namespace},"
                                          f"serving.serverless.xyz/modelprewarm={prewarm}")


def job_node(job: dict[str, Any]) -> str:
    return str(job["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"])


def chosen_nodes(world: World, prewarm: str) -> list[str]:
    if not world.kube.exists(world.path(*PREWARM, prewarm)):
        return []
    status = world.kube.get(world.path(*PREWARM, prewarm)).get("status") or {}
    return sorted(n["name"] for n in status.get("nodes") or [])


def one_job_per_chosen_node(world: World, prewarm: str, count: int) -> bool:
    nodes = sorted(job_node(j) for j in jobs_of(world, prewarm) if not j["metadata"].get("deletionTimestamp"))
    return len(nodes) == count and nodes == chosen_nodes(world, prewarm)


def job_writes(world: World, since: datetime.datetime) -> list[tuple[str, str, int]]:
    """(verb, Job name, code) of every create or delete of a Job of this test's namespace by the operator."""
    suffix = world.namespace[-6:]
    return [(e["verb"], e["objectRef"].get("name", ""), (e.get("responseStatus") or {}).get("code", 0))
            for e in world.cluster.plane.audit_events()
            if (e.get("objectRef") or {}).get("resource") == "jobs" and e.get("verb") in ("create", "delete")
            and suffix in (e["objectRef"].get("name") or "")
            and datetime.datetime.fromisoformat(e["requestReceivedTimestamp"]) >= since]


def start_operator(world: World, **env: str) -> OperatorProcess:
    return world.start_operator(resync=1, PRELOADER_IMAGE=STATUS_ONLY_IMAGE, **env)


def weights(vs: dict[str, Any]) -> list[int]:
    route = next(r for r in vs["spec"]["http"] if r.get("name") == "predict")
    return [d.get("weight", 100) for d in route["route"]]


@contextlib.contextmanager
def api_server_down(world: World, down: float, grace: float) -> Iterator[None]:
    """kube-apiserver stopped (SIGTERM, SIGKILL after `grace`), `down` s, started again on the same
    etcd and port; the body runs the moment it answers again. Always started again, so the session's
    cluster outlives a failing test."""
    plane = world.cluster.plane
    stopped = time.monotonic()
    plane.stop_apiserver(grace)
    try:
        time.sleep(down)
    finally:
        plane.start_apiserver()
    print(f"API server down {time.monotonic() - stopped:.1f} s")
    yield


def test_an_api_server_restart_loses_nothing_and_does_nothing_twice(world: World) -> None:
    """Two replicas, leader election on (15 s lease, 10 s renew deadline). kube-apiserver is restarted
    twice on the same etcd and port: a short outage (~6 s) the leader rides out (same Lease, same
    process), then a long one (~12 s, a crash) past its renew deadline, after which it must have
    exited (code 3) and the standby leads once the server is back. After each, writes made the moment
    the server answers (while the operator's watches still reconnect) converge, and the Jobs that
    existed are neither duplicated nor recreated."""
    kube = world.kube
    try:
        kube.delete(LEASE_PATH)
    except ApiError as exc:
        if exc.status != 404:
            raise
    world.add_node("cpu")
    gpu_nodes(world, 2)
    for name in ("torch-mnist", "torch-mnist-v2"):
        kube.create(world.path(*ISVC), inference_service(world, name))
    kube.create(world.path(*ISVC), inference_service(world, "warm-a", prewarm_nodes=2))
    kube.create(world.path("networking.istio.io/v1", "virtualservices"), virtual_service(namespace=world.namespace))
    vs_path = world.path("networking.istio.io/v1", "virtualservices", "mnist")
    for i in range(3):
        kube.create(world.path(*MEMCACHED), memcached(world, f"cache-{i}", 1))
    kube.create(world.path(*CANARY), {
        "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
        "metadata": {"name": "mnist", "namespace": world.namespace},
        "spec": {"virtualService": {"name": "mnist"}, "stable": {"inferenceService": "torch-mnist"},
                 "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": 10, "routes": ["predict"]}})
    began = datetime.datetime.now(datetime.UTC)
    leader = start_operator(world, LEADER_ELECT="true", POD_NAME="replica-a")
    wait_for(lambda: lease_holder(kube).startswith("replica-a_"), 10)
    standby = start_operator(world, LEADER_ELECT="true", POD_NAME="replica-b")

    def phase(name: str) -> str:
        return str((kube.get(world.path(*MEMCACHED, name)).get("status") or {}).get("phase"))

    def converged(cache_0: int, percent: int, models: tuple[str, ...]) -> list[str]:
        left = []
        if kube.get(world.path("apps/v1", "deployments", "cache-0"))["spec"]["replicas"] != cache_0 \
                or (kube.get(world.path(*MEMCACHED, "cache-0")).get("status") or {}).get("replicas") != cache_0:
            left.append(f"cache-0 at {cache_0}")
        left += [f"{name} Running" for name in ("cache-2", "cache-new") if kube.exists(world.path(*MEMCACHED, name))
                 and phase(name) != "Running"]
        if kube.exists(world.path(*MEMCACHED, "cache-1")):
            left.append("cache-1 gone")
        if weights(kube.get(vs_path)) != [100 - percent, percent]:
            left.append(f"the canary at {percent} %")
        left += [f"{model}'s 2 Jobs" for model in models if not one_job_per_chosen_node(world, model, 2)]
        return left

    def converge(cache_0: int, percent: int, models: tuple[str, ...]) -> float:
        back = time.monotonic()
        wait_for(lambda: not converged(cache_0, percent, models), 60, interval=0.25,
                 message=lambda: f"not converged: {converged(cache_0, percent, models)}")
        return time.monotonic() - back

    wait_for(lambda: all(phase(f"cache-{i}") == "Running" for i in range(3)), 30, message="the caches Running")
    kube.wait_for(vs_path, lambda o: weights(o) == [90, 10], timeout=30)
    wait_for(lambda: one_job_per_chosen_node(world, "warm-a", 2), 30, message="warm-a's 2 Jobs")
    jobs_before = sorted(j["metadata"]["name"] for j in jobs_of(world, "warm-a"))
    lease_before = kube.get(LEASE_PATH)["spec"]

    # A short outage (a rollout of the API server): the leader keeps leading.
    with api_server_down(world, down=3, grace=1):
        kube.patch(world.path(*MEMCACHED, "cache-0"), {"spec": {"size": 2}})
        kube.create(world.path(*MEMCACHED), memcached(world, "cache-new", 1))
        kube.delete(world.path(*MEMCACHED, "cache-1"))
        kube.patch(world.path(*CANARY, "mnist"), {"spec": {"percent": 30}})
        kube.create(world.path(*ISVC), inference_service(world, "warm-b", prewarm_nodes=2))
    short = converge(2, 30, ("warm-a", "warm-b"))
    assert leader.proc.poll() is None, f"the leader exited:\n{leader.log()[-3000:]}"
    lease = kube.get(LEASE_PATH)["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == (
        lease_before["holderIdentity"], lease_before["leaseTransitions"]), "the leader lost its Lease"

    # A long outage (a crash, then a slow start): past the renew deadline the leader stops acting and
    # exits; the standby takes the Lease once the server answers and the Lease's duration has passed.
    with api_server_down(world, down=9, grace=0):
        assert leader.proc.poll() == EXIT_LEADERSHIP_LOST, "the leader outlived its renew deadline"
        kube.patch(world.path(*MEMCACHED, "cache-0"), {"spec": {"size": 3}})
        kube.patch(world.path(*CANARY, "mnist"), {"spec": {"percent": 50}})
        kube.create(world.path(*ISVC), inference_service(world, "warm-c", prewarm_nodes=2))
    long = converge(3, 50, ("warm-a", "warm-b", "warm-c"))
    assert lease_holder(kube).startswith("replica-b_") and standby.proc.poll() is None
    assert "could not renew the Lease within the renew deadline" in leader.log()
    time.sleep(2)  # two resyncs: anything about to be done twice would be
    print(f"API server restarts: converged {short:.1f} s after a short outage (the leader kept the Lease), "
          f"{long:.1f} s after a long one (the standby took over)")

    assert sorted(j["metadata"]["name"] for j in jobs_of(world, "warm-a")) == jobs_before
    for model in ("warm-a", "warm-b", "warm-c"):
        assert one_job_per_chosen_node(world, model, 2), model
    writes = job_writes(world, began)
    assert not [w for w in writes if w[0] == "delete"], f"a Job was deleted: {writes}"
    created = [name for verb, name, code in writes if verb == "create" and code == 201]
    assert len(created) == len(set(created)) == 6, f"Jobs created: {writes}"
    world.cluster.plane.check()  # etcd, the controllers and the scheduler lived through both


def kill_round(world: World, operator: OperatorProcess, name: str, jobs_seen: int,
               down: float) -> tuple[OperatorProcess, int]:
    """Create `name`, kill -9 once it has `jobs_seen` Jobs (0: once its ModelPrewarm exists), start the
    next operator `down` s later and wait for one Job per chosen node; the new operator and the Jobs
    there were at the kill."""
    world.kube.create(world.path(*ISVC), inference_service(world, name, prewarm_nodes=3))
    if jobs_seen == 0:
        wait_for(lambda: world.kube.exists(world.path(*PREWARM, name)), 20, interval=0.005)
    else:
        wait_for(lambda: len(jobs_of(world, name)) >= jobs_seen, 20, interval=0.005)
    operator.proc.send_signal(signal.SIGKILL)
    operator.proc.wait()
    seen = len(jobs_of(world, name))
    time.sleep(down)
    operator = start_operator(world)
    wait_for(lambda: one_job_per_chosen_node(world, name, 3), 40, interval=0.25,
             message=lambda: f"{name}: Jobs on {sorted(job_node(j) for j in jobs_of(world, name))}, "
                             f"chosen {chosen_nodes(world, name)}")
    return operator, seen


def test_a_kill_9_while_jobs_are_created_and_a_slow_restart_neither_duplicates_nor_misses_a_job(
        world: World) -> None:
    """Three rounds, three models (3 of 4 GPU nodes each): the operator is killed with -9 when the
    ModelPrewarm appears, at its first Job, at its second; the next one starts 5, 7 and 9 s later.
    Afterwards each model has exactly one Job per chosen node, and the audit log shows each created
    once (none deleted), the earlier rounds' models included."""
    gpu_nodes(world, 4)
    since = datetime.datetime.now(datetime.UTC)
    operator = start_operator(world)
    rounds = [("model-0", 0, 5.0), ("model-1", 1, 7.0), ("model-2", 2, 9.0)]
    seen_at_kill = []
    for name, jobs_seen, down in rounds:
        operator, seen = kill_round(world, operator, name, jobs_seen, down)
        seen_at_kill.append(seen)
    time.sleep(2)  # two resyncs after the last restart
    print(f"\nkill -9 during Job creation: Jobs found at each kill {seen_at_kill} (of 3)")
    writes = [w for w in job_writes(world, since) if w[1].startswith(tuple(n for n, _, _ in rounds))]
    assert not [w for w in writes if w[0] == "delete"], f"a Job was deleted: {writes}"
    for name, _, _ in rounds:
        assert one_job_per_chosen_node(world, name, 3), name
        jobs = {j["metadata"]["name"] for j in jobs_of(world, name)}
        created = [n for verb, n, code in writes if verb == "create" and code == 201 and n in jobs]
        assert sorted(created) == sorted(jobs), f"{name}: created {created}, present {sorted(jobs)}"
    # Only this test's models: an earlier test's namespace may still be torn down meanwhile (its Jobs come and go).
    others = [w for w in writes if w[0] == "create" and w[2] == 201 and w[1].startswith(tuple(n for n, _, _ in rounds))
              and not any(w[1] in {j["metadata"]["name"] for j in jobs_of(world, n)} for n, _, _ in rounds)]
    assert not others, f"Jobs created that are no longer there: {others}"


# ---- clock skew between leader-election replicas ----------------------------------------------------

SHORT = ElectionTimings(lease_duration=4, renew_deadline=3, retry_period=0.5)
HOUR = datetime.timedelta(hours=1)


class Replica:
    """A LeaderElector (the operator's own, with its LeaseStore) whose wall clock is `skew` off."""

    def __init__(self, name: str, store: LeaseStore, skew: datetime.timedelta) -> None:
        self.name = name
        self.elector = LeaderElector(store, name, SHORT, wall=lambda: datetime.datetime.now(datetime.UTC) + skew)
        self.led_at: float | None = None
        self.lost_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def lost(why: str) -> None:  # the operator exits here; this replica stops its loop (from any thread)
            if self.lost_at is None:
                self.lost_at = time.monotonic()
            if self.task is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self.task.cancel)

        self.task = asyncio.create_task(self.elector.run(lambda: setattr(self, "led_at", time.monotonic()), lost))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.elector.leading = False  # its watchdog thread ends
        await self.elector.store.close()


async def until(predicate: Callable[[], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return time.monotonic()


def test_replicas_an_hour_apart_neither_steal_a_live_lease_nor_lead_past_the_renew_deadline(
        real_cluster: RealCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`behind` writes renewTimes an hour in the past, `ahead` an hour in the future. A replica that
    compared renewTime with its own clock would take `behind`'s live Lease at its first look, and wait
    an hour for `ahead`'s dead one. Expiry is judged on each replica's monotonic clock from when it saw
    the record change (client-go's way), so neither happens: 4 s lease, 3 s renew deadline, 0.5 s retry."""
    kube = real_cluster.client("pytest")
    proxy = CuttableProxy(real_cluster.url, "127.0.0.4").start()
    admin = real_cluster.plane.admin_kubeconfig
    proxied = tmp_path / "proxied.kubeconfig"
    proxied.write_text(admin.read_text())
    point_kubeconfig_at(proxied, proxy)
    lease_name = f"skewed-{uuid.uuid4().hex[:8]}"
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease_name}"

    async def store(kubeconfig: Path) -> LeaseStore:
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        return await LeaseStore.connect("default", lease_name, user_agent="skew-test")

    async def scenario() -> None:
        behind = Replica("behind", await store(admin), -HOUR)
        ahead = Replica("ahead", await store(proxied), HOUR)
        behind_2 = Replica("behind-2", await store(admin), -HOUR)
        try:
            behind.start()
            await until(lambda: behind.led_at is not None, 5)
            ahead.start()
            await asyncio.sleep(1.5 * SHORT.lease_duration)  # renewTimes an hour old all along
            assert ahead.led_at is None and kube.get(lease_path)["spec"]["holderIdentity"] == "behind"

            assert behind.task is not None
            behind.task.cancel()  # dies holding the Lease (no release)
            died = time.monotonic()
            took = await until(lambda: ahead.led_at is not None, SHORT.lease_duration + 3) - died
            # It saw the last renewal at most a retry period before the death: it takes one lease
            # duration after that, give or take a retry period and a round trip.
            early, late = SHORT.lease_duration - SHORT.retry_period - 0.1, SHORT.lease_duration + 2 * SHORT.retry_period
            assert early <= took <= late, f"a dead leader was replaced after {took:.2f} s"
            spec = kube.get(lease_path)["spec"]
            renewed = datetime.datetime.fromisoformat(spec["renewTime"])
            assert spec["holderIdentity"] == "ahead" and renewed > datetime.datetime.now(datetime.UTC) + HOUR / 2

            behind_2.start()  # sees renewTimes an hour in the future
            await asyncio.sleep(2 * SHORT.retry_period)
            proxy.cut()  # the leader cannot renew any more
            cut = time.monotonic()
            lost = await until(lambda: ahead.lost_at is not None, SHORT.renew_deadline + 2) - cut
            assert lost <= SHORT.renew_deadline + 0.2, f"the cut leader led {lost:.2f} s past its last chance"
            assert SHORT.renew_deadline - SHORT.retry_period - 0.1 <= lost, f"lost after only {lost:.2f} s"
            took_2 = await until(lambda: behind_2.led_at is not None, SHORT.lease_duration + 3) - cut
            assert ahead.lost_at is not None and behind_2.led_at is not None and ahead.lost_at < behind_2.led_at
            assert took_2 <= SHORT.lease_duration + 2 * SHORT.retry_period
            print(f"\nclock skew +-1 h: a dead leader replaced after {took:.2f} s; a cut leader stopped after "
                  f"{lost:.2f} s and was replaced after {took_2:.2f} s (lease {SHORT.lease_duration:g} s, "
                  f"renew deadline {SHORT.renew_deadline:g} s)")
        finally:
            proxy.heal()
            for replica in (behind, ahead, behind_2):
                await replica.stop()

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
        kube.delete(lease_path)
