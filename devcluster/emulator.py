"""The emulated Kubernetes cluster that tests, the demo and the benchmark run the operator against.

``EmulatedCluster`` serves ``ApiServerEmulator`` (kmock's ``KubernetesEmulator`` extended with
the semantics the operator relies on, see server.py and store.py) on 127.0.0.1 from a
background thread with its own event loop, with the SIMULATED controllers of simulation.py:
Deployments (status only), Nodes (``add_node`` / ``remove_node``; nodes.py), and Jobs, which
run as real local processes for images registered as local (jobs.py, kubelet.py) and are
status only otherwise. ``wait_quiet`` and ``wait_for`` replace sleeps in tests.

The HTTP listener is a plain aiohttp low-level server: kmock's own ``Server`` patches
aiohttp's resolver process-wide, which would leak into an operator running in the same
process and into other clusters started side by side.

Run it standalone (for the demo or manual poking)::

    python -m devcluster.emulator --port 8001 --kubeconfig /tmp/kc --crds manifests/crds
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp.web
import yaml

from devcluster.client import ApiError, ClusterClient
from devcluster.faults import FaultRule
from devcluster.nodes import node_body, ready_condition
from devcluster.requestlog import RequestLog, RequestRecord
from devcluster.resources import load_crd_documents, resource_from_crd
from devcluster.server import ApiServerEmulator
from devcluster.simulation import Simulation
from devcluster.store import ObjectStore
from devcluster.waiting import wait_for

T = TypeVar("T")

__all__ = ["ApiError", "ClusterClient", "EmulatedCluster", "RequestRecord", "main"]

logger = logging.getLogger("devcluster")


class EmulatedCluster:
    """The extended kmock emulator on 127.0.0.1, served from a background thread with its own event loop."""

    def __init__(self, crd_paths: Iterable[Path] = (), *, simulate: bool = True, port: int = 0,
                 ready_delay: float = 0.2, watch_history: int = 2000, bookmark_interval: float = 5.0,
                 work_dir: Path | None = None, local_images: Mapping[str, Sequence[str]] | None = None,
                 local_commands: Mapping[str, Sequence[str]] | None = None, max_processes: int = 4,
                 job_retry_delay: float = 0.0, cel_rules: bool = True) -> None:
        """``local_images`` / ``local_commands``: see ``Simulation.register_local_image`` / ``_command``;
        ``max_processes``: how many local pod processes run at once; ``work_dir``: where node roots,
        pod directories and logs go (a temporary directory, removed on stop, when not given);
        ``job_retry_delay``: the first delay before a failed Job pod is replaced (then doubling);
        ``cel_rules``: refuse custom resources that break their CRD's CEL rules
        (``x-kubernetes-validations``) as the real server does (the default); ``False`` only for a
        test that must store an object a real server would refuse."""
        by_name = {doc["metadata"]["name"]: doc for doc in load_crd_documents(crd_paths)}  # the last file wins
        self._crd_documents = list(by_name.values())
        self._simulate = simulate
        self._port = port
        self._ready_delay = ready_delay
        self._watch_history = watch_history
        self._bookmark_interval = bookmark_interval
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._emulator: ApiServerEmulator | None = None
        self._sim: Simulation | None = None
        self.port = 0
        self._started_at = 0.0
        self._work_dir = work_dir
        self._own_work_dir: Path | None = None
        self._local_images = dict(local_images or {})
        self._local_commands = dict(local_commands or {})
        self._max_processes = max_processes
        self._job_retry_delay = job_retry_delay
        self._cel_rules = cel_rules
        self._node_count = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> EmulatedCluster:
        if self._thread is not None:
            raise RuntimeError("The cluster is already started.")
        self._thread = threading.Thread(target=self._run, name="devcluster", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)
        if self._startup_error is not None:
            raise RuntimeError("The emulated cluster failed to start") from self._startup_error
        if not self._started.is_set():
            raise RuntimeError("The emulated cluster did not start within 30 seconds")
        logger.info("Emulated Kubernetes API server at %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        stopping = self._stopping
        self._loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=30)
        self._thread = None
        if self._own_work_dir is not None:
            shutil.rmtree(self._own_work_dir, ignore_errors=True)
            self._own_work_dir = None

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            logger.exception("The emulated cluster crashed")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        store = ObjectStore(history=self._watch_history, cel_rules=self._cel_rules)
        crds = store.resources[("apiextensions.k8s.io", "customresourcedefinitions")]
        for document in self._crd_documents:
            resource_from_crd(document)  # fail loudly on an unusable CRD file
            store.create(crds, None, document, field_validation="Ignore")
        emulator = ApiServerEmulator(store=store, bookmark_interval=self._bookmark_interval)
        self._emulator = emulator
        if self._work_dir is None:
            self._own_work_dir = Path(tempfile.mkdtemp(prefix="devcluster-"))
        self._sim = Simulation(store, asyncio.get_running_loop(), ready_delay=self._ready_delay,
                               enabled=self._simulate, work_dir=self._work_dir or self._own_work_dir,
                               local_images=self._local_images, local_commands=self._local_commands,
                               max_processes=self._max_processes, job_retry_delay=self._job_retry_delay)
        emulator.pod_logs = self._sim.pod_log
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self.port = sock.getsockname()[1]
        self._sim.kubelet.api_port = self.port
        async with emulator:
            server = aiohttp.web.Server(emulator, access_log=None)  # request_log records everything
            runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.SockSite(runner, sock)
            await site.start()
            self._started_at = time.time()
            self._started.set()
            try:
                await self._stopping.wait()
            finally:
                await self._sim.shutdown()
                emulator.close()
                await asyncio.sleep(0.05)  # let the watch streams end cleanly
                await runner.cleanup()

    # ---- access -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sim(self) -> Simulation:
        """The SIMULATED controllers' test controls (hold_ready, complete_job, ...)."""
        if self._sim is None:
            raise RuntimeError("The cluster is not started.")
        return self._sim

    @property
    def request_log(self) -> RequestLog:
        if self._emulator is None:
            raise RuntimeError("The cluster is not started.")
        return self._emulator.request_log

    @property
    def requests(self) -> list[RequestRecord]:
        """A thread-safe snapshot of every request answered so far."""
        return self.request_log.snapshot()

    def count_writes(self, *, user_agent: str | None = None, since: float | None = None,
                     exclude_resources: Iterable[str] = ("events",),
                     resources: Iterable[str] | None = None) -> int:
        """How many POST/PUT/PATCH/DELETE calls (``since`` is a ``time.time()`` value)."""
        return len(self.request_log.writes(user_agent=user_agent, since=since,
                                           exclude_resources=exclude_resources, resources=resources))

    # ---- failures on demand ----------------------------------------------------------------------

    def inject_fault(self, method: str, path: str, *, count: int = 1, status: int = 429,
                     retry_after: int | None = None, user_agent: str | None = None) -> FaultRule:
        """Fail the next ``count`` requests of ``method`` on exactly ``path`` (by a client whose
        User-Agent starts with ``user_agent``, if given) with ``status`` and, if given, a
        ``Retry-After`` of that many seconds. The rule's ``answered`` counts the failures so far."""
        if self._emulator is None:
            raise RuntimeError("The cluster is not started.")
        return self._emulator.faults.add(FaultRule(method=method, path=path, count=count, status=status,
                                                   retry_after=retry_after, user_agent=user_agent))

    def clear_faults(self) -> None:
        if self._emulator is not None:
            self._emulator.faults.clear()

    # ---- simulated nodes -------------------------------------------------------------------------

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 taints: Iterable[Mapping[str, str]] = (), gpus: int = 0,
                 capacity: Mapping[str, str | int] | None = None,
                 allocatable: Mapping[str, str | int] | None = None, ready: bool = True) -> dict[str, Any]:
        """Register a simulated Node (see nodes.py) and return it as stored; pending pods may now bind."""
        self._node_count += 1
        body = node_body(name, labels=labels, taints=taints, gpus=gpus, capacity=capacity,
                         allocatable=allocatable, ready=ready,
                         address=f"10.0.{self._node_count // 250}.{self._node_count % 250 + 1}")
        status = body.pop("status")

        def create() -> dict[str, Any]:
            store = self._store()
            nodes = store.resources[("", "nodes")]
            store.create(nodes, None, body, field_validation="Ignore")
            return store.write_status(nodes, None, name, status) or store.get(nodes, None, name)
        result: dict[str, Any] = self.call(create)
        return result

    def remove_node(self, name: str) -> None:
        """Delete a Node; the pod GC then fails and deletes the pods bound to it (their processes die)."""
        def delete() -> None:
            store = self._store()
            store.delete(store.resources[("", "nodes")], None, name)
        self.call(delete)

    def set_node_ready(self, name: str, ready: bool) -> dict[str, Any]:
        """Flip a Node's Ready condition (nothing is evicted from a NotReady node)."""
        def update() -> dict[str, Any]:
            store = self._store()
            nodes = store.resources[("", "nodes")]
            status = copy.deepcopy(store.get(nodes, None, name).get("status") or {})
            status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"] + \
                [ready_condition(ready)]
            return store.write_status(nodes, None, name, status) or store.get(nodes, None, name)
        result: dict[str, Any] = self.call(update)
        return result

    def node_root(self, name: str) -> Path:
        """The local directory standing for a node's root filesystem (``hostPath`` volumes live under it)."""
        return self.sim.kubelet.node_root(name)

    def pod_log(self, namespace: str, name: str) -> str | None:
        """A pod's log (stdout and stderr of its local process), ``None`` when none ran."""
        return self.sim.pod_log(namespace, name)

    def _store(self) -> ObjectStore:
        if self._emulator is None:
            raise RuntimeError("The cluster is not started.")
        return self._emulator.store

    # ---- waiting ----------------------------------------------------------------------------------

    def wait_quiet(self, quiet_for: float = 0.5, *, timeout: float = 10.0, user_agent: str | None = None,
                   exclude_resources: Iterable[str] = ("events",), interval: float = 0.05) -> None:
        """Return once no write call (POST/PUT/PATCH/DELETE; by ``user_agent`` prefix if given) was
        seen for ``quiet_for`` seconds: since the latest such write, or since the cluster started
        when there was none. A write still in flight is not quiet.

        Writes of the simulated controllers go straight to the store and do not count; wait for
        their results with ``wait_for``. On timeout: ``AssertionError`` listing the last writes.
        """
        deadline = time.monotonic() + timeout
        while True:
            last = self.request_log.last_writes(1, user_agent=user_agent, exclude_resources=exclude_resources)
            busy_at = self._started_at if not last else time.time() if last[0].status is None else last[0].timestamp
            if time.time() - busy_at >= quiet_for:
                return
            if time.monotonic() >= deadline:
                recent = self.request_log.last_writes(10, user_agent=user_agent,
                                                      exclude_resources=exclude_resources)
                lines = "\n".join(f"  {time.time() - r.timestamp:6.2f}s ago {r.method} {r.path}"
                                  f"{'?' + r.query if r.query else ''} -> {r.status} ({r.user_agent})"
                                  for r in recent)
                who = f" from {user_agent!r}" if user_agent else ""
                raise AssertionError(f"the cluster saw writes{who} within every {quiet_for}s window for "
                                     f"{timeout}s; the last writes:\n{lines}")
            time.sleep(interval)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.05,
                 message: str | Callable[[], str] = "") -> T:
        """``devcluster.waiting.wait_for``: poll ``predicate`` until it is truthy, and return its value."""
        return wait_for(predicate, timeout, interval=interval, message=message)

    def client(self, user_agent: str = "devcluster-client") -> ClusterClient:
        return ClusterClient(self.url, user_agent=user_agent)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (e.g. to inspect the store) and return its result."""
        if self._loop is None:
            raise RuntimeError("The cluster is not started.")

        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def compact_watch_history(self, before: Callable[[ObjectStore], Any] | None = None) -> None:
        """Force 410 Gone on every watch: run ``before`` on the store (writes that no open watch
        will deliver), then compact the history and cut the streams (``ObjectStore.compact_history``),
        in one turn of the server's loop."""
        def compact() -> None:
            if before is not None:
                before(self._store())
            self._store().compact_history()
        self.call(compact)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for this cluster (plain http, a dummy token) that kopf and kubectl accept."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devcluster", "cluster": {"server": self.url}}],
            "users": [{"name": "devcluster", "user": {"token": "devcluster"}}],
            "contexts": [{"name": "devcluster",
                          "context": {"cluster": "devcluster", "user": "devcluster", "namespace": namespace}}],
            "current-context": "devcluster",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.emulator",
                                     description="Run the emulated Kubernetes API server until Ctrl-C.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the server here")
    parser.add_argument("--crds", type=Path, action="append", default=[],
                        help="a CRD YAML file or a directory of them (repeatable)")
    parser.add_argument("--no-simulation", action="store_true", help="do not simulate Deployment/Job controllers")
    parser.add_argument("--ready-delay", type=float, default=0.2)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cluster = EmulatedCluster(args.crds, simulate=not args.no_simulation, port=args.port,
                              ready_delay=args.ready_delay)
    cluster.start()
    if args.kubeconfig:
        cluster.write_kubeconfig(args.kubeconfig)
        print(f"kubeconfig written to {args.kubeconfig}", flush=True)
    print(f"Emulated Kubernetes API server listening at {cluster.url} (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
