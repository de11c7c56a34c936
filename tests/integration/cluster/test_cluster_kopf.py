"""A tiny, generic kopf operator runs against the emulated cluster (not the project's operator).

It proves what any kopf operator needs: discovery, list + watch, merge patches to ``/status``,
finalizers through JSON patch, events, in both namespaced and cluster-wide mode.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devcluster import ClusterClient, EmulatedCluster

OPERATOR = '''
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()

@kopf.on.login()
def login(**kwargs):
    return kopf.login_with_kubeconfig(**kwargs)

@kopf.on.create("cache.serverless.xyz", "v1alpha1", "memcacheds")
def created(spec, patch, body, **_):
    kopf.warn(body, reason="Observed", message=f"size is {spec['size']}")
    patch.status["phase"] = "Running"
    patch.status["replicas"] = spec["size"]

@kopf.on.delete("cache.serverless.xyz", "v1alpha1", "memcacheds")
def deleted(logger, **_):
    logger.info("released")
'''


@pytest.mark.integration
@pytest.mark.parametrize("scope", [["--namespace=default"], ["--all-namespaces"]], ids=["namespaced", "cluster"])
def test_kopf_operator_reconciles_against_the_emulator(
        cluster: EmulatedCluster, kube: ClusterClient, kubeconfig: Path, tmp_path: Path, scope: list[str]) -> None:
    script = tmp_path / "operator.py"
    script.write_text(OPERATOR)
    log = (tmp_path / "kopf.log").open("w")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    process = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", *scope, str(script)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    path = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
    try:
        kube.create(path, {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                           "metadata": {"name": "cache"}, "spec": {"size": 2}})
        done = kube.wait_for(f"{path}/cache", lambda o: o.get("status", {}).get("phase") == "Running", timeout=20)
        assert done["status"]["replicas"] == 2
        assert "kopf.zalando.org/KopfFinalizerMarker" in done["metadata"]["finalizers"]

        cluster.wait_quiet(quiet_for=0.5, user_agent="kopf", timeout=15)  # kopf's own bookkeeping is done
        since = time.time()
        time.sleep(1.0)  # the window in which it must stay idle
        assert cluster.count_writes(user_agent="kopf", since=since) == 0

        kube.delete(f"{path}/cache")
        kube.wait_gone(f"{path}/cache", timeout=20)
        cluster.wait_for(lambda: any(  # kopf posts events from a background task
            e["type"] == "Warning" and e["reason"] == "Observed" and e["message"] == "size is 2"
            for e in kube.list("/api/v1/namespaces/default/events")), timeout=5,
            message="kopf's Warning event never arrived")
        assert any(r.user_agent.startswith("kopf") and r.watch for r in cluster.requests)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "kopf.log").read_text()
    assert "Traceback" not in output, output
