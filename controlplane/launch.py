"""Start a real Kubernetes control plane on loopback for tests and the demo, as envtest does.

``ControlPlane(bin_dir, work_dir).start()`` runs etcd, kube-apiserver (``Node,RBAC``
authorization; the default admission plugins, PodSecurity and ServiceAccount among them, plus
NodeRestriction), kube-controller-manager (every default controller, each with its own service
account) and kube-scheduler, each a child process with its log in ``work_dir/logs``. It returns
once the API server's ``/readyz`` and both controllers' ``/healthz`` answer, and records how long
that took. Certificates, the service-account signing key and one kubeconfig per identity are
generated in ``work_dir``.

Faults are reported, not hidden: a missing binary or a busy port is a ``ControlPlaneError`` with
one line saying what to do, raised before anything starts; a component that exits during
startup stops the rest and names itself with the end of its log; a component that dies later
is noticed by a watchdog, which stops the others (so the tests that use the cluster fail at
once instead of timing out) and keeps the reason in ``failure``. Children die with the process
that started them (``PR_SET_PDEATHSIG``), so a killed test run leaves nothing behind.

Run it by hand::

    python -m controlplane.launch --bin "$(make -s controlplane | tail -1)" --kubeconfig /tmp/kc
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from controlplane.certs import CertificateAuthority, KeyPair, service_account_keys

logger = logging.getLogger("controlplane")

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(Exception):
    """Why the control plane cannot start or stopped, in one line that says what to do."""


try:  # resolved here, in the parent: the child between fork and exec only calls it
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process that started it dies (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise ControlPlaneError(f"port {port} on {LOOPBACK} for {what} is busy ({exc.strerror}): stop whatever "
                                    "listens there (another cluster?) or choose another port") from exc


def kubeconfig_document(server: str, ca: Path, *, user: str, cert: KeyPair | None = None, token: str | None = None,
                        namespace: str = "default") -> dict[str, Any]:
    credentials: dict[str, str] = {}
    if cert is not None:
        credentials = {"client-certificate": str(cert.cert), "client-key": str(cert.key)}
    if token is not None:
        credentials = {"token": token}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": user, "preferences": {},
        "clusters": [{"name": "controlplane", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "controlplane", "user": user, "namespace": namespace}}],
    }


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    health: Callable[[], bool]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def log_tail(self, lines: int = 3) -> str:
        """The last error lines of the log (klog's ``E`` lines, etcd's ``"level":"fatal"``), else its tail."""
        try:
            text = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        errors = [line for line in text if line.startswith(("E", "F")) or '"level":"fatal"' in line
                  or '"level":"error"' in line]
        return " | ".join((errors or text)[-lines:])


@dataclass
class Timings:
    """Seconds from ``start()`` to each component answering healthy."""

    etcd: float = 0.0
    apiserver: float = 0.0
    controllers: float = 0.0
    total: float = 0.0
    per_component: dict[str, float] = field(default_factory=dict)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback (see module docstring)."""

    def __init__(self, bin_dir: Path, work_dir: Path | None = None, *, port: int = 0,
                 node_monitor_grace_seconds: int = 16, controllers: bool = True,
                 extra_apiserver_flags: tuple[str, ...] = (), audit_users: tuple[str, ...] = ()) -> None:
        """``audit_users``: the API server writes an audit event (level Metadata: verb, resource,
        response code) of every request these users make to ``audit.log`` (see ``audit_events``)."""
        self.bin_dir = Path(bin_dir)
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="controlplane-"))
        self.port = port
        self.node_monitor_grace_seconds = node_monitor_grace_seconds
        self.run_controllers = controllers
        self.extra_apiserver_flags = extra_apiserver_flags
        self.audit_users = audit_users
        self.audit_log = self.work_dir / "audit.log"
        self.components: list[Component] = []
        self.timings = Timings()
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._paused: set[str] = set()  # components stopped on purpose (stop_apiserver): not a death
        # (down, ready) wall-clock times of each kube-apiserver restart (stop_apiserver .. start_apiserver):
        # right after a start its authorizer is still filling its caches and may refuse a request
        # (403) a shipped grant allows; an audit of the grants leaves those moments out.
        self.outages: list[tuple[float, float]] = []
        self._down_since: float | None = None
        self._watchdog: threading.Thread | None = None
        self._failure_callbacks: list[Callable[[str], None]] = []
        self.ca: CertificateAuthority | None = None
        self.admin: KeyPair | None = None
        self.admin_kubeconfig = self.work_dir / "admin.kubeconfig"

    # ---- what others need -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "start() first"
        return self.ca.cert_path

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    def ssl_context(self, cert: KeyPair | None = None) -> ssl.SSLContext:
        """Trusts the cluster's CA; presents ``cert`` (the admin's by default) as the client."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        pair = cert or self.admin
        if pair is not None:
            context.load_cert_chain(str(pair.cert), str(pair.key))
        return context

    def issue_client(self, stem: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
        """A client certificate for ``user`` in ``groups`` (e.g. a node: system:node:NAME, system:nodes)."""
        assert self.ca is not None, "start() first"
        return self.ca.issue(stem, user, organizations=groups)

    def write_kubeconfig(self, path: Path, *, cert: KeyPair | None = None, token: str | None = None,
                         user: str = "admin", namespace: str = "default") -> Path:
        """A kubeconfig for this cluster: the admin's by default, or another client cert or token."""
        document = kubeconfig_document(self.url, self.ca_file, user=user, cert=cert or (None if token else self.admin),
                                       token=token, namespace=namespace)
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def on_failure(self, callback: Callable[[str], None]) -> None:
        """Called once, from the watchdog thread, when a component dies after startup."""
        self._failure_callbacks.append(callback)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        started = time.monotonic()
        missing = [name for name in BINARIES if not os.access(self.binary(name), os.X_OK)]
        if missing:
            raise ControlPlaneError(f"{', '.join(missing)} not found in {self.bin_dir}: run `make controlplane` "
                                    "and pass the folder it prints last")
        if self.port:
            check_port_free(self.port, "kube-apiserver")
        else:
            self.port = free_port()
        etcd_port, etcd_peer, kcm_port, scheduler_port = free_port(), free_port(), free_port(), free_port()
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._make_credentials()
        try:
            self._start_component(self._etcd(etcd_port, etcd_peer))
            self.timings.etcd = self._wait_healthy(self.components[-1], 30, started)
            self._start_component(self._apiserver(etcd_port))
            self.timings.apiserver = self._wait_healthy(self.components[-1], 90, started)
            if self.run_controllers:
                self._start_component(self._controller_manager(kcm_port))
                self._start_component(self._scheduler(scheduler_port))
                for component in self.components[2:]:
                    self._wait_healthy(component, 60, started)
                self.timings.controllers = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        self.timings.total = time.monotonic() - started
        self._watchdog = threading.Thread(target=self._watch, name="controlplane-watchdog", daemon=True)
        self._watchdog.start()
        logger.info("control plane ready in %.1f s (etcd %.1f s, apiserver %.1f s, controllers %.1f s) at %s",
                    self.timings.total, self.timings.etcd, self.timings.apiserver, self.timings.controllers, self.url)
        return self

    def stop(self) -> None:
        """SIGTERM every component (newest first), SIGKILL what is left after 10 s, wait for all."""
        self._stopping.set()
        for component in reversed(self.components):
            if component.process is not None and component.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    component.process.terminate()
        deadline = time.monotonic() + 10
        for component in reversed(self.components):
            if component.process is None:
                continue
            try:
                component.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2)
        if self._own_work_dir and not os.environ.get("CONTROLPLANE_KEEP"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def check(self) -> None:
        """Raise if a component died (tests call this to fail fast with the reason)."""
        if self.failure:
            raise ControlPlaneError(self.failure)

    def stop_apiserver(self, grace: float = 0.0) -> float:
        """Stop kube-apiserver alone, leaving etcd, the controllers and every client running: they see
        connections refused until ``start_apiserver``. SIGTERM, then SIGKILL after ``grace`` seconds
        (0: SIGKILL at once, a crash; its graceful shutdown can take 30 s, waiting on open watches).
        The watchdog does not count it as a death. Returns the seconds the process took to exit."""
        component = self._component("kube-apiserver")
        assert component.process is not None, "start() first"
        self._paused.add(component.name)
        self._down_since = time.time()
        began = time.monotonic()
        if grace > 0:
            component.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=grace)
        if component.process.poll() is None:
            component.process.kill()
        component.process.wait()
        return time.monotonic() - began

    def start_apiserver(self, timeout: float = 90) -> float:
        """Start kube-apiserver again after ``stop_apiserver``: the same flags, port, etcd (so every
        object and resourceVersion is kept) and certificates; the seconds until ``/readyz`` answers."""
        component = self._component("kube-apiserver")
        began = time.monotonic()
        self._spawn(component)
        try:
            self._wait_healthy(component, timeout, began)
        finally:
            self._paused.discard(component.name)
        self.outages.append((self._down_since if self._down_since is not None else time.time(), time.time()))
        return time.monotonic() - began

    def _component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.components if c.process is not None}

    # ---- components -------------------------------------------------------------------------------

    def _make_credentials(self) -> None:
        pki = self.work_dir / "pki"
        self.ca = CertificateAuthority(pki)
        self.admin = self.ca.issue("admin", "kubernetes-admin", organizations=("system:masters",))
        self.write_kubeconfig(self.admin_kubeconfig)
        self._serving = self.ca.issue("apiserver", "kube-apiserver", hosts=(
            LOOPBACK, "localhost", "10.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"))
        self._components_serving = self.ca.issue("components", "loopback-components", hosts=(LOOPBACK, "localhost"))
        self._sa = service_account_keys(pki)
        for stem, user in (("kcm", "system:kube-controller-manager"), ("scheduler", "system:kube-scheduler")):
            pair = self.ca.issue(stem, user)
            self.write_kubeconfig(self.work_dir / f"{stem}.kubeconfig", cert=pair, user=user)

    def _etcd(self, port: int, peer: int) -> Component:
        data = self.work_dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)  # every start is a fresh cluster
        argv = [str(self.binary("etcd")), f"--data-dir={data}", "--name=controlplane",
                f"--listen-client-urls=http://{LOOPBACK}:{port}", f"--advertise-client-urls=http://{LOOPBACK}:{port}",
                f"--listen-peer-urls=http://{LOOPBACK}:{peer}",
                f"--initial-advertise-peer-urls=http://{LOOPBACK}:{peer}",
                f"--initial-cluster=controlplane=http://{LOOPBACK}:{peer}",
                "--unsafe-no-fsync=true", "--quota-backend-bytes=4294967296", "--log-level=warn"]
        return Component("etcd", argv, self.work_dir / "logs" / "etcd.log",
                         lambda: self._get(f"http://{LOOPBACK}:{port}/health", None) == 200)

    def _apiserver(self, etcd_port: int) -> Component:
        pki = self.work_dir / "pki"
        argv = [str(self.binary("kube-apiserver")),
                f"--etcd-servers=http://{LOOPBACK}:{etcd_port}",
                f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}", f"--secure-port={self.port}",
                f"--tls-cert-file={self._serving.cert}", f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={pki / 'ca.crt'}", f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._sa.cert}",
                f"--service-account-signing-key-file={self._sa.key}",
                "--authorization-mode=Node,RBAC",
                # The defaults (NamespaceLifecycle, ServiceAccount, PodSecurity, ...) stay on; NodeRestriction
                # keeps the process kubelet's node identities to their own Node and pods, as on a real cluster.
                "--enable-admission-plugins=NodeRestriction",
                # On loopback there is no "public" address for the kubernetes Service's endpoints.
                "--endpoint-reconciler-type=none",
                # Webhook Services resolve through their EndpointSlices (as for aggregated APIs), not their
                # ClusterIP, which nothing routes on this machine: a test can serve a webhook locally.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true", "--profiling=false", "--v=1",
                *self._audit_flags(), *self.extra_apiserver_flags]
        return Component("kube-apiserver", argv, self.work_dir / "logs" / "kube-apiserver.log",
                         lambda: self._get(f"{self.url}/readyz", self.ssl_context()) == 200)

    def _audit_flags(self) -> list[str]:
        if not self.audit_users:
            return []
        policy = self.work_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": list(self.audit_users)}, {"level": "None"}]}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-mode=blocking", "--audit-log-maxsize=0"]

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit events written so far (one JSON object per request of an audited user)."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def _secure_serving(self, port: int, stem: str) -> list[str]:
        kubeconfig = self.work_dir / f"{stem}.kubeconfig"
        return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={LOOPBACK}", f"--secure-port={port}",
                f"--tls-cert-file={self._components_serving.cert}",
                f"--tls-private-key-file={self._components_serving.key}", "--leader-elect=false", "--v=1"]

    def _controller_manager(self, port: int) -> Component:
        grace = self.node_monitor_grace_seconds
        argv = [str(self.binary("kube-controller-manager")), *self._secure_serving(port, "kcm"),
                "--controllers=*", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self._sa.key}", f"--root-ca-file={self.ca_file}",
                f"--cluster-signing-cert-file={self.ca_file}",
                f"--cluster-signing-key-file={self.work_dir / 'pki' / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Node loss is noticed in seconds rather than the default 50 s, so the tests can wait for it.
                "--node-monitor-period=2s", f"--node-monitor-grace-period={grace}s"]
        return Component("kube-controller-manager", argv, self.work_dir / "logs" / "kube-controller-manager.log",
                         lambda: self._get(f"https://{LOOPBACK}:{port}/healthz", self._loopback_context()) == 200)

    def _scheduler(self, port: int) -> Component:
        argv = [str(self.binary("kube-scheduler")), *self._secure_serving(port, "scheduler")]
        return Component("kube-scheduler", argv, self.work_dir / "logs" / "kube-scheduler.log",
                         lambda: self._get(f"https://{LOOPBACK}:{port}/healthz", self._loopback_context()) == 200)

    def _loopback_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    # ---- processes --------------------------------------------------------------------------------

    def _start_component(self, component: Component) -> None:
        self._spawn(component)
        self.components.append(component)

    @staticmethod
    def _spawn(component: Component) -> None:
        with component.log.open("ab") as log:
            component.process = subprocess.Popen(component.argv, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        component.started_at = time.monotonic()

    def _wait_healthy(self, component: Component, timeout: float, since: float) -> float:
        deadline = time.monotonic() + timeout
        assert component.process is not None
        while time.monotonic() < deadline:
            code = component.process.poll()
            if code is not None:
                raise ControlPlaneError(f"{component.name} exited with code {code} while starting: "
                                        f"{component.log_tail()} (log: {component.log})")
            if component.health():
                seconds = time.monotonic() - since
                self.timings.per_component[component.name] = round(time.monotonic() - component.started_at, 2)
                return seconds
            time.sleep(0.1)
        raise ControlPlaneError(f"{component.name} was not healthy after {timeout:.0f} s: {component.log_tail()} "
                                f"(log: {component.log})")

    @staticmethod
    def _get(url: str, context: ssl.SSLContext | None) -> int:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def _watch(self) -> None:
        while not self._stopping.wait(0.25):
            for component in self.components:
                assert component.process is not None
                code = component.process.poll()
                if code is None or component.name in self._paused:
                    continue
                if self._stopping.is_set():
                    return
                self.failure = (f"{component.name} (pid {component.process.pid}) died with exit code {code}; "
                                f"the control plane was stopped: {component.log_tail(3)} (log: {component.log})")
                print(f"controlplane: {self.failure}", file=sys.stderr, flush=True)
                for callback in self._failure_callbacks:
                    with contextlib.suppress(Exception):
                        callback(self.failure)
                self.stop()
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a real control plane on loopback until interrupted.")
    parser.add_argument("--bin", type=Path, required=True, help="the folder `make controlplane` printed")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the admin kubeconfig")
    parser.add_argument("--port", type=int, default=0, help="kube-apiserver's port (default: a free one)")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plane = ControlPlane(args.bin, args.work_dir, port=args.port)
    try:
        plane.start()
    except ControlPlaneError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    plane.write_kubeconfig(args.kubeconfig)
    print(json.dumps({"url": plane.url, "kubeconfig": str(args.kubeconfig),
                      "ready_seconds": round(plane.timings.total, 2), "pids": plane.pids()}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5) and plane.failure is None:
        pass
    plane.stop()
    return 1 if plane.failure else 0


if __name__ == "__main__":
    sys.exit(main())
