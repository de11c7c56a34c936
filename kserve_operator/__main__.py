"""`python -m kserve_operator`: parse settings, then run this replica.

Two kopf operators, each in a thread with its own event loop (kopf's embedding: stopped by its
`stop_flag`): the placement webhook and its index on every replica, always; the controllers only
while this replica holds the Lease (leader election on), or from the start (off). The main
thread's loop runs the election, the probes and the signal handling, so a busy controller loop
cannot delay a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import kopf

from kserve_operator import observability
from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.connection import kopf_connection_info
from kserve_operator.clients.kube import KubernetesApi
from kserve_operator.clients.leader_election import LeaseStore
from kserve_operator.clients.prometheus import PrometheusClient
from kserve_operator.clients.rate_limiter import TokenBucket
from kserve_operator.controllers import canary, domain_metrics, inferenceservice, memcached, placement, prewarm
from kserve_operator.controllers.core import ReconcileCore
from kserve_operator.controllers.leader_election import LeaderElector
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.settings import OperatorSettings, kopf_settings, parse_settings

logger = logging.getLogger("kserve_operator")

#: Exit codes a person reads in `kubectl describe pod` (Last State): the Deployment restarts the pod.
EXIT_LEADERSHIP_LOST = 3  # could not renew within the renew deadline, or the Lease was deleted or taken
EXIT_OPERATOR_DIED = 4  # a kopf operator's thread ended on its own
#: How long SIGTERM waits for the controllers to stop before giving up the Lease (renewing meanwhile).
CONTROLLERS_STOP_SECONDS = 8.0


def _with_login(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    @kopf.on.login(registry=registry)
    async def login(**_: object) -> kopf.ConnectionInfo:
        return await kopf_connection_info()

    return registry


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The controllers: run by the leader only."""
    registry = _with_login(kopf.OperatorRegistry())
    memcached.register(settings, registry)
    prewarm.register(settings, registry)
    inferenceservice.register(settings, registry)
    canary.register(settings, registry)
    domain_metrics.register(registry)
    return registry


def build_webhook_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The placement webhook and its index: every replica serves it (it writes nothing)."""
    registry = _with_login(kopf.OperatorRegistry())
    placement.register(settings, registry)
    return registry


class OperatorThread:
    """One kopf operator in a thread of its own with its own event loop; `stop()` raises its stop flag."""

    def __init__(self, name: str,
                 main: Callable[[threading.Event, threading.Event], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()  # kopf raises it once its startup is done and watches begin
        self._main = main
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main(self.stop_flag, self.ready_flag))
        except BaseException:
            logger.exception("The %s operator failed.", self.name)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def died(self) -> bool:
        """Ended without being asked to."""
        return self.started and not self._thread.is_alive() and not self.stop_flag.is_set()

    async def stop(self, within: float) -> bool:
        """True once the thread has ended (or never started), False if it still runs after `within` seconds."""
        self.stop_flag.set()
        if not self.started:
            return True
        await asyncio.to_thread(self._thread.join, within)
        return not self._thread.is_alive()


def quiet_after_stop(stop_flag: threading.Event, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The controllers' loop's exception handler. A replica stopped during kopf's start-up (a standby
    that took the Lease and is told to stop at once) can leave kopf's own background tasks (its API
    scanning) failing on the closed session; nothing awaits them, so asyncio would log "Task
    exception was never retrieved" with a traceback. Once the stop flag is set a lost connection is
    expected: one WARNING line. Anything else, or before the stop, goes to the default handler."""
    exc = context.get("exception")
    if stop_flag.is_set() and isinstance(exc, aiohttp.ClientError):
        logger.warning("After the stop: %s (%s: %s)", context.get("message"), type(exc).__name__, exc)
        return
    loop.default_exception_handler(context)


async def run_controllers(settings: OperatorSettings, stop_flag: threading.Event, ready_flag: threading.Event) -> None:
    """The controllers' operator, in its own thread and loop (its API clients belong to that loop)."""
    asyncio.get_running_loop().set_exception_handler(functools.partial(quiet_after_stop, stop_flag))
    # Reads come from informers (clients/cached_kube.py), writes go through and into them.
    limiter = TokenBucket(settings.kube_api_qps, settings.kube_api_burst)  # every request of ours takes a token
    api = CachedKubeApi(await KubernetesApi.connect(user_agent="kserve-operator", limiter=limiter),
                        backoff=backoff_delay)
    prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
    memo = kopf.Memo(
        memcached=memcached.MemcachedContext(
            settings=settings, core=ReconcileCore(memcached.CONTROLLER, api), prometheus=prometheus),
        prewarm=prewarm.PrewarmContext(settings=settings, core=ReconcileCore(prewarm.CONTROLLER, api)),
        inferenceservices=inferenceservice.ServiceWatchContext(
            settings=settings, core=ReconcileCore(inferenceservice.CONTROLLER, api)),
        canary=canary.new_context(settings, api, prometheus),
    )
    for controller in (memcached, prewarm, inferenceservice, canary):
        controller.watch_children(settings, api, memo)
    resyncs: list[asyncio.Task[None]] = []  # one periodic resync per controller (core.Resync)
    try:
        await api.start()  # every informer lists before the first reconcile (bounded wait)
        resyncs.extend(asyncio.create_task(controller.resync(memo).run_forever(settings.resync_seconds),
                                           name=f"{controller.__name__} resync")
                       for controller in (memcached, prewarm, canary))
        await kopf.operator(
            registry=build_registry(settings),
            settings=kopf_settings(settings),
            standalone=True,
            clusterwide=settings.all_namespaces,
            namespaces=settings.watched_namespaces,
            memo=memo,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        for task in resyncs:
            task.cancel()
        await asyncio.gather(*resyncs, return_exceptions=True)
        await api.close()
        if prometheus is not None:
            await prometheus.close()


async def run_webhook(settings: OperatorSettings, tuned: kopf.OperatorSettings,
                      stop_flag: threading.Event, ready_flag: threading.Event) -> None:
    await kopf.operator(
        registry=build_webhook_registry(settings), settings=tuned, standalone=True,
        clusterwide=settings.all_namespaces, namespaces=settings.watched_namespaces,
        stop_flag=stop_flag, ready_flag=ready_flag,
    )


async def start_webhook(settings: OperatorSettings) -> OperatorThread | None:
    """Certificates (through a client of this loop), then the webhook's operator thread; None when off."""
    if settings.webhook_port <= 0:
        return None
    tuned = kopf_settings(settings)
    api = await KubernetesApi.connect(user_agent="kserve-operator")
    try:
        if not await placement.start_webhook(settings, api, tuned):
            return None
    finally:
        await api.close()
    thread = OperatorThread("webhook", functools.partial(run_webhook, settings, tuned))
    thread.start()
    return thread


class Replica:
    """What this process runs, and what /readyz says about it."""

    def __init__(self, webhook: OperatorThread | None, controllers: OperatorThread,
                 elector: LeaderElector | None) -> None:
        self.webhook = webhook
        self.controllers = controllers
        self.elector = elector

    def readiness(self) -> tuple[bool, str]:
        """A healthy standby is ready (it serves the webhook); a leader once its controllers' watches run."""
        if self.webhook is not None and not self.webhook.ready_flag.is_set():
            return False, "starting: the placement webhook is not serving yet"
        if self.elector is not None and self.elector.observation is None:
            return False, "starting: the Lease has not been read yet"
        if self.elector is not None and not self.controllers.started:
            holder = self.elector.holder
            return True, f"ready: standby (leader: {holder or 'none'})"
        role = "leader" if self.elector is not None else "leader election off"
        if not self.controllers.ready_flag.is_set():
            return False, f"starting: {role}, the controllers are starting"
        return True, f"ready: {role}, the controllers run"


def _exit_now(code: int, message: str) -> None:
    """Log, flush, and end the process at once: no controller may act a moment longer."""
    logger.critical(message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


def _on_lost(why: str) -> None:
    _exit_now(EXIT_LEADERSHIP_LOST, f"Leadership lost ({why}): exiting now, before the Lease can expire.")


async def run(settings: OperatorSettings) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    webhook = await start_webhook(settings)
    controllers = OperatorThread("controllers", functools.partial(run_controllers, settings))
    elector = None
    if settings.leader_election:
        store = await LeaseStore.connect(settings.lease_namespace, settings.lease_name,
                                         user_agent="kserve-operator-leader-election")
        elector = LeaderElector(store, settings.identity, settings.election)
    replica = Replica(webhook, controllers, elector)
    runner = None
    if settings.http_port:
        runner = await observability.serve_probes(settings.http_host, settings.http_port, replica.readiness)
    campaign = None
    try:
        if elector is not None:
            logger.info("Leader election on: Lease %s/%s, identity %s, %g s / %g s / %g s.", settings.lease_namespace,
                        settings.lease_name, settings.identity, settings.election.lease_duration,
                        settings.election.renew_deadline, settings.election.retry_period)
            campaign = asyncio.create_task(elector.run(controllers.start, _on_lost))
        else:
            controllers.start()
        while not stopping.is_set():
            if campaign is not None and campaign.done():
                campaign.result()  # it runs until cancelled: an exception ends the replica
            for thread in (webhook, controllers):
                if thread is not None and thread.died:
                    await _stop_leading(controllers, elector)
                    _exit_now(EXIT_OPERATOR_DIED, f"The {thread.name} operator ended on its own: exiting.")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
        logger.info("Stopping: %s.", "the controllers first, then the Lease" if elector else "the controllers")
        await _stop_leading(controllers, elector)
    finally:
        if campaign is not None:
            campaign.cancel()
        if webhook is not None:
            await webhook.stop(within=5)
        if elector is not None:
            await elector.store.close()
        if runner is not None:
            await runner.cleanup()


async def _stop_leading(controllers: OperatorThread, elector: LeaderElector | None) -> None:
    """Stop the controllers (renewal goes on meanwhile), then release the Lease; never release while they run."""
    if not await controllers.stop(within=CONTROLLERS_STOP_SECONDS):
        _exit_now(EXIT_OPERATOR_DIED, f"The controllers did not stop within {CONTROLLERS_STOP_SECONDS:g} s: exiting "
                                      "without releasing the Lease (a standby takes it when it expires).")
    if elector is not None:
        await elector.release()


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
