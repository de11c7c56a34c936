"""`make bench-placement`: do predictor pods land on the warm nodes, and what does the webhook cost?

On the real control plane (kube-apiserver, the Deployment/ReplicaSet controllers, kube-scheduler,
the process kubelet) with 8 simulated GPU nodes (one GPU each), the operator as a local process
serving the placement webhook through the shipped configuration (devstack/placement_wiring.py),
and a ModelPrewarm made warm by the real preloader from moto's S3:

1. Placement: the predictor Deployment (KServe's labels and URI annotation, one GPU per pod) is
   scaled 0 -> 2 -> 4, with the ModelPrewarm at nodeCount 2 and then 4; after each step, how
   many of its pods are on warm nodes. Every round runs once with the webhook configured and
   once without it (the MutatingWebhookConfiguration deleted), in alternating order, on the same
   background load, `--rounds` rounds per nodeCount.
2. Admission latency: `--pods` predictor pod creates (sequential, client-side create latency,
   pods left Pending by a nodeSelector that matches nothing) with the webhook configured and as
   many without, in alternating blocks of 25; p50/p99 of each and the difference.

Two things would otherwise make the comparison meaningless (docs/prewarm.md, Placement):

- kube-scheduler v1.37 breaks a tie between equal scores by the order of its node list (the
  random tie-breaker is only drawn when scheduler extenders are configured), and 8 identical
  empty nodes always tie: without the webhook, pods fill gpu-1, gpu-2, ... in registration
  order, exactly the nodes the operator warms first (it picks the rest by name). So each round
  first binds a background pod to every node with a different CPU and memory request (a fresh
  shuffle per round, `--seed`), as other tenants' pods would: the scheduler's ranking then no
  longer follows the node names, and without the webhook the warm nodes are hit by chance.
- The ModelPrewarm an InferenceService gets follows where its predictor serves (it re-targets
  to the nodes the pods landed on), so without the webhook the warm set would move to the pods.
  The bench uses a platform ModelPrewarm (no `serving.serverless.xyz/inferenceservice` label),
  which keeps its nodes, and judges each pod against the warm set read just before the pods were
  created and again once they were bound; a node counts only if it was warm both times (a round
  where the set changed is flagged).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.measure import percentile
from controlplane.cluster import RealCluster
from devcluster.client import ApiError, ClusterClient
from devstack import placement_wiring as wiring
from devstack.local_s3 import create_credentials, moto_s3, upload_model
from devstack.metrics_stack import free_port
from devstack.operator_process import start_operator
from devstack.simulated_gpu_pool import GPU_LABELS, GPU_TAINTS, run_preloader_locally
from tests.controlplane_binaries import controlplane_bin

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench-placement"
ISVC = "torch-mnist"
URI = "s3://models/mnist"
PREWARM = "mnist-warm"  # a platform ModelPrewarm: it does not follow the predictor's pods
PREWARM_PATH = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NAMESPACE}/modelprewarms/{PREWARM}"
PODS_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
NODES = tuple(f"gpu-{i}" for i in range(1, 9))
LOAD_LABEL = "bench-placement/background-load"
#: Background requests per node, one step apart (CPU millicores, memory GiB, same fraction of the node):
#: far enough apart that no two nodes tie in NodeResourcesFit, small beside the webhook's weight-100 term.
LOAD_STEPS = tuple((500 * i, 2 * i) for i in range(len(NODES)))
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
T = TypeVar("T")


def wait(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.2)


def platform_prewarm(node_count: int) -> dict[str, Any]:
    """What an InferenceService with `serverless.xyz/prewarm-device: cpu` would get, without its label."""
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
            "metadata": {"name": PREWARM, "namespace": NAMESPACE},
            "spec": {"storageUri": URI, "nodeCount": node_count, "device": "cpu", "tolerations": TOLERATIONS,
                     "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}},
                     "serviceAccountName": "models-s3"}}


def warm_set(kube: ClusterClient) -> frozenset[str]:
    """The nodes the webhook would prefer now: Warm, holding the status's model version."""
    status = kube.get(PREWARM_PATH).get("status") or {}
    return frozenset(n["name"] for n in status.get("nodes") or []
                     if n.get("phase") == "Warm" and n.get("version") == status.get("modelVersion"))


def preloader_pods_running(kube: ClusterClient) -> bool:
    """A preloader Job still holds a node's GPU."""
    return any(p["metadata"]["name"].startswith(f"{PREWARM}-") and (p.get("status") or {}).get("phase")
               not in ("Succeeded", "Failed") for p in kube.list("/api/v1/namespaces/kserve-prewarm/pods"))


def wait_warm(kube: ClusterClient, count: int) -> frozenset[str]:
    def ready() -> frozenset[str]:
        warm = warm_set(kube)
        return warm if len(warm) >= count and not preloader_pods_running(kube) else frozenset()

    return wait(ready, 240, f"{count} warm nodes")


def all_predictor_pods(kube: ClusterClient) -> list[dict[str, Any]]:
    """Terminating ones included: they still hold their node's GPU."""
    return kube.list(PODS_PATH, label_selector=f"{wiring.ISVC_LABEL}={ISVC},component=predictor")


def scale(kube: ClusterClient, replicas: int) -> list[dict[str, Any]]:
    """Scale, then wait for `replicas` bound pods and no terminating ones."""
    kube.patch(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{ISVC}-predictor", {"spec": {"replicas": replicas}})

    def settled() -> tuple[list[dict[str, Any]], ...]:  # (pods,): true even when no pod is wanted
        pods = all_predictor_pods(kube)
        if len(pods) == replicas and all(p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
                                         for p in pods):
            return (pods,)
        return ()

    return wait(settled, 90, f"{replicas} predictor pods bound")[0]


def place_load(kube: ClusterClient, rng: random.Random, round_id: str) -> dict[str, int]:
    """One status-only pod bound to each node, the requests of LOAD_STEPS shuffled: node -> CPU millicores."""
    steps = list(LOAD_STEPS)
    rng.shuffle(steps)
    load = {}
    for node, (millicores, gib) in zip(NODES, steps, strict=True):
        load[node] = millicores
        if not millicores:
            continue
        kube.create(PODS_PATH, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"load-{round_id}-{node}", "labels": {LOAD_LABEL: "true"}},
            "spec": {"nodeName": node, "tolerations": TOLERATIONS, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "load", "image": "bench-placement/background-load:0",
                                     "resources": {"requests": {"cpu": f"{millicores}m", "memory": f"{gib}Gi"}}}]}})
    return load


def remove_load(kube: ClusterClient) -> None:
    for pod in kube.list(PODS_PATH, label_selector=LOAD_LABEL):
        try:
            kube.delete(f"{PODS_PATH}/{pod['metadata']['name']}")
        except ApiError as exc:
            if exc.status != 404:
                raise
    wait(lambda: not kube.list(PODS_PATH, label_selector=LOAD_LABEL), 60, "the background load gone")


@dataclasses.dataclass
class Step:
    """One scale step: pods on nodes warm before and after the bind, pods carrying the preference."""

    replicas: int
    on_warm: int
    preferred: int
    warm_changed: bool


def placement_round(kube: ClusterClient) -> list[Step]:
    """0 -> 2 -> 4: pods on warm nodes after each step."""
    scale(kube, 0)
    steps = []
    for replicas in (2, 4):
        before = warm_set(kube)
        pods = scale(kube, replicas)
        after = warm_set(kube)
        warm = before & after
        steps.append(Step(replicas, sum(p["spec"]["nodeName"] in warm for p in pods),
                          sum(wiring.PREFERRED_ANNOTATION in (p["metadata"].get("annotations") or {}) for p in pods),
                          before != after))
    scale(kube, 0)
    return steps


def latency_block(kube: ClusterClient, count: int, offset: int) -> tuple[list[float], list[str]]:
    seconds, names = [], []
    for index in range(offset, offset + count):
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"lat-{index}", "labels": {wiring.ISVC_LABEL: ISVC, "component": "predictor"},
                             "annotations": {wiring.SOURCE_URI_ANNOTATION: URI}},
                "spec": {"nodeSelector": {"bench-placement/nowhere": "true"},
                         "containers": [{"name": "c", "image": "kserve/torchserve-kfs:0.9.0"}]}}
        started = time.perf_counter()
        kube.create(PODS_PATH, body)
        seconds.append(time.perf_counter() - started)
        names.append(f"lat-{index}")
    return seconds, names


def configure(kube: ClusterClient, on: bool) -> None:
    wiring.set_webhook_configured(kube, on)
    if on:
        wait(lambda: wiring.ca_bundle_set(kube), 30, "the caBundle")
    time.sleep(1.5)  # the API server's webhook configuration informer catches up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="placement rounds per nodeCount (each: on and off)")
    parser.add_argument("--pods", type=int, default=200, help="pod creates per mode for the latency")
    parser.add_argument("--seed", type=int, default=15, help="the background load's shuffles")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pods < 1:
        parser.error("--rounds and --pods must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    cluster = RealCluster(controlplane_bin("bench-placement"), work / "cluster")
    cluster.start()
    try:
        cluster.install_manifests(extra_crds=sorted((ROOT / "tests/fixtures/crds").glob("*.yaml")))
        run_preloader_locally(cluster)
        kube = cluster.client("bench-placement")
        cluster.create_namespace(NAMESPACE, {"pod-security.kubernetes.io/enforce": "privileged"})
        for node in NODES:
            cluster.add_node(node, gpus=1, labels=GPU_LABELS, taints=GPU_TAINTS)
        with moto_s3() as s3:
            upload_model(s3, "mnist/model.safetensors", seed=1)
            create_credentials(kube, s3.endpoint, namespace=NAMESPACE)
            port = free_port()
            wiring.wire_webhook(kube, port)
            operator = start_operator(cluster.service_account_kubeconfig(work / "operator.kubeconfig"),
                                      work / "operator.log", env={"WEBHOOK_PORT": str(port), "RESYNC_SECONDS": "1"})
            try:
                wait(lambda: wiring.ca_bundle_set(kube), 30, "the caBundle")
                return run(kube, rounds=args.rounds, pods=args.pods, rng=random.Random(args.seed))
            finally:
                operator.stop()
    finally:
        cluster.stop()


def report(node_count: int, on: bool, rounds: Sequence[list[Step]]) -> None:
    parts = []
    for index, replicas in enumerate((2, 4)):
        on_warm = [r[index].on_warm for r in rounds]
        best = min(replicas, node_count)
        chance = replicas * node_count / len(NODES)
        parts.append(f"{replicas} replicas -> {statistics.mean(on_warm):.1f}/{replicas} on warm nodes "
                     f"(per round {on_warm}; at most {best}, by chance {chance:.1f})")
    preferred = sum(r[-1].preferred for r in rounds)  # the last step's pods include the first step's
    total = sum(r[-1].replicas for r in rounds)
    changed = sum(s.warm_changed for r in rounds for s in r)
    print(f"  nodeCount {node_count}, webhook {'on ' if on else 'off'}: {'; '.join(parts)}; "
          f"pods with the preference {preferred}/{total}" + (f"; WARM SET CHANGED in {changed} step(s)"
                                                             if changed else ""))


def run(kube: ClusterClient, *, rounds: int, pods: int, rng: random.Random) -> int:
    kube.create(f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NAMESPACE}/modelprewarms", platform_prewarm(2))
    kube.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
                wiring.predictor_deployment(NAMESPACE, ISVC, URI, 0))
    print(f"placement: pods on warm nodes after scaling 0 -> 2 -> 4 (8 GPU nodes, 1 GPU each, a different "
          f"background load per round), {rounds} rounds, each with the webhook on and off")
    for node_count in (2, 4):
        if node_count != 2:
            kube.patch(PREWARM_PATH, {"spec": {"nodeCount": node_count}})
        warm = wait_warm(kube, node_count)
        print(f" nodeCount {node_count}: warm {sorted(warm)}")
        results: dict[bool, list[list[Step]]] = {True: [], False: []}
        for index in range(rounds):
            load = place_load(kube, rng, f"{node_count}-{index}")
            ranked = sorted(NODES, key=lambda n: load[n])
            order = (True, False) if index % 2 == 0 else (False, True)
            for on in order:
                configure(kube, on)
                results[on].append(placement_round(kube))
            remove_load(kube)
            print(f"  round {index + 1}: least loaded first {ranked}; on {[s.on_warm for s in results[True][-1]]}, "
                  f"off {[s.on_warm for s in results[False][-1]]}")
        for on in (True, False):
            report(node_count, on, results[on])

    print(f"admission latency: {pods} predictor pod creates per mode, alternating blocks of 25")
    latencies: dict[bool, list[float]] = {True: [], False: []}
    created: dict[bool, list[str]] = {True: [], False: []}
    offset = 0
    while len(latencies[False]) < pods:
        for on in (True, False):
            configure(kube, on)
            block = min(25, pods - len(latencies[on]))
            seconds, names = latency_block(kube, block, offset)
            latencies[on] += seconds
            created[on] += names
            offset += block
    mutated = {p["metadata"]["name"] for p in kube.list(PODS_PATH)
               if wiring.PREFERRED_ANNOTATION in (p["metadata"].get("annotations") or {})}
    for on in (True, False):
        ms = [s * 1000 for s in latencies[on]]
        print(f"  webhook {'on ' if on else 'off'}: p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
              f"mean {statistics.mean(ms):.1f} ms (n={len(ms)}); "
              f"{len(mutated & set(created[on]))} carry the warm-node preference")
    added50 = percentile([s * 1000 for s in latencies[True]], 50) - percentile([s * 1000 for s in latencies[False]], 50)
    added99 = percentile([s * 1000 for s in latencies[True]], 99) - percentile([s * 1000 for s in latencies[False]], 99)
    print(f"  added by the webhook: p50 {added50:+.1f} ms, p99 {added99:+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
