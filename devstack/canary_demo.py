"""The canary part of `make demo`: a ModelCanary on an Istio-shaped VirtualService whose candidate
(torch-mnist-v2) is held at 0% while its model is cold (WaitingForModel), released the moment its
ModelPrewarm turns Warm (the real preloader warms it), stepped 0 -> 10 -> 50 (the 50% step waits,
WaitingForCapacity, until the candidate is warm on 3 nodes for the stable's 6 replicas: a third
GPU node joins and the ModelPrewarm, asked by the canary, warms it) while the built-in
checks pass (request-success-rate at least 99%, request-duration p99 at most 500 ms, read by the
operator from a real Prometheus), and rolled back automatically (Warning event, RolledBack,
weights 100/0) when the candidate starts answering 10% 503s before the last step.

The requests are described, not sent: an exporter (devstack/istio_metrics_exporter.py) serves
Istio's `istio_requests_total` and `istio_request_duration_milliseconds` for the predictor
Services as their sidecars would report them, and the real Prometheus scrapes it. Without
Prometheus installed the canary steps on its interval alone and the analysis and rollback are
skipped, and said so.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from devstack.demo_world import NS, DemoFailed, DemoWorld, EventLog, say, say_lines
from devstack.error_ratio_exporter import query
from devstack.istio_metrics_exporter import Traffic
from devstack.local_s3 import BUCKET, upload_model_directory
from devstack.mnist_virtualservice import virtual_service
from devstack.prewarm_demo import DEMO_ANNOTATIONS, follow_prewarm, node_figures
from devstack.simulated_gpu_pool import add_gpu_nodes
from devstack.torch_mnist_sdk import kserve_client, torch_mnist
from kserve_operator.planning.canary_checks import success_rate_query

MCANARIES = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelcanaries"
MCANARY_CRD = "modelcanaries.serving.serverless.xyz"
VIRTUAL_SERVICES = f"/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices"
CANARY = "mnist"
CANDIDATE = "torch-mnist-v2"
ROUTE = "predict"
INTERVAL = "4s"
WINDOW = "5s"  # the checks' rate window (the sample's is 1m): five of the demo Prometheus's 1 s scrapes
STABLE_TRAFFIC = Traffic(requests_per_second=90, error_ratio=0.0005, p99_ms=95)
HEALTHY, FAILING = Traffic(error_ratio=0.001, p99_ms=120), Traffic(error_ratio=0.1, p99_ms=120)
MIN_SUCCESS = 99.0
STEP_TIMEOUT = 30.0
STABLE_REPLICAS = 6
EXTRA_NODE = "gpu-3"
PODS = f"/api/v1/namespaces/{NS}/pods"
PREWARMS = f"/apis/serving.serverless.xyz/v1alpha1/namespaces/{NS}/modelprewarms"

Weights = tuple[tuple[str, int], ...]


def route_weights(vs: dict[str, Any]) -> Weights:
    """The managed route's destinations (short host) and weights."""
    route = next(r for r in vs["spec"]["http"] if r.get("name") == ROUTE)
    return tuple((d["destination"]["host"].split(".")[0], int(d.get("weight", 100))) for d in route["route"])


def weights_text(weights: Weights) -> str:
    return f"route {ROUTE}: " + " | ".join(f"{host} {weight}%" for host, weight in weights)


def candidate_weight(weights: Weights) -> int:
    return sum(weight for host, weight in weights if host == f"{CANDIDATE}-predictor")


def model_canary(with_analysis: bool) -> dict[str, Any]:
    """Like manifests/samples/modelcanary.yaml, with a demo-sized interval; with the analysis it aims
    at 100% (steps 10, 50, 100), so a check still runs after 50% and can roll back."""
    steps: dict[str, Any] = {"weights": [10, 50], "interval": INTERVAL}
    if with_analysis:
        steps["analysis"] = {"interval": WINDOW, "failureLimit": 2, "checks": [
            {"name": "request-success-rate", "min": MIN_SUCCESS}, {"name": "request-duration", "max": 500}]}
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelCanary",
            "metadata": {"name": CANARY, "namespace": NS},
            "spec": {"virtualService": {"name": "mnist"}, "routes": [ROUTE],
                     "stable": {"inferenceService": "torch-mnist"}, "candidate": {"inferenceService": CANDIDATE},
                     "percent": 100 if with_analysis else 50, "requireWarm": True, "steps": steps}}


class CanaryFollower:
    """Prints every change of the canary's phase/condition and of the route's weights, with the
    seconds since `started`; the last state is remembered across `until` calls."""

    def __init__(self, world: DemoWorld, started: float) -> None:
        self.world = world
        self.started = started
        self.last: tuple[Any, ...] | None = None

    def until(self, done: Callable[[dict[str, Any], Weights], bool], what: str,
              never: Callable[[dict[str, Any], Weights], str | None] | None = None) -> dict[str, Any]:
        """Until `done`; DemoFailed on `never` (a state the demo must not reach) or after STEP_TIMEOUT."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            canary = self.world.kube.get(f"{MCANARIES}/{CANARY}")
            weights = route_weights(self.world.kube.get(f"{VIRTUAL_SERVICES}/mnist"))
            status = canary.get("status") or {}
            progressing: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Progressing"), {})
            now = (status.get("phase"), progressing.get("reason"), progressing.get("message"), weights)
            if now != self.last:
                state = (f"{status['phase']} ({progressing.get('reason')}: {progressing.get('message')})"
                         if status.get("phase") else "(no status yet)")
                say(f"  +{time.monotonic() - self.started:4.1f}s  {weights_text(weights)}; "
                    f"ModelCanary {CANARY} {state}")
                self.last = now
            problem = never(canary, weights) if never else None
            if problem:
                raise DemoFailed(problem)
            if done(canary, weights):
                return canary
            time.sleep(0.05)
        raise DemoFailed(f"{what}: not seen within {STEP_TIMEOUT:g}s")


def phase_is(phase: str) -> Callable[[dict[str, Any], Weights], bool]:
    return lambda canary, _: (canary.get("status") or {}).get("phase") == phase


def untouched_apart_from_weights(original: dict[str, Any], live: dict[str, Any]) -> bool:
    """Everything but the managed route's destinations compared whole, and in that route the stable
    destination compared without its weight (the candidate one is the operator's addition)."""
    def comparable(vs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = copy.deepcopy(vs["spec"])
        route = next(r for r in spec["http"] if r.get("name") == ROUTE)
        stable = next(d for d in route.pop("route") if d["destination"]["host"].startswith("torch-mnist-predictor."))
        stable.pop("weight", None)
        return spec, stable
    return comparable(original) == comparable(live)


def success_rate(prometheus: str) -> float | None:
    """The candidate's success rate as the built-in check reads it (None: no data yet)."""
    result = query(prometheus, success_rate_query(NS, f"{CANDIDATE}-predictor", WINDOW))
    return float(result[0]["value"][1]) if result else None


def wait_for_success_rate(prometheus: str, reached: Callable[[float], bool], what: str) -> float:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        value = success_rate(prometheus)
        if value is not None and reached(value):
            return value
        time.sleep(0.2)
    raise DemoFailed(f"Prometheus never saw the candidate's success rate {what}")


def serve_stable(world: DemoWorld) -> None:
    """The stable serves with STABLE_REPLICAS predictor Pods (as KServe's Deployment would run them),
    so a step to w% waits until the candidate is warm on ceil(w% x STABLE_REPLICAS) nodes."""
    for i in range(STABLE_REPLICAS):
        name = f"torch-mnist-predictor-{i}"
        world.kube.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {
            "serving.kserve.io/inferenceservice": "torch-mnist", "component": "predictor"}},
            "spec": {"nodeName": f"gpu-{i % 2 + 1}", "containers": [{"name": "kserve-container",
                                                                      "image": "kserve/torchserve-kfs:0.9.0"}]}})
        world.kube.patch(f"{PODS}/{name}/status", {"status": {"phase": "Running"}})
    say(f"  the stable torch-mnist serves with {STABLE_REPLICAS} predictor Pods: a step to w% waits until the "
        f"candidate is warm on ceil(w% x {STABLE_REPLICAS}) nodes (10%: 1, 50%: 3)")


def run(world: DemoWorld) -> None:
    kube = world.kube
    analysis = world.istio_metrics is not None and world.prometheus_url is not None
    say("\nCanary: torch-mnist-v2 gets traffic only once its model is warm, stepped up on metrics.")
    original = kube.create(VIRTUAL_SERVICES, virtual_service())
    routes = [r.get("name", "(unnamed)") for r in original["spec"]["http"]]
    say(f"  VirtualService mnist (networking.istio.io/v1, written by the platform team): HTTP routes {routes}, "
        "with matches, retries, timeouts, headers, a mirror, a fault, a delegate; a TCP and a TLS route")
    say(f"  {weights_text(route_weights(original))}")
    size = upload_model_directory(world.s3, CANDIDATE, seed=2)
    client = kserve_client(world.kubeconfig)
    client.create(torch_mnist(name=CANDIDATE, storage_uri=f"s3://{BUCKET}/{CANDIDATE}", annotations={}))
    say(f"  InferenceService {CANDIDATE} created through the SDK (s3://{BUCKET}/{CANDIDATE}, {size / 1e6:.1f} MB), "
        "not opted in to pre-warming yet: its model is on no node")
    if analysis:
        assert world.istio_metrics is not None and world.prometheus_url is not None
        world.istio_metrics.traffic.update({"torch-mnist-predictor": STABLE_TRAFFIC, f"{CANDIDATE}-predictor": HEALTHY})
        rate = wait_for_success_rate(world.prometheus_url, lambda v: v >= MIN_SUCCESS, f"at {MIN_SUCCESS}% or more")
        say(f"  Prometheus ({world.prometheus_url}) scrapes Istio's request metrics of {CANDIDATE}-predictor "
            f"(istio_requests_total, istio_request_duration_milliseconds; reporter=destination): success rate "
            f"{rate:.1f}%, p99 {HEALTHY.p99_ms:g} ms. Checks: request-success-rate >= {MIN_SUCCESS:g}, "
            "request-duration <= 500 ms; 2 failed passes in a row roll back")
    else:
        say("  Prometheus is not installed (apt-get install prometheus): the canary steps on its interval "
            "alone; the analysis and the automatic rollback are skipped")

    serve_stable(world)
    body = model_canary(analysis)
    say(f"\nApplying ModelCanary {CANARY}: {body['spec']['percent']}% wanted, requireWarm, steps "
        f"{body['spec']['steps']['weights']} every {INTERVAL}" + (" with the analysis" if analysis else ""))
    follow = CanaryFollower(world, time.monotonic())
    kube.create(MCANARIES, body)
    follow.until(phase_is("WaitingForModel"), "phase WaitingForModel")
    if kube.get(f"{VIRTUAL_SERVICES}/mnist")["metadata"]["resourceVersion"] != original["metadata"]["resourceVersion"]:
        raise DemoFailed("the VirtualService was written while the candidate's model was cold")
    say("  the VirtualService is not written while the model is cold")
    say("$ kubectl get mcanary")
    say_lines(world.kubectl_get(MCANARY_CRD, MCANARIES))

    say(f"\nThe data scientist opts {CANDIDATE} in to pre-warming (KServeClient.replace with the annotation; "
        "seconds from here on):")
    warming = follow.started = time.monotonic()
    client.replace(CANDIDATE, torch_mnist(name=CANDIDATE, storage_uri=f"s3://{BUCKET}/{CANDIDATE}",
                                          annotations=DEMO_ANNOTATIONS))
    warm = follow_prewarm(kube, CANDIDATE, warming)
    say_lines(node_figures(n) for n in warm["status"]["nodes"])
    say("  ...and the canary is released at once, then steps:")
    top = 50
    follow.until(phase_is("WaitingForCapacity"), "phase WaitingForCapacity",
                 never=lambda _, w: f"{CANDIDATE} past 10% warm on 2 nodes" if candidate_weight(w) > 10 else None)
    prewarm = kube.get(f"{PREWARMS}/{CANDIDATE}")
    demand = prewarm["status"]
    say(f"  ModelPrewarm {CANDIDATE} keeps {demand['desiredNodes']} nodes warm for the canary (its nodeCount is "
        f"{prewarm['spec']['nodeCount']}; status.capacityDemand from {demand['capacityDemand']['from']}), but only "
        f"{demand['qualifyingNodes']} GPU nodes qualify")
    say(f"\nA third GPU node, {EXTRA_NODE}, joins the pool: the ModelPrewarm warms it, and the step is taken:")
    add_gpu_nodes(world.cluster, EXTRA_NODE)
    follow.until(lambda _, w: candidate_weight(w) == top, f"{CANDIDATE} at {top}%",
                 never=lambda _, w: f"{CANDIDATE} went past {top}%" if candidate_weight(w) > top else None)
    warm = kube.get(f"{PREWARMS}/{CANDIDATE}")["status"]
    say(f"  ModelPrewarm {CANDIDATE}: warm {warm['warm']} "
        f"({', '.join(n['name'] + ' ' + n['phase'] for n in warm['nodes'])})")
    if analysis:
        assert world.istio_metrics is not None and world.prometheus_url is not None
        world.istio_metrics.traffic[f"{CANDIDATE}-predictor"] = FAILING
        rate = wait_for_success_rate(world.prometheus_url, lambda v: v < MIN_SUCCESS, f"under {MIN_SUCCESS}%")
        say(f"\nAt 50% the candidate starts answering {FAILING.error_ratio:.0%} of requests with 503 (success rate "
            f"{rate:.1f}% and falling, under {MIN_SUCCESS:g}); the check before the next step fails:")
        follow.until(lambda c, w: phase_is("RolledBack")(c, w) and candidate_weight(w) == 0,
                     "the automatic rollback",
                     never=lambda _, w: "promoted despite a failing analysis" if candidate_weight(w) > top else None)
    else:
        follow.until(phase_is("Active"), "phase Active")

    live = kube.get(f"{VIRTUAL_SERVICES}/mnist")
    if not untouched_apart_from_weights(original, live):
        raise DemoFailed("the VirtualService changed beyond the managed route's weights")
    say("  the VirtualService is otherwise exactly as written: every other route, match, retry, timeout, header, "
        "mirror and fault compared whole")
    EventLog(kube).print_new("ModelCanary", CANARY)
    say("$ kubectl get mcanary")
    say_lines(world.kubectl_get(MCANARY_CRD, MCANARIES))
