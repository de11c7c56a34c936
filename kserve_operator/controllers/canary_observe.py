"""What a ModelCanary's reconcile observes besides its routing object: how warm the candidate's model
is, the capacity a step needs, and the analysis checks (Prometheus). Split from controllers/canary.py;
reads only (from the informers' caches and Prometheus), never raises on Prometheus' answers."""

from __future__ import annotations

import asyncio

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.errors import MetricsUnavailable, NoSamples
from kserve_operator.planning.canary import WarmState
from kserve_operator.planning.canary_checks import AnalysisResult, CheckReading, check_queries, judge
from kserve_operator.planning.canary_gates import warm_state
from kserve_operator.planning.warm_capacity import Capacity
from kserve_operator.resources.canary import CanarySpec
from kserve_operator.resources.kinds import MODEL_PREWARM, POD
from kserve_operator.resources.prewarm import LABEL_COMPONENT, LABEL_ISVC, PREDICTOR


async def observe_warm(api: KubeApi, spec: CanarySpec) -> WarmState:
    """The candidate's ModelPrewarm as `requireWarm` reads it."""
    assert spec.model_prewarm is not None  # parse_spec guarantees one when requireWarm is set
    prewarm = await api.get(MODEL_PREWARM, spec.model_prewarm, spec.namespace)
    return warm_state(prewarm, f"ModelPrewarm {spec.namespace}/{spec.model_prewarm}")


async def observe_capacity(api: KubeApi, spec: CanarySpec, warm: WarmState) -> Capacity:
    """The candidate's warm nodes and the stable's serving replicas (its predictor Pods running, from
    the predictor Pod informer: no request); a stable that is not an InferenceService counts 0."""
    replicas = 0
    if spec.stable.inference_service:
        pods = await api.list(POD, spec.namespace, label_selector=f"{LABEL_ISVC}={spec.stable.inference_service},"
                                                                f"{LABEL_COMPONENT}={PREDICTOR}")
        replicas = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running"
                       and not (p.get("metadata") or {}).get("deletionTimestamp"))
    return Capacity(warm_nodes=warm.nodes, stable_replicas=replicas)


async def _read_check(prometheus: PrometheusClient | None, query: str) -> CheckReading:
    if prometheus is None:
        return CheckReading(error="PROMETHEUS_URL is not set")
    try:
        return CheckReading(value=await prometheus.query_scalar(query))
    except NoSamples as exc:
        return CheckReading(error=str(exc), no_data=True)
    except MetricsUnavailable as exc:
        return CheckReading(error=str(exc))


async def analyse(prometheus: PrometheusClient | None, spec: CanarySpec) -> AnalysisResult:
    """Every check of the analysis, queried together; none raises (an error is an inconclusive check)."""
    queries = check_queries(spec)
    readings = await asyncio.gather(*(_read_check(prometheus, query) for _, query in queries))
    return judge([check for check, _ in queries], readings)
