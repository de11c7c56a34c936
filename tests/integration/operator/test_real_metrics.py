"""The scaling decision following real connections: a real memcached, the stats exporter,
a real Prometheus scraping it every second, and the real operator process.

The pod label on the scrape target matches the Deployment's pod naming, so the operator's
default query finds it exactly as it would in a cluster.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from devstack import metrics_stack
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"

if not metrics_stack.have_binaries():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the real-metrics test: .ci/run installs memcached and prometheus")
    pytest.skip("memcached/prometheus not installed (apt-get install memcached prometheus)",
                allow_module_level=True)


def test_replicas_follow_real_connections_down_to_zero(kube: Any, start_operator: StartOperator) -> None:
    """Up with demand at once, down to zero only after a whole idle window.

    Scaling back *up* from zero is not shown here on purpose: at zero a real cluster has no
    exporter pods and so no series (the test's exporter would keep reporting), which is why
    that needs a `metricsQuery` on a client-side signal (docs/architecture.md, Limits).
    """
    labels = {"namespace": "default", "pod": "sessions-6d9f7b8c4d-x7k2p"}
    with metrics_stack.memcached_server() as mc_port, metrics_stack.stats_exporter(mc_port) as exporter_port, \
            metrics_stack.prometheus_server({exporter_port: labels}) as prometheus:
        metrics_stack.wait_for_first_sample(prometheus)
        start_operator(resync=0.5, PROMETHEUS_URL=prometheus)
        with metrics_stack.client_connections(mc_port, 5):
            time.sleep(2)  # two scrapes see the five clients
            kube.create(MC, {
                "apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                "metadata": {"name": "sessions", "namespace": "default"},
                "spec": {"size": 0, "targetConnectionsPerReplica": 2, "coldStartBuffer": 1, "maxSize": 5,
                         "scalingWindow": "3s"},
            })
            # 5 connections / 2 per replica = 3, plus 1 warm spare = 4.
            mc = kube.wait_for(f"{MC}/sessions", lambda o: o.get("status", {}).get("readyReplicas") == 4,
                               timeout=30)
            assert mc["status"]["activeConnections"] == 5
            assert kube.get(f"{DEPLOY}/sessions")["spec"]["replicas"] == 4
            time.sleep(1.5)  # still busy: nothing moves
            assert kube.get(f"{DEPLOY}/sessions")["spec"]["replicas"] == 4
        # The scale-down window opens when a lower demand is first seen (memcached may report the
        # closing connections over more than one scrape, so measure from the window, not from 0).
        window_seen_at = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mc = kube.get(f"{MC}/sessions")
            if mc["status"].get("scaleDown") and window_seen_at is None:
                window_seen_at = time.monotonic()
            if mc["status"]["phase"] == "ScaledToZero":
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"never scaled to zero: {mc['status']}")
        assert window_seen_at is not None
        assert time.monotonic() - window_seen_at >= 2.5, "scaled down before the 3s window passed"
        assert mc["status"]["activeConnections"] == 0
        assert kube.get(f"{DEPLOY}/sessions")["spec"]["replicas"] == 0
        assert mc["status"]["readyReplicas"] == 0
