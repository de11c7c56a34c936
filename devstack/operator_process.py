"""The real operator as a child process (`python -m kserve_operator`) against a local cluster.

Shared by the integration tests, the demo and the benchmark, so all three run the operator
exactly as a Deployment would: its own process, its own kubeconfig, its probes on a port.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

from devstack.metrics_stack import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]


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

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers 200 (kopf's watches run); fail fast if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            with contextlib.suppress(OSError):
                if self.http_get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"the operator was not ready after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends; kill only if it does not exit in 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_operator(
    kubeconfig: pathlib.Path,
    log_path: pathlib.Path,
    *,
    args: Sequence[str] = ("--all-namespaces",),
    env: Mapping[str, str] | None = None,
    tree: pathlib.Path | None = None,
) -> OperatorProcess:
    """Start it with `env` on top of ours (never an inherited PROMETHEUS_URL) and wait until ready.

    `tree` runs the operator package of another checkout (the benchmark's "before" run).
    """
    port = free_port()
    full_env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    full_env.pop("PROMETHEUS_URL", None)
    full_env["WEBHOOK_PORT"] = "0"  # the placement webhook runs only where the caller wires it (env=)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "kserve_operator", "--http-host", "127.0.0.1", "--http-port", str(port), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tree or ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    operator = OperatorProcess(proc, log_path, port)
    try:
        operator.wait_ready()
    except BaseException:
        operator.stop()
        raise
    return operator


@contextlib.contextmanager
def running_operator(
    kubeconfig: pathlib.Path, log_path: pathlib.Path, *, env: Mapping[str, str] | None = None,
    tree: pathlib.Path | None = None,
) -> Iterator[OperatorProcess]:
    operator = start_operator(kubeconfig, log_path, env=env, tree=tree)
    try:
        yield operator
    finally:
        operator.stop()
