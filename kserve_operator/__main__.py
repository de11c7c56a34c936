"""`python -m kserve_operator`: parse settings, register the controllers, run kopf."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf

from kserve_operator import observability
from kserve_operator.clients.connection import kopf_connection_info
from kserve_operator.clients.kube import KubernetesApi
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.controllers import canary, domain_metrics, inferenceservice, memcached, placement, prewarm
from kserve_operator.controllers.core import ReconcileCore
from kserve_operator.settings import OperatorSettings, kopf_settings, parse_settings


def build_registry(settings: OperatorSettings, *, webhook: bool = False) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: object) -> kopf.ConnectionInfo:
        return await kopf_connection_info()

    memcached.register(settings, registry)
    prewarm.register(settings, registry)
    inferenceservice.register(settings, registry)
    canary.register(settings, registry)
    domain_metrics.register(registry)
    if webhook:
        placement.register(settings, registry)
    return registry


async def run(settings: OperatorSettings) -> None:
    ready = asyncio.Event()  # kopf sets it once its watches run; /readyz reports it

    api = await KubernetesApi.connect(user_agent="kserve-operator")
    prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
    memo = kopf.Memo(
        memcached=memcached.MemcachedContext(
            settings=settings, core=ReconcileCore(memcached.CONTROLLER, api), prometheus=prometheus),
        prewarm=prewarm.PrewarmContext(settings=settings, core=ReconcileCore(prewarm.CONTROLLER, api)),
        inferenceservices=inferenceservice.ServiceWatchContext(
            settings=settings, core=ReconcileCore(inferenceservice.CONTROLLER, api)),
        canary=canary.new_context(settings, api, prometheus),
    )
    tuned = kopf_settings(settings)
    webhook = settings.webhook_port > 0 and await placement.start_webhook(settings, api, tuned)
    runner = None
    if settings.http_port:
        runner = await observability.serve_probes(settings.http_host, settings.http_port, ready)
    try:
        await kopf.operator(
            registry=build_registry(settings, webhook=webhook),
            settings=tuned,
            standalone=True,
            clusterwide=settings.all_namespaces,
            namespaces=settings.watched_namespaces,
            memo=memo,
            ready_flag=ready,  # SIGTERM/SIGINT: kopf's own handlers stop it gracefully
        )
    finally:
        await api.close()
        if prometheus is not None:
            await prometheus.close()
        if runner is not None:
            await runner.cleanup()


class QuietRoutineSuccess(logging.Filter):
    """kopf logs every successful timer run and every handled watch event at INFO: 200 caches make
    400 lines a minute, and each Job, Pod or Node event one more. Failures and decisions still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno == logging.INFO and message.endswith(" succeeded.")
                    and (message.startswith("Timer ") or message.startswith("Handler ")))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=logging.DEBUG if settings.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not settings.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietRoutineSuccess())
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
