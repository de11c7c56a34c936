"""Run the real operator process (`python -m kserve_operator`) against the emulated cluster."""

from __future__ import annotations

import http.server
import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.local_s3 import S3, moto_s3
from devstack.operator_process import OperatorProcess
from devstack.operator_process import start_operator as start_operator_process

StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[StartOperator]:
    """A factory: start the operator with extra env; every started process is stopped and checked."""
    started: list[OperatorProcess] = []

    def start(*args: str, resync: float = 1.0, **env: str) -> OperatorProcess:
        log_path = tmp_path / f"operator-{len(started)}.log"
        full_env = {"RESYNC_SECONDS": str(resync), "FINALIZER_TIMEOUT_SECONDS": "20", **env}
        op = start_operator_process(kubeconfig, log_path, args=args or ("--all-namespaces",), env=full_env)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
        log = op.log()
        assert "Traceback" not in log, f"the operator logged a traceback:\n{log[-6000:]}"


class StubPrometheus:
    """A stand-in for Prometheus's HTTP API for the failure modes a real one will not produce
    on demand (HTTP 500, a non-numeric sample, a hang). Successful-metrics tests use the
    real Prometheus in test_real_metrics.py."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.value = "0"
        self.queries: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.queries.append(self.path)
                if outer.mode == "hang":
                    time.sleep(8)
                if outer.mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"internal error")
                    return
                value = "not-a-number" if outer.mode == "garbage" else outer.value
                body = json.dumps({"status": "success", "data": {
                    "resultType": "vector", "result": [{"metric": {}, "value": [0, value]}]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_prometheus() -> Iterator[StubPrometheus]:
    stub = StubPrometheus()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """moto's S3 server on loopback, one per test module (the pre-warm tests' model store)."""
    with moto_s3() as server:
        yield server
