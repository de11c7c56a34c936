"""Domain metrics on /metrics, read from the ModelPrewarm and ModelCanary statuses as they change.

Watch-event handlers only: no API calls, no writes, nothing in the controllers that write
those statuses. Gauges follow the status (pre-warm load seconds and bytes per node, warm and
wanted nodes per model, the canary's share in force); counters count the transitions seen
(rollbacks, failed analysis checks). A deleted object's series go with it, and so do series
its status no longer carries (a node dropped, a new storageUri).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import prometheus_client

from kserve_operator import observability
from kserve_operator.controllers.core import ObjectKey
from kserve_operator.planning import domain_metrics as dm
from kserve_operator.resources.kinds import MODEL_CANARY, MODEL_PREWARM

DELETED = "DELETED"


class DomainMetrics:
    """The collectors and what each object last contributed to them."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> prometheus_client.Gauge:
            return prometheus_client.Gauge(name, doc, list(labels), registry=registry)

        self.gauges = {
            dm.PREWARM_LOAD_SECONDS: gauge(dm.PREWARM_LOAD_SECONDS, "Seconds one node's pre-warm load took.",
                                           dm.PREWARM_NODE_LABELS),
            dm.PREWARM_LOAD_BYTES: gauge(dm.PREWARM_LOAD_BYTES, "Bytes one node's pre-warm load moved.",
                                         dm.PREWARM_NODE_LABELS),
            dm.PREWARM_WARM_NODES: gauge(dm.PREWARM_WARM_NODES, "Nodes that hold the model warm.",
                                         dm.PREWARM_LABELS),
            dm.PREWARM_DESIRED_NODES: gauge(dm.PREWARM_DESIRED_NODES, "Nodes that should hold the model warm.",
                                            dm.PREWARM_LABELS),
            dm.CANARY_WEIGHT: gauge(dm.CANARY_WEIGHT, "The candidate's share of the traffic in force, percent.",
                                    dm.CANARY_LABELS),
        }
        # prometheus_client appends _total to a counter's name itself.
        self.analysis_failures = prometheus_client.Counter(
            dm.CANARY_ANALYSIS_FAILURES.removesuffix("_total"), "Failed canary analysis checks.",
            list(dm.CANARY_LABELS), registry=registry)
        self.rollbacks = prometheus_client.Counter(
            dm.CANARY_ROLLBACKS.removesuffix("_total"), "Canaries rolled back after failed analysis.",
            list(dm.CANARY_LABELS), registry=registry)
        self._series: dict[tuple[str, ObjectKey], set[tuple[str, dm.Labels]]] = {}
        self._marks: dict[ObjectKey, dm.CanaryMark] = {}

    def _set(self, kind: str, key: ObjectKey, samples: Iterable[dm.Sample]) -> None:
        """Set these samples and remove the series the object contributed before but not now."""
        now = set()
        for sample in samples:
            self.gauges[sample.metric].labels(*sample.labels).set(sample.value)
            now.add((sample.metric, sample.labels))
        for metric, labels in self._series.get((kind, key), set()) - now:
            self.gauges[metric].remove(*labels)
        if now:
            self._series[(kind, key)] = now
        else:
            self._series.pop((kind, key), None)

    def observe_prewarm(self, event: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        self._set(MODEL_PREWARM.kind, key, [] if event == DELETED else dm.prewarm_samples(body))

    def observe_canary(self, event: str | None, body: Mapping[str, Any]) -> None:
        key = _key(body)
        if event == DELETED:
            self._set(MODEL_CANARY.kind, key, [])
            if self._marks.pop(key, None) is not None:
                for counter in (self.analysis_failures, self.rollbacks):
                    with contextlib.suppress(KeyError):  # never incremented: no series
                        counter.remove(*dm.canary_labels(body))
            return
        self._set(MODEL_CANARY.kind, key, dm.canary_samples(body))
        counts = dm.canary_counts(self._marks.get(key), body)
        self._marks[key] = counts.mark
        labels = dm.canary_labels(body)
        if counts.analysis_failures:
            self.analysis_failures.labels(*labels).inc(counts.analysis_failures)
        if counts.rolled_back:
            self.rollbacks.labels(*labels).inc()


def _key(body: Mapping[str, Any]) -> ObjectKey:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


METRICS = DomainMetrics(observability.REGISTRY)  # served on the operator's /metrics


def register(registry: kopf.OperatorRegistry, metrics: DomainMetrics = METRICS) -> None:
    """Watch both kinds; each event updates the collectors (no API work, nothing written)."""

    async def prewarm_metrics(body: kopf.Body, type: str | None, **_: Any) -> None:
        metrics.observe_prewarm(type, body)

    async def canary_metrics(body: kopf.Body, type: str | None, **_: Any) -> None:
        metrics.observe_canary(type, body)

    kopf.on.event(MODEL_PREWARM.group, MODEL_PREWARM.version, MODEL_PREWARM.plural,
                  registry=registry)(prewarm_metrics)
    kopf.on.event(MODEL_CANARY.group, MODEL_CANARY.version, MODEL_CANARY.plural,
                  registry=registry)(canary_metrics)
