"""`make bench-prewarm`: 100 opted-in InferenceServices applied at once, on the emulated cluster.

Reports, in one run:
- p50/p99 of InferenceService created -> its ModelPrewarm present, and -> every Job of it present;
- the time from the first create to every ModelPrewarm `Warm` (the Jobs are completed by the
  emulator's status-only Job simulation, which posts a preloader result as the termination
  message: no process runs, so this measures the operator, not the preloader);
- API writes per settled ModelPrewarm per minute (target 0), and reads (GET and LIST, watches
  excluded), over a quiet period;
- the operator process's peak RSS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import yaml

from bench.measure import operator_reads, operator_writes, peak_rss_bytes, percentile
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack.operator_process import running_operator

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS = "bench"
ISVC = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
PREWARM = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"
# The preloader Jobs live in the platform's pre-warm namespace (the operator's PREWARM_NAMESPACE).
PREWARM_NAMESPACE = ROOT / "manifests" / "prewarm" / "namespace.yaml"
JOBS = f"/apis/batch/v1/namespaces/{yaml.safe_load(PREWARM_NAMESPACE.read_text())['metadata']['name']}/jobs"
RESULT = {"model": "s3://models/bench", "files": 1, "bytes": 1_000_000, "seconds": {"total": 0.5},
          "gbps": 0.002, "device": "cuda", "cache": "miss", "version": "0123456789abcdef"}








def inference_service(i: int, nodes: int) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": f"model-{i:03d}", "namespace": NS},
            "spec": {"predictor": {"minReplicas": nodes, "model": {
                "modelFormat": {"name": "pytorch"}, "storageUri": f"s3://models/model-{i:03d}/",
                "resources": {"limits": {"nvidia.com/gpu": "1"}}}}}}


def run(count: int, gpu_nodes: int, nodes_per_model: int, quiet_seconds: float, resync: float) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-prewarm-"))
    crds = [ROOT / "manifests" / "crds", ROOT / "tests" / "fixtures" / "crds"]
    with EmulatedCluster(crds, ready_delay=0.05) as cluster:
        kube = ClusterClient(cluster.url, user_agent="bench-client")
        kube.create("/api/v1/namespaces", yaml.safe_load(PREWARM_NAMESPACE.read_text()))
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NS, "labels": {"serverless.xyz/prewarm": "enabled"}}})
        for i in range(gpu_nodes):
            cluster.add_node(f"gpu-{i:02d}", gpus=8)
        cluster.sim.auto_complete_jobs(succeeded=True, message=json.dumps(RESULT))
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        with running_operator(kubeconfig, workdir / "operator.log", env={"RESYNC_SECONDS": str(resync)}) as op:
            created_at: dict[str, float] = {}
            prewarm_at: dict[str, float] = {}
            jobs_at: dict[str, float] = {}
            stop = threading.Event()

            def poll() -> None:
                watcher = ClusterClient(cluster.url, user_agent="bench-watcher")
                while not stop.is_set():
                    now = time.perf_counter()
                    for item in watcher.list(PREWARM):
                        prewarm_at.setdefault(item["metadata"]["name"], now)
                    per_owner: dict[str, int] = {}
                    for job in watcher.list(JOBS):
                        owner = job["metadata"]["labels"].get("serving.serverless.xyz/modelprewarm", "")
                        per_owner[owner] = per_owner.get(owner, 0) + 1
                    for owner, n in per_owner.items():
                        if n >= nodes_per_model:
                            jobs_at.setdefault(owner, now)
                    time.sleep(0.05)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            started = time.perf_counter()

            def create(i: int) -> None:
                body = inference_service(i, nodes_per_model)
                created_at[body["metadata"]["name"]] = time.perf_counter()
                ClusterClient(cluster.url, user_agent="bench-client").create(ISVC, body)

            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # "applied at once"
                list(pool.map(create, range(count)))
            while True:
                warm = sum(1 for o in kube.list(PREWARM) if o.get("status", {}).get("phase") == "Warm")
                if warm == count:
                    break
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"only {warm}/{count} Warm after 600s")
                time.sleep(0.2)
            all_warm = time.perf_counter() - started
            stop.set()
            poller.join()
            to_prewarm = [prewarm_at[n] - created_at[n] for n in created_at if n in prewarm_at]
            to_jobs = [jobs_at[n] - created_at[n] for n in created_at if n in jobs_at]

            time.sleep(max(2.0, resync * 2))  # the last status writes and kopf's bookkeeping settle
            since = time.time()
            time.sleep(quiet_seconds)
            writes = operator_writes(cluster, since)
            reads = operator_reads(cluster, since)
            peak = peak_rss_bytes(op.proc.pid)
            jobs = len(kube.list(JOBS))
    return {
        "count": count, "gpu_nodes": gpu_nodes, "nodes_per_model": nodes_per_model, "jobs": jobs,
        "prewarm_p50_ms": 1000 * statistics.median(to_prewarm), "prewarm_p99_ms": 1000 * percentile(to_prewarm, 99),
        "jobs_p50_ms": 1000 * statistics.median(to_jobs), "jobs_p99_ms": 1000 * percentile(to_jobs, 99),
        "all_warm_s": all_warm, "writes": writes, "quiet_s": quiet_seconds, "resync_s": resync,
        "writes_per_prewarm_minute": writes / count / (quiet_seconds / 60), "peak_rss_mib": peak / 2**20,
        "reads_per_prewarm_minute": reads / count / (quiet_seconds / 60),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--gpu-nodes", type=int, default=4)
    parser.add_argument("--nodes-per-model", type=int, default=2, help="each service's minReplicas")
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    args = parser.parse_args()
    r = run(args.count, args.gpu_nodes, args.nodes_per_model, args.quiet_seconds, args.resync)
    print(f"\nbench-prewarm: {r['count']} opted-in InferenceServices x {r['nodes_per_model']} nodes "
          f"({r['jobs']} Jobs) on {r['gpu_nodes']} simulated GPU nodes, emulated API server")
    print(f"  created -> ModelPrewarm present   p50 {r['prewarm_p50_ms']:8.1f} ms   p99 {r['prewarm_p99_ms']:.1f} ms")
    print(f"  created -> all its Jobs present   p50 {r['jobs_p50_ms']:8.1f} ms   p99 {r['jobs_p99_ms']:.1f} ms")
    print(f"  first create -> all Warm (status-only Job simulation)   {r['all_warm_s']:8.2f} s")
    print(f"  API writes while settled ({r['quiet_s']:.0f}s, resync {r['resync_s']:.0f}s)   {r['writes']} total,"
          f" {r['writes_per_prewarm_minute']:.3f} per ModelPrewarm per minute (target 0)")
    print(f"  API reads while settled (the resync timer)              {r['reads_per_prewarm_minute']:8.2f}"
          " per ModelPrewarm per minute")
    print(f"  operator peak RSS                                       {r['peak_rss_mib']:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
