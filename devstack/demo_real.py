"""`make demo-real`: the story of `make demo`, told on a real Kubernetes control plane.

1. Starts kube-apiserver, etcd, kube-controller-manager and kube-scheduler (v1.37, built from their
   Go modules by `make controlplane`; `--bin` is the folder it prints) and the process kubelet
   (simulated nodes: pods of registered images run as local processes, the others are reported
   Running and Ready without running).
2. Installs the manifests as a user does (`kubectl apply -k manifests/`: CRDs, namespace, RBAC,
   the operator's Deployment, its NetworkPolicy) plus the trimmed KServe and Istio CRDs of
   tests/fixtures/crds/ (a real cluster has KServe's and Istio's own); the operator's own
   Deployment is scaled to 0 and the operator runs here as a local process authenticated as its
   ServiceAccount, so the shipped ClusterRole is all it may do.
3. Runs the parts of `make demo` unchanged (devstack/demo.py, prewarm_demo.py, canary_demo.py):
   a Memcached scaled by the real Deployment controller; torch-mnist applied through the KServe
   SDK, its ModelPrewarm's Jobs made by the real Job controller, placed on two GPU nodes by the
   real scheduler and run as the real preloader against moto's S3 (device cpu: no CUDA here);
   a ModelCanary moving the weights of an Istio VirtualService stored by the real API server.
4. Prints, with the `kubectl` built alongside the control plane, `kubectl get prewarm,mcanary,mc -A`
   and `kubectl describe` of the ModelPrewarm.

Exits 0 when everything shown happened, 1 with the reason otherwise (2: no control plane).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
import traceback

from controlplane.build import BuildError, build, cache_root
from controlplane.cluster import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, RealCluster
from devstack import canary_demo, prewarm_demo
from devstack.demo import demo_world as shared_world
from devstack.demo import memcached_demo
from devstack.demo_world import NS, DemoFailed, say, say_lines

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: KServe's InferenceService and Istio's VirtualService, trimmed but structural (the tests' fixtures).
FOREIGN_CRDS = sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml"))
PARTS = ("memcached", "prewarm", "canary")
#: What prewarm_demo adds, and what the Memcached part needs first: on a real cluster pods need a node.
CPU_NODE = "cpu-1"


def controlplane_bin(given: pathlib.Path | None) -> pathlib.Path:
    """`--bin`, else `$CONTROLPLANE_BIN`, else what `make controlplane` builds (reused when built)."""
    if given is not None:
        return given
    configured = os.environ.get("CONTROLPLANE_BIN")
    if configured:
        return pathlib.Path(configured)
    return build(cache_root())


def start_cluster(bin_dir: pathlib.Path, workdir: pathlib.Path) -> RealCluster:
    """The control plane and the kubelet, the manifests installed as shipped; stopped on failure."""
    say(f"Starting a real Kubernetes control plane from {bin_dir} (kube-apiserver, etcd, "
        "kube-controller-manager, kube-scheduler; the process kubelet for nodes)...")
    cluster = RealCluster(bin_dir, workdir / "cluster").start()
    try:
        t = cluster.plane.timings
        version = cluster.kubectl("version", "-o", "yaml").stdout
        server = next((line.split(":", 1)[1].strip() for line in version.splitlines()
                       if line.strip().startswith("gitVersion:")), "?")
        say(f"  ready in {t.total:.1f} s (etcd {t.etcd:.1f} s, apiserver {t.apiserver:.1f} s, "
            f"controllers {t.controllers:.1f} s); API server at {cluster.url}, kubectl {server}")
        say("$ kubectl apply -k manifests/   (and the trimmed KServe and Istio CRDs of tests/fixtures/crds/)")
        started = time.monotonic()
        cluster.install_manifests(extra_crds=FOREIGN_CRDS)
        say(f"  installed in {time.monotonic() - started:.1f} s: CRDs Established; the operator's pod was admitted "
            f"under Pod Security 'restricted' in {OPERATOR_NAMESPACE}, then its Deployment scaled to 0 (the image "
            "cannot run under the process kubelet); the operator runs here as its ServiceAccount instead")
        cluster.add_node(CPU_NODE)
        say(f"  node {CPU_NODE} (no GPU) registered by the process kubelet")
        return cluster
    except BaseException:
        cluster.stop()
        raise


def show_kubectl(cluster: RealCluster, prewarm: str | None) -> None:
    """What a user sees at the end, from the real kubectl."""
    commands: list[tuple[str, ...]] = [("get", "prewarm,mcanary,mc", "-A")]
    if prewarm:
        commands.append(("describe", "prewarm", prewarm, "-n", NS))
    for args in commands:
        say(f"\n$ kubectl {' '.join(args)}")
        say_lines(cluster.kubectl(*args).stdout.rstrip().splitlines(), indent="")


def run(bin_dir: pathlib.Path, workdir: pathlib.Path, parts: set[str]) -> float | None:
    """The parts asked for (the canary's stable model is torch-mnist, so it runs the pre-warm part too);
    returns the end-to-end pre-warm time, when that part ran."""
    prewarm_seconds = None
    with contextlib.ExitStack() as stack:
        cluster = start_cluster(bin_dir, workdir)
        stack.callback(cluster.stop)
        operator_kubeconfig = cluster.service_account_kubeconfig(workdir / "operator.kubeconfig")
        say(f"  the operator's kubeconfig: a TokenRequest token of ServiceAccount "
            f"{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT} ({operator_kubeconfig})")
        with shared_world(workdir, cluster, operator_kubeconfig) as world:
            if "memcached" in parts:
                memcached_demo(world)
            if parts & {"prewarm", "canary"}:
                prewarm_seconds = prewarm_demo.run(world)
            if "canary" in parts:
                canary_demo.run(world)
            show_kubectl(cluster, "torch-mnist" if parts & {"prewarm", "canary"} else None)
    # Kept: the logs of every component, the pods' and the operator's. Not kept: etcd's data and the
    # nodes' model caches (over 100 MB).
    for bulky in (workdir / "cluster" / "controlplane" / "etcd", workdir / "cluster" / "kubelet" / "nodes"):
        shutil.rmtree(bulky, ignore_errors=True)
    return prewarm_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_real", description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=pathlib.Path, default=None,
                        help="the control plane's binaries (what `make controlplane` prints last; default "
                        "$CONTROLPLANE_BIN, else that build, reused when built)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, in this order: {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(parts - set(PARTS)))}")
    try:
        bin_dir = controlplane_bin(args.bin)
    except BuildError as exc:
        say(f"make demo-real needs the control plane's binaries: {exc}")
        return 2
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kserve-operator-demo-real-"))
    started = time.monotonic()
    try:
        prewarm_seconds = run(bin_dir, workdir, parts)
    except Exception as exc:  # whatever broke, the demo says so and exits non-zero
        if not isinstance(exc, DemoFailed):
            traceback.print_exc()
        say(f"\nThe demo FAILED: {exc if isinstance(exc, DemoFailed) else f'{type(exc).__name__}: {exc}'}")
        say(f"Logs and files are in {workdir} (the operator's log: {workdir / 'operator.log'}; the control plane's: "
            f"{workdir / 'cluster' / 'controlplane' / 'logs'})")
        return 1
    prewarm = f" (end-to-end pre-warm {prewarm_seconds:.1f} s)" if prewarm_seconds is not None else ""
    say(f"\nDone in {time.monotonic() - started:.0f} s on the real control plane{prewarm}. Logs and files are in "
        f"{workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
