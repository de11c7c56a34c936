"""The operator's own /metrics, /healthz and /readyz, served from its event loop.

Liveness answers while the loop runs; readiness asks the replica (`__main__.Replica.readiness`):
a standby is ready once it serves the webhook and has read the Lease, a leader once kopf's watches
run, so a rolling update keeps the old pod until the new one works. The body says which it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import prometheus_client
from aiohttp import web

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

RECONCILES = prometheus_client.Counter(
    "kserve_operator_reconciles_total", "Reconciles by controller and result.",
    ["controller", "result"], registry=REGISTRY,
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "kserve_operator_reconcile_duration_seconds", "Reconcile wall time.",
    ["controller"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = prometheus_client.Counter(
    "kserve_operator_api_requests_total", "Kubernetes API calls made by the operator's own client.",
    ["method", "code"], registry=REGISTRY,
)
API_LATENCY = prometheus_client.Histogram(
    "kserve_operator_api_request_duration_seconds", "Kubernetes API call latency.",
    ["method"], registry=REGISTRY,
)
API_THROTTLE_SECONDS = prometheus_client.Histogram(
    "kserve_operator_api_rate_limiter_wait_seconds",
    "Time a Kubernetes API call of the operator's own client waited for a token (KUBE_API_QPS/KUBE_API_BURST).",
    ["method"], registry=REGISTRY,
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SCALES = prometheus_client.Counter(
    "kserve_operator_memcached_scale_total", "Replica changes applied to Memcached Deployments.",
    ["direction"], registry=REGISTRY,
)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(_: web.Request) -> web.Response:
    body = prometheus_client.generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def _readyz(readiness: Callable[[], tuple[bool, str]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        ready, why = readiness()
        return web.Response(status=200 if ready else 503, text=f"{why}\n")
    return handler


async def serve_probes(host: str, port: int, readiness: Callable[[], tuple[bool, str]]) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz(readiness))
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
