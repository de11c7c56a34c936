"""`make demo`: the operator doing its work against an embedded local setup, told in plain words.

1. Starts the emulated Kubernetes API server (simulated Deployment and Job controllers, nodes),
   with the project's CRDs and KServe's and Istio's (tests/fixtures/crds/), moto's S3, a real
   memcached and Prometheus when installed, and the real operator process.
2. Memcached: applies the sample and drives a scale: with memcached and Prometheus installed,
   real client connections through a real Prometheus; without them, a spec change.
3. Pre-warm (prewarm_demo.py): torch-mnist through the KServe SDK, warmed by the real preloader
   on two simulated GPU nodes.
4. Canary (canary_demo.py): a candidate held until its model is warm, stepped on the built-in
   checks (Istio's request metrics through a real Prometheus), rolled back when its success rate
   falls under the bound.
5. Runs the preloader alone against a local S3 holding a small real model (a miss, then a hit).

Exits 0 when everything shown happened, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator

import yaml

from devcluster import ApiError
from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack import canary_demo, metrics_stack, prewarm_demo
from devstack.demo_world import Cluster, DemoFailed, DemoWorld, say
from devstack.istio_metrics_exporter import IstioMetricsExporter
from devstack.local_s3 import moto_s3
from devstack.operator_process import running_operator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREWARM_NAMESPACE = ROOT / "manifests/prewarm/namespace.yaml"
CRDS = [ROOT / "manifests/crds", ROOT / "tests/fixtures/crds"]  # ours, and KServe's and Istio's (trimmed)
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
SVC = "/api/v1/namespaces/default/services"
EVENTS = "/api/v1/namespaces/default/events"
MEMCACHED_SAMPLE = "memcached-sample"


def describe(kube: ClusterClient, name: str) -> None:
    mc = kube.get(f"{MC}/{name}")
    status = mc.get("status", {})
    conns = status.get("activeConnections")
    say(f"  Memcached {name}: phase {status.get('phase')}, {status.get('readyReplicas', 0)}/"
        f"{status.get('replicas', 0)} ready" + (f", {conns:g} active connections" if conns is not None else ""))
    for c in status.get("conditions", []):
        say(f"    {c['type']}={c['status']} ({c['reason']}): {c['message']}")


def new_events(kube: ClusterClient, name: str, seen: set[str]) -> None:
    for event in kube.list(EVENTS):
        uid = event["metadata"]["uid"]
        if event.get("involvedObject", {}).get("name") == name and uid not in seen:
            seen.add(uid)
            say(f"  event {event['type']}/{event['reason']}: {event['message']}")


def memcached_demo(world: DemoWorld) -> None:
    kube = world.kube
    sample = yaml.safe_load((ROOT / "manifests/samples/memcached.yaml").read_text())
    name = sample["metadata"]["name"]
    seen: set[str] = set()
    mc_port = world.memcached_port
    if mc_port is None:
        say("memcached/prometheus are not installed: the scale step will use a spec change instead.")
        sample["spec"].pop("targetConnectionsPerReplica", None)

    say(f"\nApplying manifests/samples/memcached.yaml ({json.dumps(sample['spec'])})")
    kube.create(MC, sample)
    dep = kube.wait_for(f"{DEPLOY}/{name}", lambda d: True, timeout=30)
    containers = [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]]
    say(f"  Deployment {name} created: {dep['spec']['replicas']} replica(s), containers {containers}, "
        f"owned by Memcached {dep['metadata']['ownerReferences'][0]['name']}")
    svc = kube.get(f"{SVC}/{name}")
    say(f"  Service {name} created: ports {[p['port'] for p in svc['spec']['ports']]}")
    kube.wait_for(f"{MC}/{name}", lambda o: o.get("status", {}).get("phase") == "Running", timeout=60)
    describe(kube, name)

    if mc_port is not None:
        say("\nOpening 250 real client connections to memcached "
            "(100 per replica, 1 warm spare: the operator should want 4)...")
        with metrics_stack.client_connections(mc_port, 250):
            kube.wait_for(f"{MC}/{name}", lambda o: o["status"].get("readyReplicas") == 4, timeout=60)
            describe(kube, name)
            new_events(kube, name, seen)
        say("\nClosing the connections: scale-down waits for the 30s scaling window...")
        kube.wait_for(f"{MC}/{name}", lambda o: o["status"].get("readyReplicas") == 2
                      and o["status"]["phase"] == "Running", timeout=90)
    else:
        say("\nRaising spec.size to 3...")
        kube.patch(f"{MC}/{name}", {"spec": {"size": 3}})
        kube.wait_for(f"{MC}/{name}", lambda o: o["status"].get("readyReplicas") == 3, timeout=60)
    describe(kube, name)
    new_events(kube, name, seen)

    say("\nApplying an invalid Memcached (size: 101): the API server's schema check rejects it:")
    try:
        kube.create(MC, {**sample, "metadata": {"name": "too-big", "namespace": "default"},
                         "spec": {"size": 101}})
    except ApiError as exc:
        say(f"  rejected: {exc}")
    else:
        raise DemoFailed("the API server accepted a Memcached with size 101")


def preloader_demo(workdir: pathlib.Path) -> None:
    say("\nPreloader alone: a small real model in a local S3 (moto's server), pulled into memory on the CPU...")
    subprocess.run([sys.executable, "-m", "devstack.preload_demo", str(workdir)], cwd=ROOT, check=True)


@contextlib.contextmanager
def demo_world(workdir: pathlib.Path, cluster: Cluster | None = None,
               operator_kubeconfig: pathlib.Path | None = None) -> Iterator[DemoWorld]:
    """Everything the parts share, started in order and stopped in reverse. Without `cluster`, the
    emulated one (with the CRDs) and an admin kubeconfig for the operator; `make demo-real` passes
    the real control plane (started, manifests installed) and its ServiceAccount's kubeconfig."""
    with contextlib.ExitStack() as stack:
        if cluster is None:
            say("Starting the emulated Kubernetes API server (kmock, extended; Deployments, Jobs and Nodes "
                "simulated)...")
            cluster = stack.enter_context(EmulatedCluster(CRDS))
            # What `kubectl apply -k manifests/` creates: the namespace the preloader Jobs run in.
            cluster.client("demo").create("/api/v1/namespaces", yaml.safe_load(PREWARM_NAMESPACE.read_text()))
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        say(f"  API server at {cluster.url}; kubeconfig {kubeconfig}")
        s3 = stack.enter_context(moto_s3())
        say(f"  S3: moto's server at {s3.url}")
        memcached_port = prometheus_url = istio_metrics = None
        if metrics_stack.have_binaries():
            say("Starting a real memcached, its stats exporter, an exporter of Istio's request metrics for the "
                "canary and a real Prometheus (1 s scrapes)...")
            memcached_port = stack.enter_context(metrics_stack.memcached_server())
            stats = stack.enter_context(metrics_stack.stats_exporter(memcached_port))
            istio_metrics = IstioMetricsExporter("default")
            stack.callback(istio_metrics.close)
            targets = {stats: {"namespace": "default", "pod": f"{MEMCACHED_SAMPLE}-6d9f7b8c4d-x7k2p"},
                       istio_metrics.port: {}}
            prometheus_url = stack.enter_context(metrics_stack.prometheus_server(targets))
            metrics_stack.wait_for_first_sample(prometheus_url)
            say(f"  memcached on 127.0.0.1:{memcached_port}, Prometheus at {prometheus_url}")
        say("Starting the operator...")
        env = {"RESYNC_SECONDS": "1", **({"PROMETHEUS_URL": prometheus_url} if prometheus_url else {})}
        operator = stack.enter_context(running_operator(operator_kubeconfig or kubeconfig, workdir / "operator.log",
                                                        env=env))
        say(f"  operator running (pid {operator.proc.pid}), probes and /metrics on 127.0.0.1:{operator.http_port}, "
            f"log {operator.log_path}")
        yield DemoWorld(cluster=cluster, kube=cluster.client("demo"), kubeconfig=kubeconfig, workdir=workdir,
                        s3=s3, operator=operator, memcached_port=memcached_port, prometheus_url=prometheus_url,
                        istio_metrics=istio_metrics)


PARTS = ("memcached", "prewarm", "canary", "preloader")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, in this order: {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(parts - set(PARTS)))}")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kserve-operator-demo-"))
    started = time.monotonic()
    prewarm_seconds: float | None = None
    try:
        if parts & {"memcached", "prewarm", "canary"}:
            with demo_world(workdir) as world:
                if "memcached" in parts:
                    memcached_demo(world)
                if "prewarm" in parts or "canary" in parts:  # the canary's stable model is torch-mnist
                    prewarm_seconds = prewarm_demo.run(world)
                if "canary" in parts:
                    canary_demo.run(world)
        if "preloader" in parts:
            preloader_demo(workdir)
    except DemoFailed as exc:
        say(f"\nThe demo FAILED: {exc}")
        say(f"Logs and files are in {workdir} (the operator's log: {workdir / 'operator.log'})")
        return 1
    except Exception as exc:  # whatever broke, the demo says so and exits non-zero
        traceback.print_exc()
        say(f"\nThe demo FAILED: {type(exc).__name__}: {exc}")
        say(f"Logs and files are in {workdir} (the operator's log: {workdir / 'operator.log'})")
        return 1
    prewarm = f" (end-to-end pre-warm {prewarm_seconds:.1f} s)" if prewarm_seconds is not None else ""
    say(f"\nDone in {time.monotonic() - started:.0f} s{prewarm}. Logs and files are in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
