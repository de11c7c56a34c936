"""Real memcached and Prometheus processes on loopback, with a small stats exporter between them.

Used by the integration tests and the demo. Debian has no memcached exporter package, so
`StatsExporter` stands in for the upstream sidecar: it reads memcached's own `stats` over
one short-lived connection per scrape (as the upstream exporter does, so memcached counts
that connection too) and serves the same metric names.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def have_binaries() -> bool:
    return bool(shutil.which("memcached") and shutil.which("prometheus"))


@contextlib.contextmanager
def memcached_server() -> Iterator[int]:
    """A real memcached on a free loopback port; yields the port."""
    port = free_port()
    cmd = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16", "-c", "1024"]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def read_stats(port: int) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    stats = {}
    for line in data.decode().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            stats[parts[1]] = parts[2]
    return stats


def render_metrics(stats: Mapping[str, str] | None) -> str:
    """The upstream exporter's names for the stats the operator and dashboards use."""
    if stats is None:
        return "memcached_up 0\n"
    lines = ["memcached_up 1"]
    for name, key, kind in (
        ("memcached_current_connections", "curr_connections", "gauge"),
        ("memcached_connections_total", "total_connections", "counter"),
        ("memcached_current_items", "curr_items", "gauge"),
        ("memcached_current_bytes", "bytes", "gauge"),
    ):
        if key in stats:
            lines += [f"# TYPE {name} {kind}", f"{name} {stats[key]}"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def stats_exporter(memcached_port: int) -> Iterator[int]:
    """Serve /metrics for one memcached; yields the exporter's port."""

    def render() -> str:
        try:
            stats: dict[str, str] | None = read_stats(memcached_port)
        except OSError:
            stats = None
        return render_metrics(stats)

    endpoint = MetricsEndpoint(render)
    try:
        yield endpoint.port
    finally:
        endpoint.close()


class MetricsEndpoint:
    """Prometheus text format on loopback, from `render()` at every scrape, served from a thread."""

    def __init__(self, render: Callable[[], str]) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def prometheus_server(targets: Mapping[int, Mapping[str, str]], *, scrape_interval: str = "1s") -> Iterator[str]:
    """A real Prometheus scraping `targets` (port -> labels); yields its base URL."""
    port = free_port()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="prometheus-"))
    def entry(target: int, labels: Mapping[str, str]) -> str:
        rendered = ", ".join(f"{key}: {value!r}" for key, value in labels.items())
        return f"      - targets: ['127.0.0.1:{target}']\n        labels: {{{rendered}}}"

    static = "\n".join(entry(target, labels) for target, labels in targets.items())
    (workdir / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n"
        f"scrape_configs:\n  - job_name: memcached\n    static_configs:\n{static}\n"
    )
    cmd = [
        "prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:  # noqa: S310 (an http URL built here)
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("prometheus did not become ready in 30s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_first_sample(prometheus_url: str, timeout: float = 30.0) -> None:
    """Prometheus answers empty until its first scrape; callers that judge answers wait for it."""
    query = urllib.parse.urlencode({"query": "memcached_up"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=2) as response:  # noqa: S310 (an http URL built here)
            if b'"value"' in response.read():
                return
        time.sleep(0.3)
    raise TimeoutError(f"Prometheus scraped nothing in {timeout}s")


@contextlib.contextmanager
def client_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` idle client connections to memcached, as a busy application would hold."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        for conn in conns:  # one round trip each, so memcached has accepted them all
            conn.sendall(b"version\r\n")
            conn.recv(64)
        yield conns
    finally:
        for conn in conns:
            conn.close()
