"""`make demo`: the operator doing its work against an embedded local setup, told in plain words.

1. Starts the emulated Kubernetes API server (with its simulated Deployment controller).
2. Starts the real operator process against it.
3. Applies the sample Memcached and reports what the operator created and the status.
4. Drives a scale: with memcached and Prometheus installed, real client connections
   through a real Prometheus; without them, a spec change.
5. Runs the preloader against a local S3 (moto's server) holding a small real model.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import tempfile

import yaml

from devcluster.client import ClusterClient
from devcluster.emulator import EmulatedCluster
from devstack import metrics_stack
from devstack.operator_process import running_operator

ROOT = pathlib.Path(__file__).resolve().parents[1]
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
SVC = "/api/v1/namespaces/default/services"
EVENTS = "/api/v1/namespaces/default/events"


def say(text: str) -> None:
    print(text, flush=True)


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


def memcached_demo(kube: ClusterClient, kubeconfig: pathlib.Path, workdir: pathlib.Path) -> None:
    sample = yaml.safe_load((ROOT / "manifests/samples/memcached.yaml").read_text())
    name = sample["metadata"]["name"]
    seen: set[str] = set()
    with contextlib.ExitStack() as stack:
        real_metrics = metrics_stack.have_binaries()
        prometheus_url = None
        if real_metrics:
            say("Starting a real memcached, its stats exporter and a real Prometheus (1 s scrapes)...")
            mc_port = stack.enter_context(metrics_stack.memcached_server())
            exporter = stack.enter_context(metrics_stack.stats_exporter(mc_port))
            labels = {"namespace": "default", "pod": f"{name}-6d9f7b8c4d-x7k2p"}
            prometheus_url = stack.enter_context(metrics_stack.prometheus_server({exporter: labels}))
            metrics_stack.wait_for_first_sample(prometheus_url)
            say(f"  memcached on 127.0.0.1:{mc_port}, Prometheus at {prometheus_url}")
        else:
            say("memcached/prometheus are not installed: the scale step will use a spec change instead.")
            sample["spec"].pop("targetConnectionsPerReplica", None)
        say("Starting the operator...")
        env = {"RESYNC_SECONDS": "1", **({"PROMETHEUS_URL": prometheus_url} if prometheus_url else {})}
        op = stack.enter_context(running_operator(kubeconfig, workdir / "operator.log", env=env))
        say(f"  operator running (pid {op.proc.pid}), probes and /metrics on 127.0.0.1:{op.http_port}, "
            f"log {op.log_path}")

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

        if real_metrics:
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
        except Exception as exc:  # the client's ApiError: shown, as kubectl would
            say(f"  rejected: {exc}")


def preloader_demo(workdir: pathlib.Path) -> None:
    say("\nPreloader: a small real model in a local S3 (moto's server), pulled into memory on the CPU...")
    script = ROOT / "devstack" / "preload_demo.py"
    if not script.exists():
        say("  (the preloader demo is not available in this checkout)")
        return
    subprocess.run([sys.executable, "-m", "devstack.preload_demo", str(workdir)], cwd=ROOT, check=True)


def main() -> int:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kserve-operator-demo-"))
    say("Starting the emulated Kubernetes API server (kmock, extended; Deployment controller simulated)...")
    crds = sorted((ROOT / "manifests/crds").glob("*.yaml"))
    with EmulatedCluster(crds) as cluster:
        kubeconfig = cluster.write_kubeconfig(workdir / "kubeconfig")
        say(f"  API server at {cluster.url}; kubeconfig {kubeconfig}")
        kube = ClusterClient(cluster.url)
        memcached_demo(kube, kubeconfig, workdir)
    preloader_demo(workdir)
    say(f"\nDone. Logs and files are in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
