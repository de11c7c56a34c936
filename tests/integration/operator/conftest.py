"""Run the real operator process (`python -m kserve_operator`) against the emulated cluster."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devcluster.metrics_stack import free_port

ROOT = pathlib.Path(__file__).resolve().parents[3]


class OperatorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: pathlib.Path, http_port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.http_port = http_port

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError):
                if self.http_get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"operator not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(kubeconfig: pathlib.Path, tmp_path: pathlib.Path) -> Iterator[StartOperator]:
    """A factory: start the operator with extra env; every started process is stopped and checked."""
    started: list[OperatorProcess] = []

    def start(*args: str, resync: float = 1.0, **env: str) -> OperatorProcess:
        port = free_port()
        log_path = tmp_path / f"operator-{len(started)}.log"
        full_env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "RESYNC_SECONDS": str(resync),
            "FINALIZER_TIMEOUT_SECONDS": "20",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        if "PROMETHEUS_URL" not in env:  # never inherit one from the developer's shell
            full_env.pop("PROMETHEUS_URL", None)
        cmd = [sys.executable, "-m", "kserve_operator", "--http-host", "127.0.0.1", "--http-port", str(port),
               *(args or ("--all-namespaces",))]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        op = OperatorProcess(proc, log_path, port)
        started.append(op)
        op.wait_ready()
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
