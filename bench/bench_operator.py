"""`make bench-operator`: the operator converging 200 Memcached CRs, on the emulated API server and
on the real control plane (kube-apiserver v1.37 with etcd, the Deployment and ReplicaSet
controllers, the scheduler and the process kubelet), in the same run.

Reports, per server:
- the time from the first create to all 200 `status.phase == Running`;
- p50/p99 of create -> Deployment present (seen on a watch of Deployments);
- API writes per settled object per minute (target: 0), over a quiet period;
- API reads (GET and LIST; watches counted apart) per settled object per minute, same period,
  split between kopf's client and ours, and checked against the operator's own
  `kserve_operator_api_requests_total`;
- the operator process's peak and final RSS;
- the baseline measured in the same run: the bench client creating 200 Deployments itself
  (that server's floor for as many objects), and the ratio to it.

Where the request counts come from: on the emulated server, its request log (every request with
its User-Agent). On the real one, kube-apiserver's own audit log, with a policy that records every
request of the operator's ServiceAccount (the operator runs with a TokenRequest token of it, under
the shipped RBAC) once its response is complete. That counts kopf's requests too (its watches, its
patches of progress annotations and finalizers), which the operator's /metrics cannot (it counts
only `clients/kube.py`), and it needs no proxy in the request path. The /metrics counter is read
beside it as a cross-check of our own client's share.

`--server both` (the default when a control plane is built: `$CONTROLPLANE_BIN`, `--bin`, or what
`make controlplane` left in its cache) runs the emulated server, then the real one, `--runs` times,
and prints real/emulated ratios per run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bench.measure import (
    Traffic,
    audit_flags,
    audit_traffic,
    cpu_seconds,
    emulated_traffic,
    own_api_latency_totals,
    own_api_requests,
    peak_rss_bytes,
    percentile,
    rss_bytes,
)
from controlplane import build
from controlplane.cluster import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, RealCluster
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack.operator_process import OperatorProcess, running_operator

ROOT = pathlib.Path(__file__).resolve().parents[1]
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
BASELINE_DEPLOY = "/apis/apps/v1/namespaces/baseline/deployments"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
SERVERS = ("emulated", "real")
#: Memcached creates per second, the same on both servers: about what the real one takes while the
#: operator and the controllers work beside it on two cores (200 creates in 5.2-5.5 s there).
DEFAULT_CREATE_RATE = 40.0


@dataclasses.dataclass
class Server:
    """One API server under test, as the measurement needs it."""

    name: str
    kube: ClusterClient  # the bench's own admin client
    operator_kubeconfig: pathlib.Path
    traffic: Callable[[float, float], Traffic]  # the operator's requests between two time.time() values


# ---- the two servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def emulated_server(workdir: pathlib.Path) -> Iterator[Server]:
    """The emulated API server: simulated Deployment controller, 50 ms to "ready"."""
    with EmulatedCluster(sorted((ROOT / "manifests/crds").glob("*.yaml")), ready_delay=0.05) as cluster:
        kube = ClusterClient(cluster.url, user_agent="bench-client")
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "baseline"}})
        yield Server("emulated", kube, cluster.write_kubeconfig(workdir / "kubeconfig"),
                     lambda since, until: emulated_traffic(cluster, since, until))


@contextlib.contextmanager
def real_server(workdir: pathlib.Path, bin_dir: pathlib.Path, count: int) -> Iterator[Server]:
    """The real control plane with the manifests as shipped (no KServe or Istio CRDs, as on the
    emulated server), nodes enough for the baseline's and the caches' pods (reported Ready 50 ms after
    they start, as the emulated server's simulated Deployment controller does), the audit log on."""
    cluster = RealCluster(bin_dir, workdir / "cluster", status_only_delay=0.05)
    cluster.plane.extra_apiserver_flags = audit_flags(workdir / "audit", OPERATOR_USER)
    with cluster:
        cluster.install_manifests()
        pods_per_node = 250
        for i in range((2 * count + pods_per_node - 1) // pods_per_node):
            cluster.add_node(f"bench-{i}", capacity={"cpu": "256", "memory": "1024Gi", "pods": pods_per_node})
        cluster.create_namespace("baseline")
        kube = cluster.client("bench-client")
        yield Server("real", kube, cluster.service_account_kubeconfig(workdir / "operator.kubeconfig"),
                     lambda since, until: audit_traffic(workdir / "audit" / "audit.log", OPERATOR_USER, since, until))


def built_controlplane() -> pathlib.Path | None:
    """`$CONTROLPLANE_BIN`, else a folder `make controlplane` already built for this checkout's
    versions (the exact build key where Go is on PATH); never builds."""
    configured = os.environ.get("CONTROLPLANE_BIN")
    if configured:
        return pathlib.Path(configured)
    kubernetes = build.required_version(build.KUBERNETES_MODULE, "k8s.io/kubernetes")
    etcd = build.required_version(build.ETCD_MODULE, "go.etcd.io/etcd/server/v3")
    if shutil.which("go"):
        folder = build.cache_root() / build.build_key(kubernetes, etcd, build.go_version())
        return folder if build.is_built(folder) else None
    candidates = [f for f in build.cache_root().glob(f"k8s-{kubernetes}-etcd-{etcd}-*") if build.is_built(f)]
    return max(candidates, key=lambda f: f.stat().st_mtime) if candidates else None


# ---- the measurement -------------------------------------------------------------------------------


class KeepAlive:
    """The bench client's own calls (its creates, its polls) as JSON over one kept-alive
    connection, so that neither server's figures carry a TCP, or TLS, handshake per request."""

    def __init__(self, kube: ClusterClient) -> None:
        self.kube = kube
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        kube = self.kube
        if kube.https:
            return http.client.HTTPSConnection(kube.host, kube.port, timeout=30, context=kube.ssl_context)
        return http.client.HTTPConnection(kube.host, kube.port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"User-Agent": self.kube.user_agent, "Accept": "application/json"}
        if self.kube.token:
            headers["Authorization"] = f"Bearer {self.kube.token}"
        payload = None if body is None else json.dumps(body).encode()
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn.close()  # the server closed it while idle: once more, on a new one
                self._conn = None
                if attempt:
                    raise
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:300]!r}")
        return json.loads(raw)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def baseline_direct_creates(client: KeepAlive, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        client.call("POST", BASELINE_DEPLOY, {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"direct-{i}", "namespace": "baseline"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"d{i}"}},
                     "template": {"metadata": {"labels": {"app": f"d{i}"}},
                                  "spec": {"containers": [{"name": "c", "image": "memcached"}]}}},
        })
    return time.perf_counter() - started


class AddedWatch:
    """When each object of a collection was first seen: a watch from the list's resourceVersion,
    read on a thread and re-opened from the last resourceVersion seen whenever the server ends it
    (both servers do: kopf's watches are re-opened too); `close()` ends it."""

    def __init__(self, kube: ClusterClient, path: str) -> None:
        self.kube = kube
        self.path = path
        self.seen: dict[str, float] = {}
        self.reopened = 0
        self._closing = False
        self._conn: http.client.HTTPConnection | None = None
        self._rv = self._list()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _list(self) -> str:
        listing = self.kube.request("GET", self.path)
        now = time.perf_counter()
        for item in listing.get("items") or []:
            self.seen.setdefault(item["metadata"]["name"], now)
        return str(listing["metadata"]["resourceVersion"])

    def _open(self) -> http.client.HTTPResponse:
        kube = self.kube
        self._conn = (http.client.HTTPSConnection(kube.host, kube.port, context=kube.ssl_context) if kube.https
                      else http.client.HTTPConnection(kube.host, kube.port))
        headers = {"User-Agent": "bench-watcher", "Accept": "application/json"}
        if kube.token:
            headers["Authorization"] = f"Bearer {kube.token}"
        # Bookmarks asked for, as kopf and client-go ask: the emulated server's watch without them stops
        # delivering events once its bookmark interval (5 s) has passed.
        query = urllib.parse.urlencode({"watch": "true", "resourceVersion": self._rv, "allowWatchBookmarks": "true"})
        self._conn.request("GET", f"{self.path}?{query}", headers=headers)
        response = self._conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"watch {self.path}: {response.status} {response.read()[:300]!r}")
        return response

    def _run(self) -> None:
        while not self._closing:
            try:
                response = self._open()
                while line := response.readline():
                    if not any(kind in line[:24] for kind in (b"ADDED", b"ERROR", b"BOOKMARK")):
                        continue  # MODIFIED and DELETED events are most of the stream: not parsed
                    event = json.loads(line)
                    metadata = (event.get("object") or {}).get("metadata") or {}
                    if event.get("type") == "ERROR":  # 410: too old to resume; list again
                        self._rv = self._list()
                        break
                    self._rv = str(metadata.get("resourceVersion") or self._rv)
                    if event.get("type") == "ADDED":
                        self.seen.setdefault(metadata["name"], time.perf_counter())
            except Exception:  # http.client fails in several ways when the socket is shut under it
                if self._closing:
                    return
                raise
            if not self._closing:
                self.reopened += 1

    def wait_for(self, names: Iterable[str], timeout: float = 30.0) -> None:
        """Until every name was seen (the reader can lag behind a busy server), or `timeout`."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while not wanted <= self.seen.keys() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            with contextlib.suppress(OSError):
                if self._conn.sock is not None:
                    self._conn.sock.shutdown(2)
            self._conn.close()
        self._thread.join(timeout=5)


def operator_metrics(op: OperatorProcess) -> str:
    status, text = op.http_get("/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return text


def measure(server: Server, workdir: pathlib.Path, count: int, quiet_seconds: float, resync: float,
            tree: pathlib.Path | None, create_rate: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    client = KeepAlive(server.kube)
    baseline = baseline_direct_creates(client, count)
    settle_started = time.perf_counter()
    while sum(1 for d in client.call("GET", BASELINE_DEPLOY)["items"]
              if (d.get("status") or {}).get("readyReplicas") == 1) < count:  # the server's own controllers
        if time.perf_counter() - settle_started > 300:
            raise TimeoutError(f"the baseline's Deployments were not ready after 300 s on the {server.name} server")
        time.sleep(0.25)
    baseline_ready = time.perf_counter() - settle_started + baseline
    with running_operator(server.operator_kubeconfig, workdir / f"operator-{server.name}.log",
                          env={"RESYNC_SECONDS": str(resync)}, tree=tree) as op:
        watch = AddedWatch(server.kube, DEPLOY)
        cpu_before, latency_before = cpu_seconds(op.proc.pid), own_api_latency_totals(operator_metrics(op))
        rss_ready = rss_bytes(op.proc.pid)
        created_at: dict[str, float] = {}
        first = time.time()
        started = time.perf_counter()
        for i in range(count):
            if create_rate > 0:  # the same arrivals on both servers, whatever each one's create costs
                time.sleep(max(0.0, started + i / create_rate - time.perf_counter()))
            name = f"cache-{i:03d}"
            created_at[name] = time.perf_counter()
            client.call("POST", MC, {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                                     "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 1}})
        creates = time.perf_counter() - started
        while True:
            items = client.call("GET", MC)["items"]
            running = sum(1 for o in items if o.get("status", {}).get("phase") == "Running")
            if running == count:
                break
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"only {running}/{count} Running after 600s on the {server.name} server")
            time.sleep(0.1)
        converged = time.perf_counter() - started
        converged_at = time.time()
        cpu_converging = cpu_seconds(op.proc.pid) - cpu_before
        latency_after = own_api_latency_totals(operator_metrics(op))
        watch.wait_for(created_at)
        watch.close()
        latencies = [watch.seen[n] - created_at[n] for n in created_at if n in watch.seen]
        if len(latencies) != count:
            raise RuntimeError(f"the watch saw {len(latencies)} of {count} Deployments (re-opened {watch.reopened} "
                               f"times, last resourceVersion {watch._rv}, reader alive: {watch._thread.is_alive()})")
        all_present = max(watch.seen[n] for n in created_at) - started
        reopened = watch.reopened

        time.sleep(max(2.0, resync * 2))  # kopf's one-time bookkeeping settles
        own_before = own_api_requests(operator_metrics(op))
        cpu_before = cpu_seconds(op.proc.pid)
        since = time.time()
        time.sleep(quiet_seconds)
        until = time.time()
        cpu_settled = cpu_seconds(op.proc.pid) - cpu_before
        own_after = own_api_requests(operator_metrics(op))
        peak, final = peak_rss_bytes(op.proc.pid), rss_bytes(op.proc.pid)
    client.close()
    time.sleep(0.5)  # the audit log has the last responses written
    settled = server.traffic(since, until)
    converging = server.traffic(first, converged_at)
    own = own_after - own_before
    per_object_minute = 1 / count / (quiet_seconds / 60)
    return {
        "server": server.name, "count": count, "converge_s": converged, "baseline_s": baseline,
        "all_present_s": all_present, "creates_s": creates, "create_rate": create_rate,
        "baseline_ready_s": baseline_ready, "load": load, "watch_reopened": reopened,
        "api_latency_ms": 1000 * (latency_after[0] - latency_before[0]) / max(1, latency_after[1] - latency_before[1]),
        "cpu_converging_s": cpu_converging, "cpu_settled_s": cpu_settled,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
        "quiet_s": quiet_seconds, "resync_s": resync,
        "writes": settled.total_writes, "writes_per_object_minute": settled.total_writes * per_object_minute,
        "reads": settled.total_reads, "reads_per_object_minute": settled.total_reads * per_object_minute,
        "reads_by_client": settled.reads, "writes_by_client": settled.writes, "watches": settled.watches,
        "own_metrics_reads": own["GET"] + own["LIST"],
        "own_metrics_writes": own["POST"] + own["PATCH"] + own["PUT"] + own["DELETE"],
        "converge_reads": converging.reads, "converge_writes": converging.writes,
        "converge_watches": converging.watches, "converge_conflicts": converging.conflicts,
        "peak_rss_mib": peak / 2**20, "final_rss_mib": final / 2**20, "ready_rss_mib": rss_ready / 2**20,
    }


def run(server_name: str, count: int, quiet_seconds: float, resync: float, tree: pathlib.Path | None = None,
        bin_dir: pathlib.Path | None = None, create_rate: float = 0.0) -> dict[str, Any]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-operator-{server_name}-"))
    try:
        if server_name == "emulated":
            context = emulated_server(workdir)
        elif bin_dir is not None:
            context = real_server(workdir, bin_dir, count)
        else:
            raise ValueError("the real server needs the control plane's binaries (bin_dir)")
        with context as server:
            return measure(server, workdir, count, quiet_seconds, resync, tree, create_rate)
    finally:  # etcd's data and the nodes' folders go; the components', the operator's and the audit log stay
        for bulky in (workdir / "cluster" / "controlplane" / "etcd", workdir / "cluster" / "kubelet"):
            shutil.rmtree(bulky, ignore_errors=True)


# ---- the report ------------------------------------------------------------------------------------


def _split(by_client: dict[str, int]) -> str:
    return ", ".join(f"{who} {n}" for who, n in sorted(by_client.items())) or "none"


def report(r: dict[str, Any], which: str) -> None:
    where = ("emulated API server" if r["server"] == "emulated"
             else "real control plane (kube-apiserver v1.37, etcd, controllers, scheduler, process kubelet)")
    print(f"\nbench-operator: {r['count']} Memcached CRs, {where}, {os.cpu_count()}-core machine{which}"
          f" (load average {r['load']:.2f} at the start)")
    print(f"  baseline: client creates {r['count']} Deployments directly   {r['baseline_s']:8.2f} s"
          f"   (all ready {r['baseline_ready_s']:.2f} s after the first create, no operator)")
    print(f"  operator: create -> all Running                    {r['converge_s']:8.2f} s"
          f"   ({r['converge_s'] / r['baseline_s']:.1f}x the baseline)")
    pace = f"paced at {r['create_rate']:g}/s" if r["create_rate"] > 0 else "as fast as the client goes"
    print(f"  the {r['count']} Memcached creates took                 {r['creates_s']:8.2f} s   ({pace})")
    print(f"  operator: create -> all Deployments present      {r['all_present_s']:8.2f} s")
    print(f"  create -> Deployment present                 p50 {r['p50_ms']:8.1f} ms   p99 {r['p99_ms']:.1f} ms"
          f"   (the bench's watch re-opened {r['watch_reopened']} time(s))")
    print(f"  until all Running: operator CPU {r['cpu_converging_s']:.1f} s; its own client's API calls took"
          f" {r['api_latency_ms']:.1f} ms on average")
    print(f"  requests until all Running, per cache: reads {sum(r['converge_reads'].values()) / r['count']:.1f}"
          f" ({_split(r['converge_reads'])}), writes {sum(r['converge_writes'].values()) / r['count']:.1f}"
          f" ({_split(r['converge_writes'])}); {r['converge_conflicts']} answered 409;"
          f" {r['converge_watches']} watch request(s)")
    print(f"  API writes while settled ({r['quiet_s']:.0f}s, resync {r['resync_s']:.0f}s)   {r['writes']} total,"
          f" {r['writes_per_object_minute']:.3f} per object per minute (target 0)")
    print(f"  API reads while settled                          {r['reads_per_object_minute']:8.2f}"
          " per object per minute")
    source = "request log" if r["server"] == "emulated" else "kube-apiserver's audit log"
    print(f"    by client ({source}): reads {_split(r['reads_by_client'])}; writes {_split(r['writes_by_client'])};"
          f" {r['watches']} watch request(s)")
    print(f"    the operator's /metrics (its own client only): {r['own_metrics_reads']} reads,"
          f" {r['own_metrics_writes']} writes")
    print(f"    operator CPU while settled: {r['cpu_settled_s']:.2f} s over {r['quiet_s']:.0f} s")
    print(f"  operator peak RSS                                 {r['peak_rss_mib']:8.1f} MiB"
          f"   (ready, before the creates {r['ready_rss_mib']:.1f} MiB; at the end {r['final_rss_mib']:.1f} MiB)")


RATIOS = (("baseline (direct creates)", "baseline_s"), ("baseline: all ready", "baseline_ready_s"),
          ("create -> all Deployments", "all_present_s"), ("create -> all Running", "converge_s"),
          ("operator API call, mean", "api_latency_ms"), ("operator CPU to converge", "cpu_converging_s"),
          ("create -> Deployment p50", "p50_ms"), ("create -> Deployment p99", "p99_ms"),
          ("reads per object per minute", "reads_per_object_minute"), ("operator peak RSS", "peak_rss_mib"))


def report_ratios(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    print(f"\nreal / emulated, {len(pairs)} run(s){' (each run: emulated, then real)' if len(pairs) > 1 else ''}:")
    for label, key in RATIOS:
        ratios = [real[key] / emulated[key] if emulated[key] else float("nan") for emulated, real in pairs]
        values = "  ".join(f"{real[key]:.4g}/{emulated[key]:.4g}" for emulated, real in pairs)
        print(f"  {label:<30} {'  '.join(f'{x:5.2f}x' for x in ratios)}   ({values})")
    writes = "  ".join(f"{real['writes']}/{emulated['writes']}" for emulated, real in pairs)
    print(f"  {'writes while settled':<30} {writes} (real/emulated)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--resync", type=float, default=30.0)
    parser.add_argument("--server", choices=(*SERVERS, "both"), default=None,
                        help="where to run the operator (default: both when a control plane is built, else emulated)")
    parser.add_argument("--bin", type=pathlib.Path, default=None,
                        help="the control plane's binaries (what `make controlplane` prints last; default "
                        "$CONTROLPLANE_BIN, else the build in its cache)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement, servers alternating")
    parser.add_argument("--create-rate", type=float, default=DEFAULT_CREATE_RATE,
                        help="Memcached creates per second, the same on every server (0: as fast as the client "
                        f"goes; default {DEFAULT_CREATE_RATE:g})")
    parser.add_argument("--operator-tree", type=pathlib.Path, default=None,
                        help="run the operator package of another checkout (e.g. a worktree of an older commit)")
    args = parser.parse_args()
    bin_dir = args.bin or built_controlplane()
    server = args.server or ("both" if bin_dir else "emulated")
    if server != "emulated" and bin_dir is None:
        parser.error("--server real needs the control plane: run `make controlplane` (needs Go) or pass --bin")
    if args.server is None and bin_dir is None:
        print("bench-operator: no control plane built (`make controlplane`): the emulated server only")
    names = SERVERS if server == "both" else (server,)
    which = f" (operator from {args.operator_tree})" if args.operator_tree else ""
    pairs = []
    for round_ in range(args.runs):
        results = {}
        for name in names:
            results[name] = run(name, args.count, args.quiet_seconds, args.resync, args.operator_tree, bin_dir,
                                args.create_rate)
            report(results[name], f"{which}, run {round_ + 1} of {args.runs}" if args.runs > 1 else which)
        if server == "both":
            pairs.append((results["emulated"], results["real"]))
    if pairs:
        report_ratios(pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
