"""`make bench-failover`: how long the operator is leaderless when its leader goes away.

On the real control plane with the manifests as shipped (the leases Role included), two operator
processes with leader election on (default timings: 15 s lease, 10 s renew deadline, 2 s retry
period), each as the operator's ServiceAccount through a TCP proxy of its own
(devstack/cuttable_proxy.py). Per trial: a fresh Lease, replica A takes it, replica B stands by,
then one fault, and the time until B holds the Lease (polled every 20 ms):

- kill: SIGKILL to A (a node lost, an OOM kill);
- sigterm: SIGTERM to A (a rollout, a drain): A stops its controllers and releases the Lease;
- partition: A's proxy is cut (a black hole): A must exit by itself within the renew deadline,
  before B may take over; the time A took to exit is reported too.

"Before" (one replica, no election) has no standby: the operator is gone until the kubelet
restarts its pod; the time a fresh process takes to be ready (startup) is the floor of that,
printed from the same trials.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import signal
import statistics
import sys
import tempfile
import time

from controlplane.cluster import RealCluster
from devcluster.client import ApiError, ClusterClient
from devstack.cuttable_proxy import CuttableProxy, point_kubeconfig_at
from devstack.leader_lease import LEASE_PATH, wait_for_holder
from devstack.operator_process import OperatorProcess, start_operator
from tests.controlplane_binaries import controlplane_bin

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAULTS = ("kill", "sigterm", "partition")


def wait_holder(kube: ClusterClient, name: str, timeout: float) -> float:
    return wait_for_holder(kube, name, timeout, poll=0.02)


class Replicas:
    def __init__(self, cluster: RealCluster, work: pathlib.Path) -> None:
        self.cluster = cluster
        self.work = work
        self.count = 0
        self.startups: list[float] = []

    def start(self, name: str, ip: str) -> tuple[OperatorProcess, CuttableProxy]:
        self.count += 1
        proxy = CuttableProxy(self.cluster.url, ip).start()
        kubeconfig = self.cluster.service_account_kubeconfig(self.work / f"{name}-{self.count}.kubeconfig")
        point_kubeconfig_at(kubeconfig, proxy)
        began = time.monotonic()
        operator = start_operator(kubeconfig, self.work / f"{name}-{self.count}.log",
                                  env={"LEADER_ELECT": "true", "POD_NAME": name})
        self.startups.append(time.monotonic() - began)
        return operator, proxy


def trial(fault: str, kube: ClusterClient, replicas: Replicas) -> tuple[float, float | None]:
    """(seconds until B held the Lease after the fault, seconds until a cut A exited, for a partition)."""
    with contextlib.suppress(ApiError):
        kube.delete(LEASE_PATH)
    a, a_proxy = replicas.start("replica-a", "127.0.0.2")
    b, b_proxy = None, None
    try:
        wait_holder(kube, "replica-a", 10)
        b, b_proxy = replicas.start("replica-b", "127.0.0.3")
        exited: float | None = None
        began = time.monotonic()
        if fault == "kill":
            a.proc.kill()
        elif fault == "sigterm":
            a.proc.send_signal(signal.SIGTERM)
        else:
            a_proxy.cut()
        took = wait_holder(kube, "replica-b", 30) - began
        if fault == "partition":
            code = a.proc.wait(timeout=15)
            if code != 3:
                raise RuntimeError(f"the cut leader exited with {code}, not 3:\n{a.log()[-2000:]}")
            exited = _exit_delay(a, began)
        return took, exited
    finally:
        for operator, proxy in ((a, a_proxy), (b, b_proxy)):
            if operator is not None:
                operator.stop()
            if proxy is not None:
                proxy.stop()


def _exit_delay(operator: OperatorProcess, began: float) -> float:
    """When the cut leader logged its exit, on the monotonic clock of `began` (read from its log line)."""
    line = next(line for line in operator.log().splitlines() if "Leadership lost" in line)
    stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
    return stamp - (time.time() - (time.monotonic() - began))


def summary(values: list[float]) -> str:
    return (f"min {min(values):.2f} s, median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"(n={len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown or args.trials < 1:
        parser.error(f"unknown faults {sorted(unknown)} or trials < 1")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-failover-"))
    cluster = RealCluster(controlplane_bin("bench-failover"), work / "cluster")
    with cluster:
        cluster.install_manifests(extra_crds=sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml")))
        kube = cluster.client("bench-failover")
        replicas = Replicas(cluster, work)
        results: dict[str, list[float]] = {}
        exits: list[float] = []
        for fault in faults:
            for number in range(args.trials):
                took, exited = trial(fault, kube, replicas)
                results.setdefault(fault, []).append(took)
                if exited is not None:
                    exits.append(exited)
                print(f"{fault} #{number + 1}: B led after {took:.2f} s"
                      + (f" (cut A exited after {exited:.2f} s)" if exited is not None else ""), flush=True)
        print("\nFailover (fault -> the standby holds the Lease), 15 s lease / 10 s renew deadline / 2 s retry:")
        for fault, values in results.items():
            print(f"  {fault:9s}: {summary(values)}")
        if exits:
            print(f"  partition: the cut leader exited after {summary(exits)}")
        print(f"  before (one replica): no standby; a fresh process is ready after {summary(replicas.startups)}, "
              "plus the kubelet's restart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
