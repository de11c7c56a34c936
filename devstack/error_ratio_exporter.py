"""A tiny Prometheus exporter whose numbers the caller sets: `model_error_ratio{canary=...}`.

A real Prometheus (metrics_stack.prometheus_server) scrapes it, and the operator's canary analysis
(a custom check's query) queries that Prometheus, so the whole path is real except the traffic
behind the number: the canary tests decide the candidate's error ratio instead of sending
requests. The built-in checks read Istio's metrics instead (istio_metrics_exporter.py).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

from devstack.metrics_stack import MetricsEndpoint

METRIC = "model_error_ratio"


class ErrorRatioExporter:
    """Serves `model_error_ratio{canary=NAME} VALUE` for every entry of `values` (set them freely)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self._endpoint = MetricsEndpoint(self._render)
        self.port = self._endpoint.port

    def _render(self) -> str:
        lines = [f"# TYPE {METRIC} gauge"]
        lines += [f'{METRIC}{{canary="{name}"}} {value}' for name, value in dict(self.values).items()]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._endpoint.close()


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a loopback http URL built here)
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
    return result


def wait_for_series(prometheus: str, promql: str, count: int, timeout: float = 30.0) -> None:
    """Until `promql` returns `count` series: Prometheus answers empty before its first scrape."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(query(prometheus, promql)) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"Prometheus has no {count} series of {promql} after {timeout}s")


def wait_for_value(prometheus: str, promql: str, value: float, timeout: float = 15.0) -> None:
    """Until Prometheus has scraped `value` (the first series of `promql`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result and float(result[0]["value"][1]) == value:
            return
        time.sleep(0.2)
    raise TimeoutError(f"Prometheus did not see {promql} == {value} after {timeout}s")
