"""`make bench-canary`: the operator holding 200 ModelCanaries on the emulated cluster, once per
traffic router (`--router virtualservice|httproute|both`; both by default, one after the other in
the same run, each on a fresh cluster and operator).

Reports, per router:
- a run of 200 ModelCanaries, each on its own routing object (the Istio-shaped VirtualService, or
  the Gateway API HTTPRoute of devstack/mnist_httproute.py): the time from the first create to all
  200 `Active` with their weights in the object, and p50/p99 of create -> weights in the object;
- API writes (events excluded) and reads per settled ModelCanary per minute (target for writes: 0),
  over a quiet period at the production resync;
- p50/p99 of a `percent` change -> the object carrying the new weights, over 100 changes made one
  after the other while the 200 canaries are held;
- the operator process's peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.measure import OPERATOR_AGENTS, operator_reads, operator_writes, peak_rss_bytes, percentile
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack.mnist_httproute import http_route
from devstack.operator_process import running_operator
from tests.integration.operator.canary_world import (
    ISVC,
    MCANARY,
    NS,
    inference_service,
    model_canary,
    virtual_service,
    vs_path,
    weights,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRDS = [ROOT / "manifests" / "crds", ROOT / "tests" / "fixtures" / "crds"]
HTTP_ROUTES = f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes"


def _route_weights(route: dict[str, Any]) -> list[int]:
    rule = next(r for r in route["spec"]["rules"] if r.get("name") == "predict")
    return [ref.get("weight", 1) for ref in rule["backendRefs"]]


@dataclasses.dataclass(frozen=True)
class Router:
    """One traffic router as the benchmark drives it: its objects, its canaries, its weights."""

    title: str
    path: Callable[[int], str]
    body: Callable[[int], dict[str, Any]]
    target: Callable[[int], dict[str, Any]]  # the ModelCanary spec fields naming object i
    weights: Callable[[dict[str, Any]], list[int]]  # of the `predict` rule


ROUTERS = {
    "virtualservice": Router(
        "one Istio-shaped VirtualService each", lambda i: vs_path(name=f"vs-{i:03d}"),
        lambda i: virtual_service(name=f"vs-{i:03d}"),
        lambda i: {"virtualService": {"name": f"vs-{i:03d}"}, "routes": ["predict"]}, weights),
    "httproute": Router(
        "one Gateway API HTTPRoute each", lambda i: f"{HTTP_ROUTES}/rt-{i:03d}",
        lambda i: http_route(name=f"rt-{i:03d}"),
        lambda i: {"route": {"kind": "HTTPRoute", "name": f"rt-{i:03d}", "rules": ["predict"]}}, _route_weights),
}


def canary_body(router: Router, i: int) -> dict[str, Any]:
    body = model_canary(f"canary-{i:03d}", percent=10, **router.target(i))
    if "route" in body["spec"]:
        del body["spec"]["virtualService"]  # the helper's default form
    return body


def wait_weights(kube: ClusterClient, router: Router, path: str, wanted: list[int], timeout: float = 30.0) -> float:
    """Poll the routing object until `predict` carries `wanted`; returns the perf_counter time seen."""
    deadline = time.perf_counter() + timeout
    while True:
        if router.weights(kube.get(path)) == wanted:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{path} never carried {wanted}")
        time.sleep(0.002)


def run(router: Router, count: int, changes: int, quiet_seconds: float, resync: float) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-canary-"))
    with EmulatedCluster(CRDS, ready_delay=0.05) as cluster:
        kube = ClusterClient(cluster.url, user_agent="bench-client")
        for name in ("torch-mnist", "torch-mnist-v2"):
            kube.create(ISVC, inference_service(name))
        for i in range(count):
            kube.create(router.path(i).rsplit("/", 1)[0], router.body(i))
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        with running_operator(kubeconfig, workdir / "operator.log", env={"RESYNC_SECONDS": str(resync)}) as op:
            created_at: dict[int, float] = {}
            started = time.perf_counter()
            for i in range(count):
                created_at[i] = time.perf_counter()
                kube.create(MCANARY, canary_body(router, i))
            applied_at: dict[int, float] = {}
            while len(applied_at) < count:
                for i in range(count):
                    if i not in applied_at and router.weights(kube.get(router.path(i))) == [90, 10]:
                        applied_at[i] = time.perf_counter()
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"only {len(applied_at)}/{count} routing objects carry 10% after 600s")
            while sum(1 for o in kube.list(MCANARY) if (o.get("status") or {}).get("phase") == "Active") < count:
                if time.perf_counter() - started > 600:
                    raise TimeoutError("not all ModelCanaries Active after 600s")
                time.sleep(0.1)
            converged = time.perf_counter() - started
            create_latencies = [applied_at[i] - created_at[i] for i in range(count)]

            # kopf's one-time bookkeeping (finalizer, diff base) lags behind on a busy machine:
            # measure the settled state once nothing has been written for 5 s.
            for agent in OPERATOR_AGENTS:
                cluster.wait_quiet(5.0, timeout=300, user_agent=agent)
            since = time.time()
            time.sleep(quiet_seconds)
            writes = operator_writes(cluster, since)
            reads = operator_reads(cluster, since)

            change_latencies = []
            target = f"{MCANARY}/canary-000"
            for n in range(changes):
                percent = 1 + (n * 37) % 99  # every step a different percent
                if percent == 10:
                    percent = 11
                began = time.perf_counter()
                kube.patch(target, {"spec": {"percent": percent}})
                change_latencies.append(wait_weights(kube, router, router.path(0), [100 - percent, percent]) - began)
            peak = peak_rss_bytes(op.proc.pid)
            load = os.getloadavg()[0]
    minutes = quiet_seconds / 60
    return {
        "router": router.title, "count": count, "converge_s": converged,
        "create_p50_ms": 1000 * statistics.median(create_latencies),
        "create_p99_ms": 1000 * percentile(create_latencies, 99),
        "writes": writes, "writes_per_canary_minute": writes / count / minutes,
        "reads_per_canary_minute": reads / count / minutes, "quiet_s": quiet_seconds, "resync_s": resync,
        "changes": changes, "change_p50_ms": 1000 * statistics.median(change_latencies),
        "change_p99_ms": 1000 * percentile(change_latencies, 99), "change_max_ms": 1000 * max(change_latencies),
        "peak_rss_mib": peak / 2**20, "load": load, "cpus": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    parser.add_argument("--router", choices=[*ROUTERS, "both"], default="both",
                        help="which traffic router's objects the canaries move (both: one after the other)")
    args = parser.parse_args()
    for name in ROUTERS if args.router == "both" else [args.router]:
        report(run(ROUTERS[name], args.count, args.changes, args.quiet_seconds, args.resync))
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"\nbench-canary: {r['count']} ModelCanaries, {r['router']}, emulated API server")
    print(f"  create -> all {r['count']} Active, weights in place      {r['converge_s']:8.2f} s")
    print(f"  create -> the object carries 10%            p50 {r['create_p50_ms']:8.1f} ms"
          f"   p99 {r['create_p99_ms']:.1f} ms")
    print(f"  percent change -> new weights ({r['changes']} changes)  p50 {r['change_p50_ms']:8.1f} ms"
          f"   p99 {r['change_p99_ms']:.1f} ms   max {r['change_max_ms']:.1f} ms")
    print(f"  API writes while settled ({r['quiet_s']:.0f}s, resync {r['resync_s']:.0f}s)  {r['writes']} total,"
          f" {r['writes_per_canary_minute']:.3f} per canary per minute (target 0)")
    print(f"  API reads while settled                          {r['reads_per_canary_minute']:8.2f}"
          " per canary per minute")
    print(f"  operator peak RSS                                 {r['peak_rss_mib']:8.1f} MiB")
    print(f"  machine: {r['cpus']} CPUs, 1-minute load average {r['load']:.1f} at the end")


if __name__ == "__main__":
    sys.exit(main())
