"""`make bench-placement`: do predictor pods land on the warm nodes, and what does the webhook cost?

On the real control plane (kube-apiserver, the Deployment/ReplicaSet controllers, kube-scheduler,
the process kubelet) with 8 simulated GPU nodes (one GPU each), the operator as a local process
serving the placement webhook through the shipped configuration (devstack/placement_wiring.py),
and a ModelPrewarm made warm by the real preloader from moto's S3:

1. Placement: the predictor Deployment (KServe's labels and URI annotation, one GPU per pod) is
   scaled 0 -> 2 -> 4, with the ModelPrewarm at nodeCount 2 and then 4; after each step, how
   many of its pods are on warm nodes. Each round runs with the webhook configured and without
   it (the MutatingWebhookConfiguration deleted), alternately, `--rounds` times each.
2. Admission latency: `--pods` predictor pod creates (sequential, client-side create latency,
   pods left Pending by a nodeSelector that matches nothing) with the webhook configured and as
   many without, in alternating blocks of 25; p50/p99 of each and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.measure import percentile
from controlplane.cluster import RealCluster
from devcluster.client import ClusterClient
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


def warm_nodes(kube: ClusterClient, count: int) -> list[str]:
    path = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NAMESPACE}/modelprewarms/{ISVC}"

    def warm() -> list[str]:
        if not kube.exists(path):
            return []
        status = kube.get(path).get("status") or {}
        nodes = sorted(n.get("hostname") or n["name"] for n in status.get("nodes") or []
                       if n.get("phase") == "Warm" and n.get("version") == status.get("modelVersion"))
        return nodes if len(nodes) >= count else []

    return wait(warm, 240, f"{count} warm nodes")


def scale(kube: ClusterClient, replicas: int) -> list[dict[str, Any]]:
    kube.patch(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{ISVC}-predictor", {"spec": {"replicas": replicas}})

    def settled() -> list[dict[str, Any]]:
        pods = wiring.predictor_pods(kube, NAMESPACE, ISVC)
        if len(pods) == replicas and all(p["spec"].get("nodeName") for p in pods):
            return pods or [{}]
        return []

    pods = wait(settled, 90, f"{replicas} predictor pods bound")
    return [p for p in pods if p]


def placement_round(kube: ClusterClient, warm: list[str]) -> list[int]:
    """0 -> 2 -> 4: pods on warm nodes after each step."""
    scale(kube, 0)
    on_warm = []
    for replicas in (2, 4):
        pods = scale(kube, replicas)
        on_warm.append(sum(p["spec"]["nodeName"] in warm for p in pods))
    scale(kube, 0)
    return on_warm


def latency_block(kube: ClusterClient, count: int, offset: int) -> list[float]:
    seconds = []
    for index in range(offset, offset + count):
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"lat-{index}", "labels": {wiring.ISVC_LABEL: ISVC, "component": "predictor"},
                             "annotations": {wiring.SOURCE_URI_ANNOTATION: URI}},
                "spec": {"nodeSelector": {"bench-placement/nowhere": "true"},
                         "containers": [{"name": "c", "image": "kserve/torchserve-kfs:0.9.0"}]}}
        started = time.perf_counter()
        kube.create(f"/api/v1/namespaces/{NAMESPACE}/pods", body)
        seconds.append(time.perf_counter() - started)
    return seconds


def configure(kube: ClusterClient, on: bool) -> None:
    wiring.set_webhook_configured(kube, on)
    if on:
        wait(lambda: wiring.ca_bundle_set(kube), 30, "the caBundle")
    time.sleep(1.5)  # the API server's webhook configuration informer catches up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="placement rounds per nodeCount and mode")
    parser.add_argument("--pods", type=int, default=200, help="pod creates per mode for the latency")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    cluster = RealCluster(controlplane_bin("bench-placement"), work / "cluster")
    cluster.start()
    try:
        cluster.install_manifests(extra_crds=sorted((ROOT / "tests/fixtures/crds").glob("*.yaml")))
        run_preloader_locally(cluster)
        kube = cluster.client("bench-placement")
        cluster.create_namespace(NAMESPACE, {"pod-security.kubernetes.io/enforce": "privileged"})
        for i in range(1, 9):
            cluster.add_node(f"gpu-{i}", gpus=1, labels=GPU_LABELS, taints=GPU_TAINTS)
        with moto_s3() as s3:
            upload_model(s3, "mnist/model.safetensors", seed=1)
            create_credentials(kube, s3.endpoint, namespace=NAMESPACE)
            port = free_port()
            wiring.wire_webhook(kube, port)
            operator = start_operator(cluster.service_account_kubeconfig(work / "operator.kubeconfig"),
                                      work / "operator.log", env={"WEBHOOK_PORT": str(port), "RESYNC_SECONDS": "1"})
            try:
                wait(lambda: wiring.ca_bundle_set(kube), 30, "the caBundle")
                return run(kube, rounds=args.rounds, pods=args.pods)
            finally:
                operator.stop()
    finally:
        cluster.stop()


def run(kube: ClusterClient, *, rounds: int, pods: int) -> int:
    from tests.realcluster.test_placement_real import inference_service

    kube.create(f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices",
                inference_service(NAMESPACE))
    kube.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
                wiring.predictor_deployment(NAMESPACE, ISVC, URI, 0))
    print(f"placement: pods on warm nodes after scaling 0 -> 2 -> 4 (8 GPU nodes, 1 GPU each), {rounds} rounds")
    for node_count in (2, 4):
        if node_count != 2:
            kube.patch(f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices/{ISVC}",
                       {"metadata": {"annotations": {"serverless.xyz/prewarm-nodes": str(node_count)}}})
        warm = warm_nodes(kube, node_count)
        results: dict[bool, list[list[int]]] = {True: [], False: []}
        for _ in range(rounds):
            for on in (True, False):
                configure(kube, on)
                results[on].append(placement_round(kube, warm))
        for on in (True, False):
            at2 = [r[0] for r in results[on]]
            at4 = [r[1] for r in results[on]]
            print(f"  nodeCount {node_count}, webhook {'on ' if on else 'off'}: "
                  f"2 replicas -> {statistics.mean(at2):.2f}/2 on warm nodes (min {min(at2)}, max {max(at2)}); "
                  f"4 replicas -> {statistics.mean(at4):.2f}/4 (min {min(at4)}, max {max(at4)}); "
                  f"rounds {[tuple(r) for r in results[on]]}")

    print(f"admission latency: {pods} predictor pod creates per mode, alternating blocks of 25")
    latencies: dict[bool, list[float]] = {True: [], False: []}
    offset = 0
    while len(latencies[False]) < pods:
        for on in (True, False):
            configure(kube, on)
            block = min(25, pods - len(latencies[on]))
            latencies[on] += latency_block(kube, block, offset)
            offset += block
    mutated = [p for p in kube.list(f"/api/v1/namespaces/{NAMESPACE}/pods")
               if p["metadata"]["name"].startswith("lat-")
               and wiring.PREFERRED_ANNOTATION in (p["metadata"].get("annotations") or {})]
    for on in (True, False):
        ms = [s * 1000 for s in latencies[on]]
        print(f"  webhook {'on ' if on else 'off'}: p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
              f"mean {statistics.mean(ms):.1f} ms (n={len(ms)})")
    added50 = percentile([s * 1000 for s in latencies[True]], 50) - percentile([s * 1000 for s in latencies[False]], 50)
    added99 = percentile([s * 1000 for s in latencies[True]], 99) - percentile([s * 1000 for s in latencies[False]], 99)
    print(f"  added by the webhook: p50 {added50:+.1f} ms, p99 {added99:+.1f} ms; "
          f"{len(mutated)} of the {pods} pods created with it carry the warm-node preference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
