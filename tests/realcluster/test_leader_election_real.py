"""Two operator replicas behind one Lease on the real control plane (leader election on).

Each replica runs as the operator's ServiceAccount (shipped RBAC, the leases Role included) and
reaches the API server through a proxy of its own that connects from its own source address
(127.0.0.2, 127.0.0.3): the audit log tells their requests apart, and a proxy can be cut to
partition one replica. Default timings (15 s lease, 10 s renew deadline, 2 s retry period).
"""

from __future__ import annotations

import datetime
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devcluster.client import ApiError
from devstack.cuttable_proxy import CuttableProxy, point_kubeconfig_at
from devstack.leader_lease import LEASE_PATH, wait_for_holder
from devstack.operator_process import OperatorProcess, start_operator
from tests.realcluster.conftest import World

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
EXIT_LEADERSHIP_LOST = 3  # kserve_operator.__main__
LEASE, RENEW_DEADLINE, RETRY = 15.0, 10.0, 2.0


@dataclass
class Replica:
    name: str
    ip: str
    proxy: CuttableProxy
    operator: OperatorProcess
    started: datetime.datetime

    def readyz(self) -> tuple[int, str]:
        return self.operator.http_get("/readyz")

    def exit_code(self, timeout: float) -> int:
        return self.operator.proc.wait(timeout=timeout)


@pytest.fixture
def replicas(world: World) -> Iterator[list[Replica]]:
    """Replicas started on demand (`start`), on a fresh Lease; the test's caches are gone before they stop."""
    try:
        world.kube.delete(LEASE_PATH)
    except ApiError as exc:
        if exc.status != 404:
            raise
    started: list[Replica] = []
    try:
        yield started
    finally:
        for replica in started:
            replica.proxy.heal()
        memcacheds = world.path("cache.serverless.xyz/v1alpha1", "memcacheds")
        for item in world.kube.list(memcacheds):
            world.kube.delete(f"{memcacheds}/{item['metadata']['name']}")
        world.cluster.wait_for(lambda: not world.kube.list(memcacheds), 40, message="the caches to be finalized")
        for replica in started:
            replica.operator.stop()
            replica.proxy.stop()


def start(world: World, started: list[Replica], name: str, ip: str) -> Replica:
    began = datetime.datetime.now(datetime.UTC)
    proxy = CuttableProxy(world.cluster.url, ip).start()
    kubeconfig = world.cluster.service_account_kubeconfig(world.tmp_path / f"{name}.kubeconfig")
    point_kubeconfig_at(kubeconfig, proxy)
    operator = start_operator(kubeconfig, world.tmp_path / f"{name}.log", env={
        "LEADER_ELECT": "true", "POD_NAME": name, "RESYNC_SECONDS": "1", "FINALIZER_TIMEOUT_SECONDS": "20"})
    world.operators.append(operator)
    replica = Replica(name, ip, proxy, operator, began)
    started.append(replica)
    return replica


def wait_holder(world: World, replica: Replica, timeout: float) -> float:
    """Poll the Lease every 50 ms until `replica` holds it; the monotonic time it was seen."""
    return wait_for_holder(world.kube, replica.name, timeout, poll=0.05)


def leader_and_standby(world: World, started: list[Replica]) -> tuple[Replica, Replica]:
    a = start(world, started, "replica-a", "127.0.0.2")
    wait_holder(world, a, 10)
    b = start(world, started, "replica-b", "127.0.0.3")
    status, body = b.readyz()
    assert status == 200 and "standby" in body and "replica-a_" in body, body
    status, body = a.readyz()
    assert status == 200 and "leader" in body, body
    return a, b


def memcached(world: World, name: str, size: int) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": world.namespace}, "spec": {"size": size}}


def deployment_replicas(world: World, name: str, replicas: int, timeout: float = 15) -> None:
    world.kube.wait_for(world.path("apps/v1", "deployments", name),
                        lambda d: d["spec"]["replicas"] == replicas, timeout=timeout)


def audited(world: World, replica: Replica) -> list[dict[str, Any]]:
    """This replica's requests (earlier tests' replicas used the same source addresses)."""
    return [e for e in world.cluster.plane.audit_events()
            if replica.ip in (e.get("sourceIPs") or []) and received(e) >= replica.started]


def received(event: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event["requestReceivedTimestamp"])


def writes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Writes other than to the Lease (both replicas write that, by design)."""
    return [e for e in events if e.get("verb") in WRITES and (e.get("objectRef") or {}).get("resource") != "leases"]


def test_one_replica_reconciles_and_a_killed_leader_is_replaced_within_the_lease(
        world: World, replicas: list[Replica]) -> None:
    world.add_node("cpu")
    a, b = leader_and_standby(world, replicas)
    world.kube.create(world.path("cache.serverless.xyz/v1alpha1", "memcacheds"), memcached(world, "cache", 1))
    deployment_replicas(world, "cache", 1)
    time.sleep(3)  # a few resyncs (1 s) on the leader
    assert writes(audited(world, a)), "the leader wrote nothing"
    standby = audited(world, b)
    assert standby and all((e.get("objectRef") or {}).get("resource") == "leases" for e in standby), \
        f"the standby touched more than the Lease: {[e['requestURI'] for e in standby][:10]}"
    assert {e["verb"] for e in standby} == {"get"}, "a standby only reads the Lease"

    a.operator.proc.kill()
    killed = time.monotonic()
    failover = wait_holder(world, b, LEASE + RETRY + 3) - killed
    print(f"\nkill -9 failover: {failover:.2f} s")
    assert failover <= LEASE + RETRY + 1
    world.cluster.wait_for(lambda: b.readyz()[0] == 200 and "leader" in b.readyz()[1], 10, message="b leads")
    world.kube.patch(world.path("cache.serverless.xyz/v1alpha1", "memcacheds", "cache"), {"spec": {"size": 2}})
    deployment_replicas(world, "cache", 2)


def test_sigterm_releases_the_lease_and_the_standby_leads_within_3_s(world: World, replicas: list[Replica]) -> None:
    a, b = leader_and_standby(world, replicas)
    a.operator.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    failover = wait_holder(world, b, 10) - sent
    print(f"\nSIGTERM failover: {failover:.2f} s")
    assert failover < 3.0
    assert a.exit_code(10) == 0
    assert "Released the Lease" in a.operator.log()


def test_a_leader_cut_off_the_api_exits_before_its_lease_can_expire_and_writes_never_overlap(
        world: World, replicas: list[Replica]) -> None:
    world.add_node("cpu")
    a, b = leader_and_standby(world, replicas)
    mc_path = world.path("cache.serverless.xyz/v1alpha1", "memcacheds", "cache")
    world.kube.create(world.path("cache.serverless.xyz/v1alpha1", "memcacheds"), memcached(world, "cache", 1))
    deployment_replicas(world, "cache", 1)

    a.proxy.cut()
    cut = time.monotonic()
    world.kube.patch(mc_path, {"spec": {"size": 2}})  # work a leader that kept acting would do on reconnecting
    assert a.exit_code(RENEW_DEADLINE + RETRY + 2) == EXIT_LEADERSHIP_LOST
    exited, exited_wall = time.monotonic(), datetime.datetime.now(datetime.UTC)
    assert "could not renew the Lease within the renew deadline" in a.operator.log()
    took = wait_holder(world, b, LEASE + RETRY + 3)
    a.proxy.heal()  # the partition heals: a leader still running would reconnect and write now
    print(f"\npartition: the cut leader exited after {exited - cut:.2f} s, the standby led after {took - cut:.2f} s")
    assert exited < took
    deployment_replicas(world, "cache", 2)
    time.sleep(2)

    a_events = audited(world, a)
    # Its last successful write of the Lease: the acquisition (create or update) or a renewal.
    last_renewal = max(received(e) for e in a_events
                       if e.get("verb") in ("create", "update")
                       and (e.get("objectRef") or {}).get("resource") == "leases"
                       and (e.get("responseStatus") or {}).get("code") in (200, 201))
    assert exited_wall < last_renewal + datetime.timedelta(seconds=LEASE), "the cut leader outlived its lease"
    b_writes = writes(audited(world, b))
    assert b_writes, "the new leader wrote nothing"
    first_of_b = min(received(e) for e in b_writes)
    late = [e["requestURI"] for e in writes(a_events) if received(e) >= first_of_b]
    assert not late, f"the old leader wrote after the new one had started: {late}"


def test_a_lease_taken_or_deleted_by_hand_stops_its_leader_at_the_next_renewal(
        world: World, replicas: list[Replica]) -> None:
    a, b = leader_and_standby(world, replicas)
    lease = world.kube.get(LEASE_PATH)
    lease["spec"].update(holderIdentity="someone-by-hand", leaseDurationSeconds=1)
    world.kube.put(LEASE_PATH, lease)
    taken = time.monotonic()
    assert a.exit_code(RETRY + 3) == EXIT_LEADERSHIP_LOST
    print(f"\ntaken by hand: the leader exited after {time.monotonic() - taken:.2f} s")
    assert "taken by 'someone-by-hand'" in a.operator.log()
    wait_holder(world, b, 5)  # the hand-written 1 s lease expires for b
    world.cluster.wait_for(lambda: "leader" in b.readyz()[1], 10, message="b leads")

    world.kube.delete(LEASE_PATH)
    deleted = time.monotonic()
    assert b.exit_code(RETRY + 3) == EXIT_LEADERSHIP_LOST
    print(f"deleted by hand: the leader exited after {time.monotonic() - deleted:.2f} s")
    assert "the Lease was deleted" in b.operator.log()
