"""What the domain metrics say about one ModelPrewarm or ModelCanary, read from its status (pure).

The gauges are the status's numbers as they stand (per-node load time and bytes, warm nodes,
the canary's share in force); the counters count transitions seen between two statuses of the
same object (a rollback, failed analysis checks). The caller keeps the last `CanaryMark` per
object; a first sighting (the operator just started) counts nothing, so a restart never
counts an old rollback again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kserve_operator.resources.canary_conditions import CanaryPhase

# Metric names, shared by the controller that owns the collectors and the tests.
PREWARM_LOAD_SECONDS = "kserve_operator_prewarm_load_seconds"
PREWARM_LOAD_BYTES = "kserve_operator_prewarm_load_bytes"
PREWARM_WARM_NODES = "kserve_operator_prewarm_warm_nodes"
PREWARM_DESIRED_NODES = "kserve_operator_prewarm_desired_nodes"
CANARY_WEIGHT = "kserve_operator_canary_weight_percent"
CANARY_ANALYSIS_FAILURES = "kserve_operator_canary_analysis_failures_total"
CANARY_ROLLBACKS = "kserve_operator_canary_rollbacks_total"

PREWARM_NODE_LABELS = ("namespace", "modelprewarm", "node")
PREWARM_LABELS = ("namespace", "modelprewarm", "model")
CANARY_LABELS = ("namespace", "modelcanary")

Labels = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One gauge value: the metric's name, its label values (in the metric's label order), the value."""

    metric: str
    labels: Labels
    value: float


@dataclasses.dataclass(frozen=True)
class CanaryMark:
    """What the counters compare the next status with."""

    phase: str | None
    failed_checks: int


@dataclasses.dataclass(frozen=True)
class CanaryCounts:
    mark: CanaryMark
    analysis_failures: int  # failed checks added since the last status
    rolled_back: bool  # the phase moved to RolledBack since the last status


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    """A JSON number as a float; anything else (absent, a string, a bool) is no sample."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def prewarm_samples(body: Mapping[str, Any]) -> list[Sample]:
    """Per node: how long its load took and how many bytes it moved; per model: warm and wanted nodes."""
    meta, status = _section(body, "metadata"), _section(body, "status")
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    model = str(status.get("storageUri") or _section(body, "spec").get("storageUri") or "")
    samples: list[Sample] = []
    for node in status.get("nodes") or []:
        if not isinstance(node, Mapping) or not node.get("name"):
            continue
        labels = (namespace, name, str(node["name"]))
        for metric, field in ((PREWARM_LOAD_SECONDS, "seconds"), (PREWARM_LOAD_BYTES, "bytes")):
            value = _number(node.get(field))
            if value is not None:
                samples.append(Sample(metric, labels, value))
    for metric, field in ((PREWARM_WARM_NODES, "warmNodes"), (PREWARM_DESIRED_NODES, "desiredNodes")):
        value = _number(status.get(field))
        if value is not None:
            samples.append(Sample(metric, (namespace, name, model), value))
    return samples


def canary_labels(body: Mapping[str, Any]) -> Labels:
    meta = _section(body, "metadata")
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def canary_samples(body: Mapping[str, Any]) -> list[Sample]:
    """The candidate's share in force (status.percent), once the controller has written one."""
    value = _number(_section(body, "status").get("percent"))
    return [Sample(CANARY_WEIGHT, canary_labels(body), value)] if value is not None else []


def canary_counts(previous: CanaryMark | None, body: Mapping[str, Any]) -> CanaryCounts:
    """Rollbacks and failed checks since `previous`; nothing on a first sighting."""
    status = _section(body, "status")
    failed = _number(_section(status, "analysis").get("failedChecks"))
    phase = status.get("phase")
    mark = CanaryMark(phase if isinstance(phase, str) else None, int(failed) if failed is not None else 0)
    if previous is None:
        return CanaryCounts(mark, 0, False)
    return CanaryCounts(
        mark,
        analysis_failures=max(mark.failed_checks - previous.failed_checks, 0),
        rolled_back=mark.phase == CanaryPhase.ROLLED_BACK and previous.phase != CanaryPhase.ROLLED_BACK,
    )
