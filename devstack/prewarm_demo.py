"""The pre-warm part of `make demo`: torch-mnist applied through the KServe SDK, its ModelPrewarm
going Pending -> Warming -> Warm on two simulated GPU nodes, each node's Job running the real
preloader (`python -m preloader`, cpu device: this machine has no CUDA) against moto's S3, the
preloader's own figures in the status, and a platform team warming the same model directly."""

from __future__ import annotations

import time
from typing import Any

from devcluster import ApiError, ClusterClient
from devstack.demo_world import NS, DemoFailed, DemoWorld, EventLog, say, say_lines, wait_until
from devstack.local_s3 import BUCKET, create_credentials, upload_model_directory
from devstack.simulated_gpu_pool import GPU_LABELS, PRELOADER_IMAGE, add_gpu_nodes, run_preloader_locally
from devstack.torch_mnist_sdk import kserve_client, torch_mnist

PREWARMS = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"
PREWARM_CRD = "modelprewarms.serving.serverless.xyz"
JOB_NS = "kserve-prewarm"  # the operator's PREWARM_NAMESPACE: every preloader Job runs there
JOBS = f"/apis/batch/v1/namespaces/{JOB_NS}/jobs"
PODS = f"/api/v1/namespaces/{JOB_NS}/pods"
GPU_NODES = ("gpu-1", "gpu-2")
# The sample warms max(1, minReplicas) = 1 node on CUDA; the demo asks for two nodes, on the CPU.
DEMO_ANNOTATIONS = {"serverless.xyz/prewarm": "true", "serverless.xyz/prewarm-nodes": "2",
                    "serverless.xyz/prewarm-device": "cpu"}
WARM_TIMEOUT = 90.0


def _mb(value: Any) -> str:
    return f"{int(value) / 1e6:.1f} MB"


def node_figures(node: dict[str, Any]) -> str:
    """One node of `status.nodes` in words: the preloader's figures, or its error."""
    if node.get("phase") != "Warm":
        return f"{node['name']}: {node.get('phase')} {node.get('reason', '')} {node.get('message', '')}".rstrip()
    return (f"{node['name']}: Warm, {_mb(node['bytes'])} in {node.get('files', '?')} file(s), "
            f"{node['seconds']:.2f} s, {node['gbps']:.3f} GB/s, device {node['device']}, cache {node['cache']}")


def follow_prewarm(kube: ClusterClient, name: str, started: float, timeout: float = WARM_TIMEOUT) -> dict[str, Any]:
    """Print every change of the ModelPrewarm's phase and of its nodes' phases, with the seconds
    since `started`, until it is Warm; DemoFailed if it fails or takes longer than `timeout`."""
    last: tuple[Any, ...] | None = None
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            prewarm = kube.get(f"{PREWARMS}/{name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            time.sleep(0.05)
            continue
        status = prewarm.get("status") or {}
        nodes = status.get("nodes") or []
        now = (status.get("phase"), tuple((n["name"], n.get("phase")) for n in nodes))
        if now != last:
            if last is None:
                owner = (prewarm["metadata"].get("ownerReferences") or [{}])[0]
                by = f", owned by {owner['kind']} {owner['name']}" if owner else ""
                say(f"  +{time.monotonic() - started:4.1f}s  ModelPrewarm {name} exists{by}: "
                    f"{prewarm['spec']['storageUri']} on {prewarm['spec']['nodeCount']} node(s)")
            per_node = ", ".join(f"{node} {phase}" for node, phase in now[1])
            say(f"  +{time.monotonic() - started:4.1f}s  phase {now[0] or '(no status yet)'}"
                + (f"; nodes: {per_node}" if per_node else ""))
            last = now
        if status.get("phase") == "Warm":
            return prewarm
        if status.get("phase") == "Failed":
            ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            raise DemoFailed(f"ModelPrewarm {name} failed: {ready.get('message', status)}")
        time.sleep(0.05)
    raise DemoFailed(f"ModelPrewarm {name} was not Warm within {timeout:g}s")


def describe_jobs(world: DemoWorld, prewarm: str) -> None:
    """What the operator ran: one pinned Job per node, and the first lines of the preloader's log."""
    jobs = world.kube.list(JOBS, label_selector=f"serving.serverless.xyz/prewarm-namespace={NS},"
                                                f"serving.serverless.xyz/modelprewarm={prewarm}")
    for job in sorted(jobs, key=lambda j: str(j["metadata"]["name"])):
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        secrets = sorted({e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                          if "secretKeyRef" in (e.get("valueFrom") or {})})
        cache = next(v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v)
        say(f"  Job {JOB_NS}/{job['metadata']['name']}: pinned to {pod['nodeSelector']['kubernetes.io/hostname']}, "
            f"image {container['image']}, args {' '.join(container['args'])}")
        say(f"    limits {container['resources'].get('limits')}, cache hostPath {cache}, "
            f"S3 keys from Secret {', '.join(secrets)} (the tenant's values copied beside the Jobs while they run, "
            "owned by them, deleted once they finished)")
    first = min(jobs, key=lambda j: str(j["metadata"]["name"]))
    pods = world.kube.list(PODS, label_selector=f"batch.kubernetes.io/job-name={first['metadata']['name']}")
    log = world.cluster.pod_log(JOB_NS, pods[0]["metadata"]["name"]) if pods else None
    if log:
        say(f"  the preloader's log in pod {pods[0]['metadata']['name']}:")
        say_lines([f"| {line}" for line in log.splitlines() if not line.startswith("{")][:3], indent="    ")


def platform_team_prewarm(world: DemoWorld) -> None:
    """The other way in: a ModelPrewarm for a GPU pool, no InferenceService; the nodes' caches hit."""
    say("\nA platform team warms the same model on the GPU pool directly (a ModelPrewarm, no InferenceService):")
    started = time.monotonic()
    world.kube.create(PREWARMS, {
        "apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
        "metadata": {"name": "mnist-gpu-pool", "namespace": NS},
        "spec": {"storageUri": f"s3://{BUCKET}/mnist", "nodeCount": 2, "nodeSelector": dict(GPU_LABELS),
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}, "serviceAccountName": "models-s3",
                 "device": "cpu"}})
    warm = follow_prewarm(world.kube, "mnist-gpu-pool", started)
    say_lines(node_figures(n) for n in warm["status"]["nodes"])


def run(world: DemoWorld) -> float:
    """The pre-warm part; returns the end-to-end pre-warm time (apply -> Warm) in seconds."""
    kube = world.kube
    say("\nPre-warm: a data scientist applies torch-mnist; the operator warms its model on two GPU nodes.")
    add_gpu_nodes(world.cluster, *GPU_NODES)
    if not kube.exists("/api/v1/nodes/cpu-1"):  # on the real control plane the Memcached part needs it first
        world.cluster.add_node("cpu-1")
    run_preloader_locally(world.cluster)
    say(f"  nodes: {', '.join(GPU_NODES)} (1 nvidia.com/gpu each, tainted nvidia.com/gpu=present:NoSchedule) "
        "and cpu-1 (no GPU)")
    say(f"  image {PRELOADER_IMAGE} runs as `python -m preloader` on the simulated nodes (device cpu: no CUDA here)")
    size = upload_model_directory(world.s3, "mnist", seed=0)
    say(f"  S3 (moto's server at {world.s3.url}): s3://{BUCKET}/mnist/ holds model.safetensors + config.json, "
        f"{_mb(size)} (an MNIST MLP's weights)")
    create_credentials(kube, world.s3.endpoint)
    say("  credentials the KServe way: Secret models-s3-keys (awsAccessKeyID, awsSecretAccessKey, "
        "serving.kserve.io/s3-endpoint) listed by ServiceAccount models-s3")

    client = kserve_client(world.kubeconfig)
    isvc = torch_mnist(annotations=DEMO_ANNOTATIONS)
    say("\nKServeClient.create(V1beta1InferenceService(torch-mnist)): manifests/samples/torch-mnist.yaml "
        "through the KServe SDK, annotated prewarm-nodes: 2, prewarm-device: cpu")
    started = time.monotonic()
    client.create(isvc)
    warm = follow_prewarm(kube, "torch-mnist", started)
    elapsed = time.monotonic() - started
    say(f"  end-to-end pre-warm: InferenceService applied -> Warm on {warm['status']['warmNodes']} nodes "
        f"in {elapsed:.1f} s")
    say("  the preloader's figures, per node (status.nodes):")
    say_lines(node_figures(n) for n in warm["status"]["nodes"])
    say(f"  qualifying nodes: {warm['status'].get('qualifyingNodes')} of 3 (cpu-1 has no GPU)")
    describe_jobs(world, "torch-mnist")
    events = EventLog(kube)
    wait_until("the ModelWarm event on the InferenceService",
               lambda: "ModelWarm" in events.reasons("InferenceService", "torch-mnist"), timeout=10)
    events.print_new("InferenceService", "torch-mnist")

    platform_team_prewarm(world)
    say("\n$ kubectl get prewarm")
    say_lines(world.kubectl_get(PREWARM_CRD, PREWARMS))
    return elapsed
