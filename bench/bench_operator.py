"""`make bench-operator`: the operator converging 200 Memcached CRs on the emulated cluster.

Reports, in one run:
- the time from the first create to all 200 `status.phase == Running`;
- p50/p99 of create -> Deployment present latency;
- API write calls per settled object per minute (target: 0), over a quiet period;
- API reads (GET and LIST, watches excluded) per settled object per minute over the same period;
- the operator process's peak RSS;
- the baseline measured in the same run: the bench client creating 200 Deployments itself
  (the emulated API's floor for the same number of objects), and the ratio to it.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from bench.measure import operator_reads, operator_writes, peak_rss_bytes, percentile
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack.operator_process import running_operator

ROOT = pathlib.Path(__file__).resolve().parents[1]
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"






def baseline_direct_creates(kube: ClusterClient, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        kube.create("/apis/apps/v1/namespaces/baseline/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"direct-{i}", "namespace": "baseline"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"d{i}"}},
                     "template": {"metadata": {"labels": {"app": f"d{i}"}},
                                  "spec": {"containers": [{"name": "c", "image": "memcached"}]}}},
        })
    return time.perf_counter() - started




def run(count: int, quiet_seconds: float, resync: float, tree: pathlib.Path | None = None) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-operator-"))
    with EmulatedCluster(sorted((ROOT / "manifests/crds").glob("*.yaml")), ready_delay=0.05) as cluster:
        kube = ClusterClient(cluster.url, user_agent="bench-client")
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": "baseline"}})
        baseline = baseline_direct_creates(kube, count)

        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        with running_operator(kubeconfig, workdir / "operator.log", env={"RESYNC_SECONDS": str(resync)},
                              tree=tree) as op:
            created_at: dict[str, float] = {}
            deployment_at: dict[str, float] = {}
            stop = threading.Event()

            def watch_deployments() -> None:
                watcher = ClusterClient(cluster.url, user_agent="bench-watcher")
                while not stop.is_set():
                    now = time.perf_counter()
                    for item in watcher.list(DEPLOY):
                        deployment_at.setdefault(item["metadata"]["name"], now)
                    time.sleep(0.02)

            poller = threading.Thread(target=watch_deployments, daemon=True)
            poller.start()
            started = time.perf_counter()
            for i in range(count):
                name = f"cache-{i:03d}"
                created_at[name] = time.perf_counter()
                kube.create(MC, {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                                 "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 1}})
            while True:
                running = sum(1 for o in kube.list(MC) if o.get("status", {}).get("phase") == "Running")
                if running == count:
                    break
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"only {running}/{count} Running after 600s")
                time.sleep(0.1)
            converged = time.perf_counter() - started
            stop.set()
            poller.join()
            latencies = [deployment_at[n] - created_at[n] for n in created_at if n in deployment_at]

            time.sleep(max(2.0, resync * 2))  # kopf's one-time bookkeeping settles
            since = time.time()
            time.sleep(quiet_seconds)
            writes = operator_writes(cluster, since)
            reads = operator_reads(cluster, since)
            peak = peak_rss_bytes(op.proc.pid)
    per_object_minute = writes / count / (quiet_seconds / 60)
    return {
        "count": count, "converge_s": converged, "baseline_s": baseline,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
        "writes": writes, "quiet_s": quiet_seconds, "writes_per_object_minute": per_object_minute,
        "resync_s": resync, "peak_rss_mib": peak / 2**20,
        "reads_per_object_minute": reads / count / (quiet_seconds / 60),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    parser.add_argument("--operator-tree", type=pathlib.Path, default=None,
                        help="run the operator package of another checkout (e.g. a worktree of an older commit)")
    args = parser.parse_args()
    r = run(args.count, args.quiet_seconds, args.resync, args.operator_tree)
    which = f" (operator from {args.operator_tree})" if args.operator_tree else ""
    print(f"\nbench-operator: {r['count']} Memcached CRs, emulated API server, 2-core machine{which}")
    print(f"  baseline: client creates {r['count']} Deployments directly   {r['baseline_s']:8.2f} s")
    print(f"  operator: create -> all Running                    {r['converge_s']:8.2f} s"
          f"   ({r['converge_s'] / r['baseline_s']:.1f}x the baseline)")
    print(f"  create -> Deployment present                 p50 {r['p50_ms']:8.1f} ms   p99 {r['p99_ms']:.1f} ms")
    print(f"  API writes while settled ({r['quiet_s']:.0f}s, resync {r['resync_s']:.0f}s)   {r['writes']} total,"
          f" {r['writes_per_object_minute']:.3f} per object per minute (target 0)")
    print(f"  API reads while settled                          {r['reads_per_object_minute']:8.2f}"
          " per object per minute")
    print(f"  operator peak RSS                                 {r['peak_rss_mib']:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
