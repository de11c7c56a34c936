"""Stepping with the single-query form of the analysis (one custom check named "query"): a real
Prometheus (Debian package) scraping a small exporter this test controls
(devstack/error_ratio_exporter.py), and the real operator process. The built-in checks on
Istio-shaped series: test_canary_checks.py.

Three canaries on three VirtualServices: one whose error ratio stays under the bound (steps
10 -> 50), one over it (rolled back after failureLimit checks in a row, and it stays rolled
back until the spec changes), one whose query finds no series (held at 10%, inconclusive).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack import metrics_stack
from devstack.error_ratio_exporter import ErrorRatioExporter, wait_for_series
from tests.integration.operator.canary_world import (
    MCANARY,
    condition,
    events_until,
    install_world,
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


@contextlib.contextmanager
def metrics(values: dict[str, float]) -> Iterator[tuple[ErrorRatioExporter, str]]:
    exporter = ErrorRatioExporter()
    exporter.values.update(values)
    try:
        with metrics_stack.prometheus_server({exporter.port: {"namespace": "default"}}) as prometheus:
            wait_for_series(prometheus, "model_error_ratio", len(values))
            yield exporter, prometheus
    finally:
        exporter.close()


def stepped(name: str, canary: str, **analysis: Any) -> dict[str, Any]:
    return model_canary(name, virtualService={"name": name}, routes=["predict"], percent=50, steps={
        "weights": [10, 50], "interval": "2s",
        "analysis": {"query": f'max(model_error_ratio{{canary="{canary}"}})', "max": 0.05, **analysis}})


def test_steps_with_a_passing_a_failing_and_an_inconclusive_analysis(
    kube: Any, start_operator: StartOperator,
) -> None:
    install_world(kube)
    for name in ("mnist-pass", "mnist-fail", "mnist-quiet"):
        kube.create(vs_path(name=name).rsplit("/", 1)[0], virtual_service(name=name))
    with metrics({"pass": 0.01, "fail": 0.2}) as (exporter, prometheus):
        start_operator(resync=30, PROMETHEUS_URL=prometheus)
        started = time.monotonic()
        kube.create(MCANARY, stepped("mnist-pass", "pass"))
        kube.create(MCANARY, stepped("mnist-fail", "fail", failureLimit=2))
        kube.create(MCANARY, stepped("mnist-quiet", "nobody"))
        for name in ("mnist-pass", "mnist-fail", "mnist-quiet"):  # the first step needs no analysis
            kube.wait_for(vs_path(name=name), lambda o: weights(o) == [90, 10], timeout=5)

        passed = wait_phase(kube, "mnist-pass", "Active", timeout=10)
        assert weights(kube.get(vs_path(name="mnist-pass"))) == [50, 50]
        assert passed["status"]["analysis"]["result"] == "Passed"
        [check] = passed["status"]["analysis"]["checks"]
        assert (check["name"], check["passed"], check["max"]) == ("query", True, 0.05)
        assert check["value"] == pytest.approx(0.01)
        assert passed["status"]["step"] == passed["status"]["steps"] == 2
        assert time.monotonic() - started >= 2, "the step waited its interval"

        failing = kube.wait_for(f"{MCANARY}/mnist-fail",
                                lambda o: condition(o, "Progressing").get("reason") == "AnalysisFailed")
        assert "analysis failed (1 of 2): query 0.2 is above the maximum 0.05" in condition(
            failing, "Progressing")["message"]
        assert weights(kube.get(vs_path(name="mnist-fail"))) == [90, 10]
        rolled = wait_phase(kube, "mnist-fail", "RolledBack", timeout=10)
        assert weights(kube.get(vs_path(name="mnist-fail"))) == [100, 0]
        assert condition(rolled, "Degraded")["reason"] == "AnalysisFailed"
        assert rolled["status"]["rolledBackGeneration"] == rolled["metadata"]["generation"]
        assert any(e["type"] == "Warning" and e["reason"] == "RolledBack" for e in events_until(
            kube, "mnist-fail", lambda es: any(e["reason"] == "RolledBack" for e in es)))

        quiet = kube.get(f"{MCANARY}/mnist-quiet")
        assert quiet["status"]["phase"] == "Progressing"
        assert condition(quiet, "Progressing")["reason"] == "NoData"
        assert "no samples" in condition(quiet, "Progressing")["message"]
        assert quiet["status"]["analysis"]["failedChecks"] == 0
        assert weights(kube.get(vs_path(name="mnist-quiet"))) == [90, 10]

        exporter.values["fail"] = 0.0  # healthy now, but the rollback sticks until the spec changes
        time.sleep(4.5)
        assert kube.get(f"{MCANARY}/mnist-fail")["status"]["phase"] == "RolledBack"
        assert weights(kube.get(vs_path(name="mnist-fail"))) == [100, 0]
        kube.patch(f"{MCANARY}/mnist-fail", {"spec": {"steps": {"analysis": {"max": 0.06}}}})
        kube.wait_for(vs_path(name="mnist-fail"), lambda o: weights(o) == [90, 10], timeout=5)
        wait_phase(kube, "mnist-fail", "Active", timeout=10)
        assert weights(kube.get(vs_path(name="mnist-fail"))) == [50, 50]
