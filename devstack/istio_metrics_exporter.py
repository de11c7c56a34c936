"""A Prometheus exporter serving Istio's standard request metrics for services whose traffic the
caller describes: `istio_requests_total` and `istio_request_duration_milliseconds` (buckets, sum,
count) with the labels a destination sidecar reports (`reporter="destination"`,
`destination_service_namespace`, `destination_service_name`, `response_code`, ...).

A real Prometheus (metrics_stack.prometheus_server) scrapes it and the operator's built-in canary
checks query that Prometheus, so everything is real but the requests themselves: the counters grow
at the rates of each service's `Traffic` (requests per second, the share answered 503, and the p99
latency the histogram is shaped to), from the moment it is set; changing it keeps them monotonic.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from devstack.metrics_stack import MetricsEndpoint

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
# Istio's default buckets for istio_request_duration_milliseconds.
BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
              1800000, 3600000)
QUANTILE = 0.99


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What a service's sidecar sees: requests per second, the share of them answered 503, and p99."""

    requests_per_second: float = 50.0
    error_ratio: float = 0.0
    p99_ms: float = 100.0


def bucket_shares(p99_ms: float) -> list[float]:
    """The cumulative share of requests in each of BUCKETS_MS (then +Inf) for which Prometheus's
    histogram_quantile(0.99, ...) answers `p99_ms`: a share at or below the bucket under p99, the
    rest inside the bucket holding it (histogram_quantile interpolates linearly within a bucket)."""
    index = next((i for i, bound in enumerate(BUCKETS_MS) if p99_ms <= bound), len(BUCKETS_MS) - 1)
    low = BUCKETS_MS[index - 1] if index else 0.0
    within = min(max((p99_ms - low) / (BUCKETS_MS[index] - low), 0.0), QUANTILE)
    below = (QUANTILE - within) / (1 - within) if index else 0.0
    return [0.0 if i < index - 1 else below if i == index - 1 else 1.0 for i in range(len(BUCKETS_MS))] + [1.0]


@dataclasses.dataclass
class _Counters:
    ok: float = 0.0
    errors: float = 0.0
    buckets: list[float] = dataclasses.field(default_factory=lambda: [0.0] * (len(BUCKETS_MS) + 1))
    duration_sum: float = 0.0


class IstioMetricsExporter:
    """Serves the series of every service in `traffic` ({service name: Traffic}; set it freely, the
    counters advance at the rates in force since the last scrape)."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.traffic: dict[str, Traffic] = {}
        self._counters: dict[str, _Counters] = {}
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._endpoint = MetricsEndpoint(self._render)
        self.port = self._endpoint.port

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        for service, traffic in dict(self.traffic).items():
            counters = self._counters.setdefault(service, _Counters())
            requests = traffic.requests_per_second * elapsed
            counters.errors += requests * traffic.error_ratio
            counters.ok += requests * (1 - traffic.error_ratio)
            for i, share in enumerate(bucket_shares(traffic.p99_ms)):
                counters.buckets[i] += requests * share
            counters.duration_sum += requests * traffic.p99_ms * 0.5  # a plausible mean; no check reads it

    def _render(self) -> str:
        with self._lock:
            self._advance()
            lines = [f"# TYPE {REQUESTS} counter", f"# TYPE {DURATION} histogram"]
            for service, counters in sorted(self._counters.items()):
                labels = (f'reporter="destination",destination_service_namespace="{self.namespace}",'
                          f'destination_service_name="{service}",'
                          f'destination_service="{service}.{self.namespace}.svc.cluster.local",'
                          f'destination_workload="{service}",destination_workload_namespace="{self.namespace}",'
                          'source_workload="istio-ingressgateway",request_protocol="http"')
                lines += [f'{REQUESTS}{{{labels},response_code="200"}} {counters.ok:.6f}',
                          f'{REQUESTS}{{{labels},response_code="503"}} {counters.errors:.6f}']
                for bound, count in zip((*map(str, BUCKETS_MS), "+Inf"), counters.buckets, strict=True):
                    lines.append(f'{DURATION}_bucket{{{labels},le="{bound}"}} {count:.6f}')
                lines += [f"{DURATION}_sum{{{labels}}} {counters.duration_sum:.6f}",
                          f"{DURATION}_count{{{labels}}} {counters.buckets[-1]:.6f}"]
            return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._endpoint.close()
