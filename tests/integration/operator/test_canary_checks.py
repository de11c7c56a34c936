"""The built-in checks end to end: a real Prometheus (Debian package) scraping Istio-shaped series
(devstack/istio_metrics_exporter.py: `istio_requests_total` and
`istio_request_duration_milliseconds` as a destination sidecar reports them), the real operator
process, and ModelCanaries whose analysis lists only `request-success-rate` and
`request-duration` with their default bounds (99%, 500 ms).

Four candidates, each behind its own VirtualService: one that serves well (99.9% success, p99
120 ms) steps 10 -> 50 -> 100; one answering 10% 503s and one with a p99 of 2 s are rolled back to
0% after failureLimit failed passes; one with no traffic at all is held at 10% (NoData), with one
Warning event. The stable Service serves badly throughout: the checks read the candidate's
series only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack import metrics_stack
from devstack.error_ratio_exporter import query
from devstack.istio_metrics_exporter import IstioMetricsExporter, Traffic
from kserve_operator.planning.canary_checks import success_rate_query
from tests.integration.operator.canary_world import (
    ISVC,
    MCANARY,
    NS,
    condition,
    events_for,
    events_until,
    inference_service,
    model_canary,
    virtual_service,
    vs_path,
    wait_phase,
    weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration

if not metrics_stack.have_binaries():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the real-metrics tests: .ci/run installs memcached and prometheus")
    pytest.skip("prometheus not installed (apt-get install prometheus)", allow_module_level=True)

WINDOW = "5s"  # the checks' rate window: five 1 s scrapes
TRAFFIC = {
    "torch-mnist-predictor": Traffic(error_ratio=0.3, p99_ms=4000),  # stable: bad, and never measured
    "good-predictor": Traffic(error_ratio=0.001, p99_ms=120),
    "errors-predictor": Traffic(error_ratio=0.1, p99_ms=120),
    "slow-predictor": Traffic(error_ratio=0.0, p99_ms=2000),
}  # quiet-predictor: no traffic, no series


@contextlib.contextmanager
def istio_metrics() -> Iterator[str]:
    exporter = IstioMetricsExporter(NS)
    exporter.traffic.update(TRAFFIC)
    try:
        with metrics_stack.prometheus_server({exporter.port: {}}) as prometheus:
            deadline = time.monotonic() + 30
            promql = success_rate_query(NS, "good-predictor", WINDOW)
            while not query(prometheus, promql):  # rate() needs two scrapes in the window
                assert time.monotonic() < deadline, "Prometheus never had two scrapes of the exporter"
                time.sleep(0.2)
            yield prometheus
    finally:
        exporter.close()


def canary(candidate: str) -> dict[str, Any]:
    return model_canary(candidate, virtualService={"name": candidate}, routes=["predict"],
                        candidate={"inferenceService": candidate}, percent=100, steps={
                            "weights": [10, 50, 100], "interval": "2s", "analysis": {
                                "interval": WINDOW, "failureLimit": 2,
                                "checks": [{"name": "request-success-rate"}, {"name": "request-duration"}]}})


def checks_by_name(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in obj["status"]["analysis"]["checks"]}


def test_built_in_checks_step_a_good_candidate_and_roll_back_bad_ones(
    kube: Any, start_operator: StartOperator,
) -> None:
    candidates = ("good", "errors", "slow", "quiet")
    kube.create(ISVC, inference_service("torch-mnist"))
    for name in candidates:
        kube.create(ISVC, inference_service(name))
        kube.create(vs_path(name=name).rsplit("/", 1)[0], virtual_service(name=name))
    with istio_metrics() as prometheus:
        start_operator(resync=30, PROMETHEUS_URL=prometheus)
        for name in candidates:
            kube.create(MCANARY, canary(name))
        for name in candidates:  # the first step needs no analysis
            kube.wait_for(vs_path(name=name), lambda o: weights(o) == [90, 10], timeout=5)

        seen: list[list[int]] = []

        def promoted(vs: dict[str, Any]) -> bool:
            if weights(vs) not in seen:
                seen.append(weights(vs))
            return weights(vs) == [0, 100]
        kube.wait_for(vs_path(name="good"), promoted, timeout=20)
        assert seen == [[90, 10], [50, 50], [0, 100]], "stepped 10 -> 50 -> 100, one step at a time"
        good = wait_phase(kube, "good", "Promoted", timeout=5)
        assert good["status"]["analysis"]["result"] == "Passed"
        success, duration = checks_by_name(good)["request-success-rate"], checks_by_name(good)["request-duration"]
        assert (success["passed"], success["min"], duration["passed"], duration["max"]) == (True, 99, True, 500)
        assert success["value"] == pytest.approx(99.9, abs=0.01)
        assert duration["value"] == pytest.approx(120, rel=0.01)

        for name, failing, value, bound in (("errors", "request-success-rate", 90, "below the minimum 99"),
                                            ("slow", "request-duration", 2000, "above the maximum 500")):
            rolled = wait_phase(kube, name, "RolledBack", timeout=15)
            assert weights(kube.get(vs_path(name=name))) == [100, 0]
            assert rolled["status"]["analysis"]["failedChecks"] == 2
            assert rolled["status"]["analysis"]["result"] == "Failed"
            checks = checks_by_name(rolled)
            assert checks[failing]["passed"] is False and checks[failing]["value"] == pytest.approx(value, rel=0.01)
            assert bound in checks[failing]["message"]
            other = next(c for n, c in checks.items() if n != failing)
            assert other["passed"] is True
            assert condition(rolled, "Degraded")["reason"] == "AnalysisFailed"
            [event] = [e for e in events_until(kube, name, lambda es: any(e["reason"] == "RolledBack" for e in es))
                       if e["type"] == "Warning" and e["reason"] == "RolledBack"]
            assert f"analysis failed 2 time(s) in a row: {failing} " in event["message"]

        quiet = kube.get(f"{MCANARY}/quiet")
        assert quiet["status"]["phase"] == "Progressing"
        assert condition(quiet, "Progressing")["reason"] == "NoData"
        assert quiet["status"]["analysis"]["result"] == "NoData"
        assert {c["result"] for c in quiet["status"]["analysis"]["checks"]} == {"NoData"}
        assert quiet["status"]["analysis"]["failedChecks"] == 0
        assert weights(kube.get(vs_path(name="quiet"))) == [90, 10]
        warnings = [e for e in events_for(kube, "quiet") if e["type"] == "Warning"]
        assert [e["reason"] for e in warnings] == ["NoData"], "one Warning, however many passes found no data"
        assert warnings[0].get("count", 1) == 1
