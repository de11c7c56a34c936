"""`make bench-scale`: one operator holding 2,000 Memcacheds, 1,000 ModelPrewarms (from opted-in
InferenceServices) and 1,000 ModelCanaries with 10,000 unrelated Pods in the cluster, on the
emulated API server and on the real control plane (issue 17, item 4).

Per server, in this order:
1. Nodes cost per reconcile: an operator on an empty cluster with 10 Nodes, then with 1,000,
   pre-warms a few InferenceServices one after the other; reported are create -> all Jobs present,
   the operator's CPU seconds and its API requests per InferenceService (its ModelPrewarm reconciles
   included). Equal figures mean a reconcile does not grow with the Nodes. The extra Nodes are
   removed again (the probe's objects too) before the scale run.
2. 10,000 unrelated Pods, bare, in ten other namespaces, with a nodeSelector no Node matches (they
   stay Pending: the process kubelet runs nothing for them), created by a thread pool.
3. The operator starts; the 4,000 objects are created, paced and interleaved (`--create-rate`).
   Reported: create -> first child p50/p99 per kind (Memcached: its Deployment; InferenceService:
   its ModelPrewarm; ModelCanary: the VirtualService carrying its weights), seen on watches, and
   beside it the peer under the same load: kube-controller-manager's Deployment -> first
   ReplicaSet for the same Deployments (on the real control plane; the emulator has no such controller);
   the time until every object has converged (Memcached Running; ModelPrewarm Warm on the emulator,
   where the Jobs are completed by its status-only Job simulation; on the real control plane no
   preloader image is registered, so its pods are status-only and never end: there a ModelPrewarm
   has converged once its Job exists and its status is observed: Warming where the Job's pod got
   a GPU, Pending where it waits for one; ModelCanary Active);
   the operator's peak API request rate per second while the objects are created.
4. Settled: API requests per settled object per minute over a quiet window (target 0).
5. Restart with everything present: a fresh operator process (as after a failover); its peak
   request rate per second and its requests over the first minute, its peak RSS.
Peak RSS (VmHWM) of both operator processes is reported.

Request counts: the emulated server's request log; kube-apiserver's audit log of the operator's
ServiceAccount on the real one (bench/measure.py). Each request counts at its arrival second.
`--scale 0.1` makes every count a tenth (quick run); 1 (the default) is the full run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from bench.bench_operator import OPERATOR_USER, KeepAlive, built_controlplane
from bench.measure import (
    Traffic,
    audit_flags,
    audit_traffic,
    client_of,
    cpu_seconds,
    emulated_traffic,
    peak_rss_bytes,
    percentile,
    rss_bytes,
)
from controlplane.cluster import RealCluster
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack.mnist_virtualservice import virtual_service
from devstack.operator_process import running_operator
from devstack.simulated_gpu_pool import GPU_LABELS

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRDS = [ROOT / "manifests" / "crds", ROOT / "tests" / "fixtures" / "crds"]
PREWARM_NAMESPACE_MANIFEST = ROOT / "manifests" / "prewarm" / "namespace.yaml"
PLATFORM = str(yaml.safe_load(PREWARM_NAMESPACE_MANIFEST.read_text())["metadata"]["name"])
CACHE_NS, PREWARM_NS, CANARY_NS, PROBE_NS = "scale-cache", "scale-prewarm", "scale-canary", "scale-probe"
UNRELATED_NAMESPACES = 10
PREWARM_LABELS = {"serverless.xyz/prewarm": "enabled", "pod-security.kubernetes.io/enforce": "baseline"}
MC_GROUP = "/apis/cache.serverless.xyz/v1alpha1"
SERVING = "/apis/serving.serverless.xyz/v1alpha1"
KSERVE = "/apis/serving.kserve.io/v1beta1"
ISTIO = "/apis/networking.istio.io/v1"
LABEL_PREWARM = "serving.serverless.xyz/modelprewarm"
RESULT = {"model": "s3://models/bench", "files": 1, "bytes": 1_000_000, "seconds": {"total": 0.5},
          "gbps": 0.002, "device": "cuda", "cache": "miss", "version": "0123456789abcdef"}
FULL = {"pods": 10_000, "memcacheds": 2_000, "prewarms": 1_000, "canaries": 1_000}
GPU_NODES = 4
GPUS_PER_NODE = 8
PODS_PER_NODE = 250
EXTRA_SERVICE_CIDR = "10.96.0.0/16"


def ns_path(prefix: str, namespace: str, resource: str) -> str:
    return f"{prefix}/namespaces/{namespace}/{resource}"


# ---- the objects -----------------------------------------------------------------------------------


def unrelated_pod(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"unrelated-{i:05d}", "namespace": f"unrelated-{i % UNRELATED_NAMESPACES}",
                         "labels": {"app": "unrelated"}},
            "spec": {"nodeSelector": {"bench.serverless.xyz/no-such-node": "true"},
                     "containers": [{"name": "app", "image": "unrelated.invalid/app:1"}]}}


def memcached(i: int) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": f"cache-{i:05d}", "namespace": CACHE_NS}, "spec": {"size": 1}}


def inference_service(name: str, namespace: str, gpu: bool = True) -> dict[str, Any]:
    model: dict[str, Any] = {"modelFormat": {"name": "pytorch"}, "storageUri": f"s3://models/{name}/"}
    if gpu:
        model["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"predictor": {"minReplicas": 1, "model": model}}}


def model_canary(i: int) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
            "metadata": {"name": f"canary-{i:05d}", "namespace": CANARY_NS},
            "spec": {"virtualService": {"name": f"vs-{i:05d}"}, "routes": ["predict"], "percent": 10,
                     "stable": {"inferenceService": "torch-mnist"},
                     "candidate": {"inferenceService": "torch-mnist-v2"}}}


def predict_weights(vs: dict[str, Any]) -> list[int]:
    for route in (vs.get("spec") or {}).get("http") or []:
        if route.get("name") == "predict":
            return [d.get("weight", 100) for d in route.get("route") or []]
    return []


# ---- the two servers -------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """One API server under test, as the scale run needs it."""

    name: str
    kube: ClusterClient
    operator_kubeconfig: pathlib.Path
    traffic: Callable[[float, float], Traffic]
    request_times: Callable[[float, float], list[float]]  # arrival (time.time()) of each operator request
    breakdown: Callable[[float, float], Counter[str]]  # "VERB resource" of each operator request
    add_gpu_node: Callable[[str], object]
    add_plain_node: Callable[[str], object]
    remove_node: Callable[[str], object]
    create_namespace: Callable[[str, dict[str, str]], None]
    # The server's own processes by name (kube-apiserver, etcd, ...; none for the emulator, which
    # runs in the bench's process), for the CPU breakdown.
    pids: Callable[[], dict[str, int]] = dict


@contextlib.contextmanager
def emulated_server(workdir: pathlib.Path) -> Iterator[Server]:
    with EmulatedCluster(CRDS, ready_delay=0.05) as cluster:
        kube = ClusterClient(cluster.url, user_agent="bench-client")
        kube.create("/api/v1/namespaces", yaml.safe_load(PREWARM_NAMESPACE_MANIFEST.read_text()))
        cluster.sim.auto_complete_jobs(succeeded=True, message=json.dumps(RESULT))

        def times(since: float, until: float) -> list[float]:
            return [r.timestamp for r in cluster.request_log.snapshot()
                    if since <= r.timestamp < until and client_of(r.user_agent) is not None]

        def namespace(name: str, labels: dict[str, str]) -> None:
            kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name, "labels": labels}})

        def breakdown(since: float, until: float) -> Counter[str]:
            return Counter(f"{'WATCH' if r.watch else r.method} {resource_of(r.path)}"
                           for r in cluster.request_log.snapshot()
                           if since <= r.timestamp < until and client_of(r.user_agent) is not None)

        yield Server("emulated", kube, cluster.write_kubeconfig(workdir / "kubeconfig"),
                     lambda since, until: emulated_traffic(cluster, since, until), times, breakdown,
                     lambda name: cluster.add_node(name, gpus=GPUS_PER_NODE, labels=GPU_LABELS)
                    ,
                     lambda name: cluster.add_node(name, capacity={"pods": PODS_PER_NODE}),
                     cluster.remove_node, namespace)


def resource_of(path: str) -> str:
    """The resource a request path names: /api/v1/namespaces/NS/pods/NAME -> pods."""
    parts = path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        return parts[parts.index("namespaces") + 2]
    return parts[2] if parts[0] == "api" and len(parts) > 2 else parts[3] if len(parts) > 3 else path


def _audit_events(log: pathlib.Path, since: float, until: float) -> Iterator[tuple[float, dict[str, Any]]]:
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event["user"].get("username") != OPERATOR_USER:
            continue
        stamp = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if since <= stamp < until:
            yield stamp, event


def _audit_times(log: pathlib.Path, since: float, until: float) -> list[float]:
    return [stamp for stamp, _ in _audit_events(log, since, until)]


def _audit_breakdown(log: pathlib.Path, since: float, until: float) -> Counter[str]:
    return Counter(f"{e['verb'].upper()} {(e.get('objectRef') or {}).get('resource', '?')}"
                   for _, e in _audit_events(log, since, until))


def bare_node(name: str) -> dict[str, Any]:
    """A Node object no kubelet serves (the probe's extra Nodes on the real control plane: a
    process-kubelet node would heartbeat, 500 writes/s for 1,000 of them on two cores)."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"bench": "probe"}},
            "spec": {"unschedulable": True},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                       "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}


@contextlib.contextmanager
def real_server(workdir: pathlib.Path, bin_dir: pathlib.Path) -> Iterator[Server]:
    cluster = RealCluster(bin_dir, workdir / "cluster", status_only_delay=0.05)
    cluster.plane.extra_apiserver_flags = audit_flags(workdir / "audit", OPERATOR_USER)
    with cluster:
        cluster.install_manifests(extra_crds=sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml")))
        kube = cluster.client("bench-client")
        # The control plane's service range is a /24 (controlplane/launch.py): 2,000 Memcached
        # Services need a second range (a ServiceCIDR, served since v1.33).
        kube.create("/apis/networking.k8s.io/v1/servicecidrs", {
            "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": "bench-scale"}, "spec": {"cidrs": [EXTRA_SERVICE_CIDR]}})

        yield Server("real", kube, cluster.service_account_kubeconfig(workdir / "operator.kubeconfig"),
                     lambda since, until: audit_traffic(workdir / "audit" / "audit.log", OPERATOR_USER, since, until),
                     lambda since, until: _audit_times(workdir / "audit" / "audit.log", since, until),
                     lambda since, until: _audit_breakdown(workdir / "audit" / "audit.log", since, until),
                     lambda name: cluster.add_node(name, gpus=GPUS_PER_NODE, labels=GPU_LABELS)
                    ,
                     lambda name: cluster.add_node(name, capacity={"cpu": "256", "memory": "1024Gi",
                                                                   "pods": PODS_PER_NODE}),
                     lambda name: kube.delete(f"/api/v1/nodes/{name}"),
                     lambda name, labels: cluster.create_namespace(name, labels),
                     cluster.plane.pids)


# ---- watching for first children -------------------------------------------------------------------


class FirstSeen:
    """A watch of one collection that records, per key, when an event first satisfied `match`
    (`match` returns the key of the object it recognises, or None)."""

    def __init__(self, kube: ClusterClient, path: str, match: Callable[[dict[str, Any]], str | None]) -> None:
        self.client = KeepAlive(kube)
        self.path, self.match = path, match
        self.seen: dict[str, float] = {}
        self._closing = False
        self._conn: Any = None
        self._rv = str(self.client.call("GET", path)["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {path}")
        self._thread.start()

    def _run(self) -> None:
        kube = self.client.kube
        while not self._closing:
            conn = self.client._connect()
            self._conn = conn
            headers = {"User-Agent": kube.user_agent}
            if kube.token:
                headers["Authorization"] = f"Bearer {kube.token}"
            try:
                conn.request("GET", f"{self.path}?watch=1&allowWatchBookmarks=true&timeoutSeconds=3600"
                             f"&resourceVersion={self._rv}", headers=headers)
                response = conn.getresponse()
                while line := response.readline():
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        self._rv = str(self.client.call("GET", self.path)["metadata"]["resourceVersion"])
                        break
                    self._rv = str((obj.get("metadata") or {}).get("resourceVersion") or self._rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        key = self.match(obj)
                        if key is not None:
                            self.seen.setdefault(key, time.perf_counter())
            except Exception:
                if self._closing:
                    return
                time.sleep(0.2)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError, AttributeError):
            self._conn.sock.shutdown(2)
        self._thread.join(timeout=5)
        self.client.close()


# ---- measurement helpers ---------------------------------------------------------------------------


def peak_rate(times: list[float]) -> tuple[int, float]:
    """(the most requests that arrived within one wall-clock second, the mean per second)."""
    if not times:
        return 0, 0.0
    per_second = Counter(int(t) for t in times)
    span = max(1.0, max(times) - min(times))
    return max(per_second.values()), len(times) / span


def create_all(kube: ClusterClient, jobs: list[tuple[str, dict[str, Any]]], threads: int = 16) -> float:
    """POST every (path, body) from a pool of kept-alive clients; returns the seconds taken."""
    local = threading.local()

    def create(job: tuple[str, dict[str, Any]]) -> None:
        if not hasattr(local, "client"):
            local.client = KeepAlive(kube)
        local.client.call("POST", *job)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, jobs))
    return time.perf_counter() - started


def cpu_by_process(server: Server, operator_pid: int | None) -> dict[str, float]:
    """CPU seconds used so far by each process of the run: the server's components, the operator,
    and this process (the bench's creates and watches; on the real server also the process kubelet,
    a thread here; on the emulator the API server itself)."""
    pids = {**server.pids(), "bench": os.getpid()}
    if operator_pid is not None:
        pids["operator"] = operator_pid
    used: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            used[name] = cpu_seconds(pid)
    return used


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: round(used - before.get(name, 0.0), 1) for name, used in after.items()}


def wait_until(what: str, check: Callable[[], tuple[int, int]], timeout: float, interval: float = 1.0) -> float:
    """Poll `check` (done, wanted) until done == wanted; returns the perf_counter time it was."""
    deadline = time.perf_counter() + timeout
    while True:
        done, wanted = check()
        if done >= wanted:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: {done}/{wanted} after {timeout:.0f} s")
        time.sleep(interval)


def count_jobs_by_owner(client: KeepAlive) -> Counter[str]:
    jobs = client.call("GET", ns_path("/apis/batch/v1", PLATFORM, "jobs"))["items"]
    return Counter(str(j["metadata"].get("labels", {}).get(LABEL_PREWARM, "")) for j in jobs)


# ---- 1. the Nodes probe ----------------------------------------------------------------------------


def node_probe(server: Server, workdir: pathlib.Path, extra_nodes: int, per_round: int) -> dict[str, Any]:
    """Pre-warm `per_round` InferenceServices one at a time with the GPU nodes only, then with
    `extra_nodes` more Nodes; the operator's CPU and requests per InferenceService in each case."""
    client = KeepAlive(server.kube)
    isvc, prewarms = ns_path(KSERVE, PROBE_NS, "inferenceservices"), ns_path(SERVING, PROBE_NS, "modelprewarms")
    rounds: dict[str, dict[str, float]] = {}
    extra = [f"probe-{i:04d}" for i in range(extra_nodes)]
    nodes_before = len(client.call("GET", "/api/v1/nodes")["items"])
    for label, add in (("few", 0), ("many", extra_nodes)):
        if add:
            if server.name == "real":  # Node objects no kubelet serves (see bare_node)
                create_all(server.kube, [("/api/v1/nodes", bare_node(n)) for n in extra], threads=8)
            else:
                for n in extra:
                    server.add_plain_node(n)
            time.sleep(20 if server.name == "real" else 2)  # the node controller's taints land first
        nodes = len(client.call("GET", "/api/v1/nodes")["items"])
        with running_operator(server.operator_kubeconfig, workdir / f"operator-probe-{server.name}-{label}.log",
                              env={"RESYNC_SECONDS": "30"}) as op:
            time.sleep(3)
            latencies, cpus, requests = [], [], []
            for i in range(per_round):
                name = f"probe-{label}-{i:02d}"
                since, cpu_before, began = time.time(), cpu_seconds(op.proc.pid), time.perf_counter()
                client.call("POST", isvc, inference_service(name, PROBE_NS))
                wait_until(f"{name}'s Job", lambda: (count_jobs_by_owner(client)[name], 1), 60,  # noqa: B023
                           interval=0.01)
                latencies.append(time.perf_counter() - began)
                time.sleep(1.0)  # its status writes
                cpus.append(cpu_seconds(op.proc.pid) - cpu_before)
                traffic = server.traffic(since, time.time())
                requests.append(traffic.total_reads + traffic.total_writes)
            rounds[label] = {"nodes": nodes, "p50_ms": 1000 * statistics.median(latencies),
                             "max_ms": 1000 * max(latencies), "cpu_ms": 1000 * statistics.median(cpus),
                             "requests": statistics.median(requests), "rss_mib": rss_bytes(op.proc.pid) / 2**20}
            for i in range(per_round):  # the probe's objects go while their operator runs (finalizers)
                name = f"probe-{label}-{i:02d}"
                client.call("DELETE", f"{isvc}/{name}")
                with contextlib.suppress(Exception):
                    client.call("DELETE", f"{prewarms}/{name}")
            wait_until("probe ModelPrewarms gone", lambda: (
                0 if client.call("GET", prewarms)["items"] else 1, 1), 120)
    for n in extra:
        server.remove_node(n)
    wait_until("probe Nodes gone", lambda: (
        int(len(client.call("GET", "/api/v1/nodes")["items"]) <= nodes_before), 1), 120)
    client.close()
    return rounds


# ---- 2-5. the scale run ----------------------------------------------------------------------------


def scale_run(server: Server, workdir: pathlib.Path, counts: dict[str, int], create_rate: float,
              quiet_seconds: float, restart_seconds: float) -> dict[str, Any]:
    client = KeepAlive(server.kube)
    n_mc, n_pw, n_mcy = counts["memcacheds"], counts["prewarms"], counts["canaries"]
    for i in range(UNRELATED_NAMESPACES):
        server.create_namespace(f"unrelated-{i}", {})
    started = time.perf_counter()
    create_all(server.kube, [(ns_path("/api/v1", f"unrelated-{i % UNRELATED_NAMESPACES}", "pods"), unrelated_pod(i))
                             for i in range(counts["pods"])])
    pods_s = time.perf_counter() - started

    mc_path, mc_deploy = ns_path(MC_GROUP, CACHE_NS, "memcacheds"), ns_path("/apis/apps/v1", CACHE_NS, "deployments")
    isvc_path = ns_path(KSERVE, PREWARM_NS, "inferenceservices")
    pw_path = ns_path(SERVING, PREWARM_NS, "modelprewarms")
    mcy_path, vs_path = ns_path(SERVING, CANARY_NS, "modelcanaries"), ns_path(ISTIO, CANARY_NS, "virtualservices")
    for name in ("torch-mnist", "torch-mnist-v2"):
        client.call("POST", ns_path(KSERVE, CANARY_NS, "inferenceservices"),
                    inference_service(name, CANARY_NS, gpu=False))
    create_all(server.kube, [(vs_path, virtual_service(name=f"vs-{i:05d}", namespace=CANARY_NS))
                             for i in range(n_mcy)], threads=8)

    load_before = os.getloadavg()
    op_started = time.time()
    cpu_at = cpu_by_process(server, None)
    with running_operator(server.operator_kubeconfig, workdir / f"operator-scale-{server.name}.log",
                          env={"RESYNC_SECONDS": "30"}) as op:
        ready_s = time.time() - op_started
        rss_ready = rss_bytes(op.proc.pid)
        watches = {
            "memcached": FirstSeen(server.kube, mc_deploy, lambda o: str(o["metadata"]["name"])),
            "prewarm": FirstSeen(server.kube, pw_path, lambda o: str(o["metadata"]["name"])),
            "canary": FirstSeen(server.kube, vs_path, lambda o: str(o["metadata"]["name"]).replace("vs-", "canary-")
                                if predict_weights(o) == [90, 10] else None),
        }
        # The peer, in the same run: kube-controller-manager's Deployment controller, Deployment (as
        # the operator created it, seen above) -> its first ReplicaSet, seen by the same kind of watch.
        replicasets = FirstSeen(server.kube, ns_path("/apis/apps/v1", CACHE_NS, "replicasets"),
                                lambda o: next((str(ref["name"]) for ref in o["metadata"].get("ownerReferences") or []
                                                if ref.get("kind") == "Deployment"), None))
        time.sleep(2)
        startup_times = server.request_times(op_started, time.time())
        plan = ([("memcached", mc_path, memcached(i)) for i in range(n_mc)]
                + [("prewarm", isvc_path, inference_service(f"model-{i:05d}", PREWARM_NS)) for i in range(n_pw)]
                + [("canary", mcy_path, model_canary(i)) for i in range(n_mcy)])
        plan.sort(key=lambda job: (int(str(job[2]["metadata"]["name"]).split("-")[-1]) / {
            "memcached": n_mc, "prewarm": n_pw, "canary": n_mcy}[job[0]], job[0]))  # interleaved
        created_at: dict[str, dict[str, float]] = {kind: {} for kind in watches}
        first, begun = time.time(), time.perf_counter()
        for i, (kind, path, body) in enumerate(plan):
            time.sleep(max(0.0, begun + i / create_rate - time.perf_counter()))
            name = str(body["metadata"]["name"])
            created_at[kind][name] = time.perf_counter()
            client.call("POST", path, body)
        creates_s = time.perf_counter() - begun
        creating_until = time.time()
        cpu_creating = cpu_delta(cpu_by_process(server, op.proc.pid), cpu_at)
        cpu_at = cpu_by_process(server, op.proc.pid)

        def converged() -> tuple[int, int]:
            running = sum(1 for o in client.call("GET", mc_path)["items"]
                          if (o.get("status") or {}).get("phase") == "Running")
            jobs = count_jobs_by_owner(client)
            done_pw = 0
            for o in client.call("GET", pw_path)["items"]:
                status = o.get("status") or {}
                if server.name == "emulated":
                    done_pw += status.get("phase") == "Warm"
                else:
                    done_pw += (bool(status.get("phase")) and jobs[o["metadata"]["name"]] >= 1
                                and status.get("observedGeneration") == o["metadata"].get("generation"))
            active = sum(1 for o in client.call("GET", mcy_path)["items"]
                         if (o.get("status") or {}).get("phase") == "Active")
            converged.last = {"memcached": running, "prewarm": done_pw, "canary": active}  # type: ignore[attr-defined]
            return running + done_pw + active, n_mc + n_pw + n_mcy

        try:
            all_done = wait_until("converged", converged, 1800, interval=2.0)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {converged.last}") from None  # type: ignore[attr-defined]
        converge_s = all_done - begun
        cpu_converging = cpu_delta(cpu_by_process(server, op.proc.pid), cpu_at)
        creating_times = server.request_times(first, creating_until)
        creating_breakdown = server.breakdown(first, creating_until)
        converging_times = server.request_times(first, time.time())
        time.sleep(3)
        latencies: dict[str, list[float]] = {}
        for kind, watch in watches.items():
            watch.close()
            latencies[kind] = [watch.seen[n] - created_at[kind][n] for n in created_at[kind] if n in watch.seen]
        missing = {kind: len(created_at[kind]) - len(latencies[kind]) for kind in watches}
        replicasets.close()
        deployments_seen = watches["memcached"].seen
        peer = [replicasets.seen[n] - deployments_seen[n] for n in deployments_seen if n in replicasets.seen]
        load_converged = os.getloadavg()

        time.sleep(60)  # the last status writes and kopf's bookkeeping settle (two resync ticks)
        since = time.time()
        time.sleep(quiet_seconds)
        settled = server.traffic(since, time.time())
        settled_breakdown = server.breakdown(since, time.time())
        peak_first = peak_rss_bytes(op.proc.pid)
        final_first = rss_bytes(op.proc.pid)
        cpu_first = cpu_seconds(op.proc.pid)

    restarted = time.time()
    with running_operator(server.operator_kubeconfig, workdir / f"operator-restart-{server.name}.log",
                          env={"RESYNC_SECONDS": "30"}) as op2:
        restart_ready_s = time.time() - restarted
        time.sleep(restart_seconds)
        restart_times = server.request_times(restarted, time.time())
        restart_traffic = server.traffic(restarted, time.time())
        restart_breakdown = server.breakdown(restarted, time.time())
        peak_second = peak_rss_bytes(op2.proc.pid)
    client.close()
    time.sleep(0.5)
    objects = n_mc + n_pw + n_mcy
    minutes = quiet_seconds / 60
    return {
        "server": server.name, "counts": counts, "pods_s": pods_s, "ready_s": ready_s,
        "create_rate": create_rate, "creates_s": creates_s, "converge_s": converge_s,
        "latency": {kind: {"p50_ms": 1000 * statistics.median(v), "p99_ms": 1000 * percentile(v, 99),
                           "max_ms": 1000 * max(v), "n": len(v)} for kind, v in latencies.items() if v},
        "missing": missing,
        "peer_latency": {"p50_ms": 1000 * statistics.median(peer), "p99_ms": 1000 * percentile(peer, 99),
                         "max_ms": 1000 * max(peer), "n": len(peer)} if peer else None,
        "startup_peak": peak_rate(startup_times), "startup_requests": len(startup_times),
        "creating_peak": peak_rate(creating_times), "converging_requests": len(converging_times),
        "settled_reads": settled.total_reads, "settled_writes": settled.total_writes,
        "settled_watches": settled.watches,
        "settled_per_object_minute": (settled.total_reads + settled.total_writes) / objects / minutes,
        "quiet_s": quiet_seconds,
        "restart_ready_s": restart_ready_s, "restart_peak": peak_rate(restart_times),
        "restart_reads": restart_traffic.total_reads, "restart_writes": restart_traffic.total_writes,
        "restart_watches": restart_traffic.watches, "restart_s": restart_seconds,
        "restart_breakdown": dict(restart_breakdown.most_common(8)),
        "settled_breakdown": dict(settled_breakdown.most_common(8)),
        "creating_breakdown": dict(creating_breakdown.most_common(10)),
        "rss_ready_mib": rss_ready / 2**20, "peak_rss_mib": peak_first / 2**20, "final_rss_mib": final_first / 2**20,
        "restart_peak_rss_mib": peak_second / 2**20, "cpu_s": cpu_first,
        "load_before": load_before, "load_converged": load_converged,
        "cpu_creating": cpu_creating, "cpu_converging": cpu_converging,
    }


def run(server_name: str, bin_dir: pathlib.Path | None, scale: float, create_rate: float, quiet_seconds: float,
        restart_seconds: float, probe_nodes: int) -> dict[str, Any]:
    counts = {kind: max(1, round(n * scale)) for kind, n in FULL.items()}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-scale-{server_name}-"))
    try:
        context = emulated_server(workdir) if server_name == "emulated" else real_server(workdir, _need(bin_dir))
        with context as server:
            t0 = time.perf_counter()
            server.create_namespace(PROBE_NS, PREWARM_LABELS)
            server.create_namespace(PREWARM_NS, PREWARM_LABELS)
            server.create_namespace(CACHE_NS, {})
            server.create_namespace(CANARY_NS, {})
            for i in range(GPU_NODES):
                server.add_gpu_node(f"gpu-{i:02d}")
            for i in range(-(-counts["memcacheds"] // PODS_PER_NODE) if server_name == "real" else 0):
                server.add_plain_node(f"pool-{i:02d}")
            probe = node_probe(server, workdir, probe_nodes, per_round=5)
            result = scale_run(server, workdir, counts, create_rate, quiet_seconds, restart_seconds)
            result["probe"] = probe
            result["total_s"] = time.perf_counter() - t0
            result["workdir"] = str(workdir)
            return result
    finally:
        for bulky in (workdir / "cluster" / "controlplane" / "etcd", workdir / "cluster" / "kubelet"):
            shutil.rmtree(bulky, ignore_errors=True)


def _need(bin_dir: pathlib.Path | None) -> pathlib.Path:
    if bin_dir is None:
        raise ValueError("the real server needs the control plane's binaries (--bin or $CONTROLPLANE_BIN)")
    return bin_dir


# ---- the report ------------------------------------------------------------------------------------


def report(r: dict[str, Any]) -> None:
    c = r["counts"]
    where = "emulated API server" if r["server"] == "emulated" else "real control plane (kube-apiserver v1.37, etcd)"
    print(f"\nbench-scale, {where}, {os.cpu_count()}-core machine; load average {r['load_before'][0]:.2f}"
          f" before the creates, {r['load_converged'][0]:.2f} when converged")
    print(f"  {c['pods']} unrelated Pods created in {r['pods_s']:.1f} s; then {c['memcacheds']} Memcacheds,"
          f" {c['prewarms']} pre-warmed InferenceServices, {c['canaries']} ModelCanaries at {r['create_rate']:g}/s"
          f" (creates took {r['creates_s']:.1f} s)")
    print(f"  first create -> all converged                        {r['converge_s']:8.1f} s")
    children = {"memcached": "Memcached -> Deployment", "prewarm": "InferenceService -> ModelPrewarm",
                "canary": "ModelCanary -> VirtualService weights"}
    for kind, lat in r["latency"].items():
        print(f"  {children[kind]:<40} p50 {lat['p50_ms']:7.1f} ms  p99 {lat['p99_ms']:7.1f} ms"
              f"  max {lat['max_ms']:7.1f} ms  ({lat['n']} seen, {r['missing'][kind]} missed)")
    if r.get("peer_latency"):
        lat = r["peer_latency"]
        print(f"  {'peer: kube-controller-manager Deployment -> ReplicaSet':<40} p50 {lat['p50_ms']:7.1f} ms"
              f"  p99 {lat['p99_ms']:7.1f} ms  max {lat['max_ms']:7.1f} ms  ({lat['n']} seen; the same run and load)")
    sp, cp, rp = r["startup_peak"], r["creating_peak"], r["restart_peak"]
    print(f"  operator requests/s: startup (empty, {r['ready_s']:.1f} s to ready) peak {sp[0]};"
          f" while creating peak {cp[0]}, mean {cp[1]:.1f}")
    print(f"  settled ({r['quiet_s']:.0f} s): {r['settled_reads']} reads, {r['settled_writes']} writes,"
          f" {r['settled_watches']} watch requests = {r['settled_per_object_minute']:.4f} per object per minute"
          " (target 0)")
    print(f"  restart with everything present: ready in {r['restart_ready_s']:.1f} s; requests/s peak {rp[0]},"
          f" mean {rp[1]:.1f}; over {r['restart_s']:.0f} s: {r['restart_reads']} reads, {r['restart_writes']} writes,"
          f" {r['restart_watches']} watches")
    print(f"    settled requests: {r['settled_breakdown']}")
    print(f"    restart's requests: {r['restart_breakdown']}")
    print(f"    requests while creating: {r['creating_breakdown']}")
    print(f"  operator RSS: ready {r['rss_ready_mib']:.0f} MiB, peak {r['peak_rss_mib']:.0f} MiB,"
          f" settled {r['final_rss_mib']:.0f} MiB; restarted process peak {r['restart_peak_rss_mib']:.0f} MiB"
          f" (target < 400); CPU {r['cpu_s']:.0f} s")
    for phase in ("creating", "converging"):
        cpu = r.get(f"cpu_{phase}") or {}
        print(f"  CPU seconds by process while {phase}: " + ", ".join(
            f"{name} {used:.1f}" for name, used in sorted(cpu.items(), key=lambda kv: -kv[1])))
    for p in r["probe"].values():
        print(f"  Nodes probe, {p['nodes']:5.0f} Nodes: InferenceService -> Job p50 {p['p50_ms']:.0f} ms"
              f" (max {p['max_ms']:.0f}), operator CPU {p['cpu_ms']:.0f} ms and {p['requests']:.0f} requests"
              f" per InferenceService, RSS {p['rss_mib']:.0f} MiB")
    print(f"  whole run {r['total_s']:.0f} s; logs in {r['workdir']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="every count times this (0.1: a quick run)")
    parser.add_argument("--server", choices=("emulated", "real", "both"), default=None)
    parser.add_argument("--bin", type=pathlib.Path, default=None)
    parser.add_argument("--create-rate", type=float, default=40.0, help="creates per second, all kinds together")
    parser.add_argument("--quiet-seconds", type=float, default=60.0)
    parser.add_argument("--restart-seconds", type=float, default=60.0)
    parser.add_argument("--probe-nodes", type=int, default=1000, help="Nodes added for the probe's second round")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    bin_dir = args.bin or built_controlplane()
    server = args.server or ("both" if bin_dir else "emulated")
    names = ("emulated", "real") if server == "both" else (server,)
    for name in names:
        r = run(name, bin_dir, args.scale, args.create_rate, args.quiet_seconds, args.restart_seconds,
                args.probe_nodes)
        report(r)
        print(json.dumps({k: v for k, v in r.items() if k != "workdir"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
