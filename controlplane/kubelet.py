"""SIMULATED nodes for a real control plane: a process kubelet.

There is no container runtime on this machine, so Nodes and their Pods come from here, against
the REAL API server, scheduler and controllers:

* ``add_node`` registers a Node (labels, taints, capacity and allocatable with
  ``nvidia.com/gpu``) as a kubelet does, with the node's OWN identity (a client certificate for
  ``system:node:NAME`` in ``system:nodes``), so the Node authorizer and NodeRestriction judge
  every call as they judge a real kubelet's: it reads only the Secrets and ConfigMaps its pods
  reference, and writes only its Node, its Lease and its pods' status. It renews the node's
  Lease in ``kube-node-lease`` and posts the Ready condition; ``stop_node`` stops both (the
  node-lifecycle controller then marks the node Unknown and taints it), ``set_node_ready``
  reports NotReady while still heartbeating, ``remove_node`` kills the node's pods and deletes
  the Node, as a cloud's node removal does.
* It watches the pods the scheduler binds to each node (``fieldSelector=spec.nodeName=NAME``)
  and runs them: init containers in order, then every container, each as a LOCAL PROCESS for
  images registered with ``register_image`` (the real preloader for the preloader image);
  environment, volumes and the one liberty of rewritten mount paths are
  ``devcluster.containers.prepare_launch``. ``restartPolicy`` is honoured (Always, OnFailure
  with back-off and ``restartCount``; Never), exit codes and termination messages are reported
  the kubelet's way, so the real Job controller counts successes and failures.
* A container whose image has NO registered command (memcached, the exporter) is STATUS ONLY:
  reported Running and Ready after ``status_only_delay`` seconds and never run. Tests that rely
  on it say so.
* Deletion: on ``deletionTimestamp`` the processes get SIGTERM, SIGKILL after the pod's grace
  period, the containers' terminated state is posted, and the pod is deleted with grace 0
  (with its uid as a precondition), as the kubelet's status manager does.

NOT simulated: probes (a running container is Ready at once), images and pulls, cgroups and
resource limits, users and security contexts (admission still checks them), pod networking
(pod IPs are made up; Services have no endpoints that route), ``kubectl logs``/``exec`` (read
logs with ``pod_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from controlplane.launch import ControlPlane, die_with_parent
from devcluster.containers import (
    SERVICE_ACCOUNT_TOKEN,
    ContainerStartError,
    ContainerWaiting,
    Launch,
    LocalImage,
    Runtime,
    exit_code,
    object_data,
    prepare_launch,
    referenced_objects,
    termination_message,
)
from devcluster.nodes import node_body, ready_condition

logger = logging.getLogger("controlplane.kubelet")

T = TypeVar("T")
KUBELET_VERSION = "v1.37.2-process-kubelet"
LEASE_SECONDS = 40
MAX_BACKOFF = 10.0
MERGE = "application/merge-patch+json"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeletApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{status}: {message}")
        self.status = status


class NodeClient:
    """The API as one node's identity sees it (its client certificate)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                   params: Mapping[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Accept": "application/json", "User-Agent": "process-kubelet"}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.base_url + path, data=data, headers=headers,
                                        params=dict(params or {})) as response:
            raw = await response.read()
        parsed = json.loads(raw) if raw else None
        if response.status >= 400:
            raise KubeletApiError(response.status, parsed)
        return parsed

    async def get_or_none(self, path: str) -> Any:
        try:
            return await self.call("GET", path)
        except KubeletApiError as exc:
            if exc.status in (403, 404):
                return None
            raise

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[dict[str, Any]]:
        query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "240"}
        async with self.session.get(self.base_url + path, params=query,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as response:
            if response.status >= 400:
                raise KubeletApiError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


@dataclass
class ContainerState:
    """One container as the kubelet reports it."""

    name: str
    image: str
    init: bool
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    ready: bool = False
    restarts: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"name": self.name, "image": self.image, "imageID": "", "ready": self.ready,
                                  "restartCount": self.restarts, "started": "running" in self.state,
                                  "state": self.state, "lastState": self.last_state}
        if self.process is not None:
            status["containerID"] = f"process://{self.process.pid}"
        return status

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")


class PodRun:
    """One pod on one node, from binding to deletion."""

    def __init__(self, kubelet: ProcessKubelet, node: SimulatedNode, pod: dict[str, Any]) -> None:
        self.kubelet = kubelet
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        spec = pod.get("spec") or {}
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.dir: Path = kubelet.work_dir / "pods" / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.inits = [ContainerState(c["name"], c.get("image", ""), True) for c in spec.get("initContainers") or []]
        self.mains = [ContainerState(c["name"], c.get("image", ""), False) for c in spec.get("containers") or []]
        self.pod_ip = kubelet.next_pod_ip()
        self.started = now()
        self.deleting = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._last_written: dict[str, Any] | None = None
        self._objects: dict[tuple[str, str], dict[str, str] | None] = {}
        self._transitions: dict[str, tuple[str, str]] = {}
        self._status_lock = asyncio.Lock()

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    # ---- the pod's life ------------------------------------------------------------------------

    async def run(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        await self.write_status()
        for state, spec in zip(self.inits, self.pod["spec"].get("initContainers") or [], strict=True):
            while True:
                code = await self.run_container(state, spec)
                if code == 0:
                    break
                if self.deleting.is_set() or self.restart_policy == "Never":
                    await self.write_status()
                    return
                await self.back_off(state)
            if self.deleting.is_set():
                return
        containers = self.pod["spec"].get("containers") or []
        await asyncio.gather(*(self.keep_running(state, spec) for state, spec in zip(self.mains, containers,
                                                                                       strict=True)))

    async def keep_running(self, state: ContainerState, spec: Mapping[str, Any]) -> None:
        while not self.deleting.is_set():
            code = await self.run_container(state, spec)
            if self.deleting.is_set():
                return
            if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                return
            await self.back_off(state)

    async def back_off(self, state: ContainerState) -> None:
        """CrashLoopBackOff: 1 s, 2 s, 4 s ... capped (the kubelet's 10 s .. 5 min, shortened)."""
        delay = min(2.0 ** state.restarts, MAX_BACKOFF)
        state.last_state = {"terminated": state.terminated} if state.terminated else state.last_state
        state.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {delay:.0f}s restarting failed container={state.name} "
                                              f"pod={self.name}_{self.namespace}({self.uid})"}}
        state.restarts += 1
        await self.write_status()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.deleting.wait(), delay)

    async def run_container(self, state: ContainerState, spec: Mapping[str, Any]) -> int:
        """Run one container to its end (or, status only, until deletion); its exit code."""
        if self.kubelet.runtime_image(state.image) is None:
            return await self.status_only(state)
        launch = await self.prepare(state, spec)
        if launch is None:
            return -1
        async with self.kubelet.slots:
            if self.deleting.is_set():
                return -1
            log_path = self.log_path(state.name)
            with log_path.open("ab") as log:
                try:
                    state.process = await asyncio.create_subprocess_exec(
                        *launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
                except OSError as exc:
                    return await self.terminate(state, 128, "StartError", f"failed to start the local process: {exc}",
                                                None)
            started = now()
            state.state, state.ready = {"running": {"startedAt": started}}, not state.init
            logger.info("SIMULATION: pod %s/%s container %s runs %s (pid %d)", self.namespace, self.name,
                        state.name, launch.argv, state.process.pid)
            await self.write_status()
            returncode = await state.process.wait()
        code = exit_code(returncode)
        message = termination_message(launch, code, log_path)
        return await self.terminate(state, code, "Completed" if code == 0 else "Error", message, started)

    async def prepare(self, state: ContainerState, spec: Mapping[str, Any]) -> Launch | None:
        """The container's launch; waits (reporting why) while a Secret or ConfigMap it needs is missing."""
        runtime = Runtime(self.kubelet.images_snapshot(), self.kubelet.commands_snapshot(), self.kubelet.node_root,
                          api_port=self.kubelet.api_port)
        while not self.deleting.is_set():
            await self.fetch_objects()
            try:
                return prepare_launch(self.pod, spec, self.dir, runtime, self.lookup)
            except ContainerWaiting as waiting:
                state.state = {"waiting": {"reason": waiting.reason, "message": waiting.message}}
                await self.write_status()
                if not waiting.retry:
                    await self.deleting.wait()
                    return None
            except (ContainerStartError, OSError) as exc:
                await self.terminate(state, 128, "StartError", str(exc), None)
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deleting.wait(), 1.0)
        return None

    async def fetch_objects(self) -> None:
        """GET the Secrets and ConfigMaps the pod references, and request its bound service-account
        token, with the node's identity (the Node authorizer allows exactly these)."""
        for kind, name in referenced_objects(self.pod):
            if kind == SERVICE_ACCOUNT_TOKEN:
                self._objects[(kind, name)] = await self.request_token(name)
                continue
            resource = "secrets" if kind == "Secret" else "configmaps"
            obj = await self.node.client.get_or_none(f"/api/v1/namespaces/{self.namespace}/{resource}/{name}")
            self._objects[(kind, name)] = object_data(kind, obj)

    async def request_token(self, account: str) -> dict[str, str] | None:
        try:
            answer = await self.node.client.call(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                    "expirationSeconds": 3600,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}})
        except KubeletApiError as exc:
            logger.warning("SIMULATION: no token for %s/%s: %s", self.namespace, account, exc)
            return None
        return {"token": str(answer["status"]["token"])}

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        return self._objects.get((kind, name)) if namespace == self.namespace else None

    async def status_only(self, state: ContainerState) -> int:
        """SIMULATION: an image without a registered command is reported Running and Ready, never run."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.deleting.wait(), self.kubelet.status_only_delay)
        if self.deleting.is_set():
            return -1
        state.state, state.ready = {"running": {"startedAt": now()}}, not state.init
        await self.write_status()
        if state.init:
            return await self.terminate(state, 0, "Completed", "", state.state["running"]["startedAt"])
        await self.deleting.wait()
        return -1

    async def terminate(self, state: ContainerState, code: int, reason: str, message: str,
                        started: str | None) -> int:
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": started,
                                      "finishedAt": now()}
        if message:
            terminated["message"] = message
        state.state, state.ready = {"terminated": terminated}, False
        logger.info("SIMULATION: pod %s/%s container %s exited %d (%s)", self.namespace, self.name, state.name, code,
                    reason)
        await self.write_status()
        return code

    async def kill(self, grace: float) -> None:
        """SIGTERM every process group, SIGKILL after ``grace`` seconds; wait for them."""
        self.deleting.set()
        processes = [s.process for s in (*self.inits, *self.mains) if s.process and s.process.returncode is None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        if processes:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in processes], timeout=grace)
            for process in processes:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
            for task in pending:
                with contextlib.suppress(Exception):
                    await task

    async def delete(self, grace: float) -> None:
        """The pod is being deleted: stop it, post the terminated states, then remove the object."""
        await self.kill(grace)
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 5)
        for state in (*self.inits, *self.mains):
            if state.terminated is None and "running" in state.state:
                state.state = {"terminated": {"exitCode": 137 if state.process else 0,
                                              "reason": "Error" if state.process else "Completed",
                                              "startedAt": state.state["running"].get("startedAt"),
                                              "finishedAt": now()}}
                state.ready = False
        with contextlib.suppress(KubeletApiError, aiohttp.ClientError):
            await self.write_status()
        with contextlib.suppress(KubeletApiError, aiohttp.ClientError):
            await self.node.client.call("DELETE", self.path, {
                "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}})

    # ---- status ---------------------------------------------------------------------------------

    def phase(self) -> str:
        if any(s.terminated is None or s.terminated.get("exitCode") != 0 for s in self.inits):
            failed = any(s.terminated and s.terminated.get("exitCode") != 0 for s in self.inits)
            return "Failed" if failed and self.restart_policy == "Never" else "Pending"
        if any("running" in s.state for s in self.mains):
            return "Running"
        if self.mains and all(s.terminated is not None for s in self.mains):
            if all(s.terminated.get("exitCode") == 0 for s in self.mains if s.terminated is not None):
                return "Succeeded"
            if self.restart_policy == "Never":
                return "Failed"
        return "Running" if any(s.restarts for s in self.mains) else "Pending"

    def conditions(self, phase: str) -> list[dict[str, Any]]:
        initialized = all(s.terminated is not None and s.terminated.get("exitCode") == 0 for s in self.inits)
        ready = phase == "Running" and all(s.ready for s in self.mains)
        values = {"PodReadyToStartContainers": True, "Initialized": initialized, "ContainersReady": ready,
                  "Ready": ready, "PodScheduled": True}
        result = []
        for kind, value in values.items():
            text = "True" if value else "False"
            previous = self._transitions.get(kind)
            if previous is None or previous[0] != text:
                self._transitions[kind] = (text, now())
            condition: dict[str, Any] = {"type": kind, "status": text, "lastProbeTime": None,
                                         "lastTransitionTime": self._transitions[kind][1]}
            if not value:
                condition["reason"] = "PodCompleted" if phase in ("Succeeded", "Failed") else (
                    "ContainersNotInitialized" if kind == "Initialized" else "ContainersNotReady")
            result.append(condition)
        return result

    async def write_status(self) -> None:
        """PATCH the pod's status as it stands now; one write at a time, so none lands out of order."""
        async with self._status_lock:
            await self._write_status()

    async def _write_status(self) -> None:
        phase = self.phase()
        status: dict[str, Any] = {
            "phase": phase, "conditions": self.conditions(phase), "hostIP": self.node.address,
            "hostIPs": [{"ip": self.node.address}], "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.started, "qosClass": self.pod.get("status", {}).get("qosClass", "BestEffort"),
            "containerStatuses": [s.status() for s in self.mains]}
        if self.inits:
            status["initContainerStatuses"] = [s.status() for s in self.inits]
        if status == self._last_written:
            return
        try:
            await self.node.client.call("PATCH", self.path + "/status", {"status": status}, content_type=MERGE)
            self._last_written = status
        except KubeletApiError as exc:
            if exc.status != 404:  # a pod deleted under us has nothing to report to
                logger.warning("SIMULATION: status of %s/%s not written: %s", self.namespace, self.name, exc)


class SimulatedNode:
    """One registered Node: its identity, heartbeats and the pods bound to it."""

    def __init__(self, name: str, address: str, client: NodeClient) -> None:
        self.name = name
        self.address = address
        self.client = client
        self.ready = True
        self.heartbeating = True
        self.pods: dict[str, PodRun] = {}
        self.tasks: list[asyncio.Task[None]] = []


class ProcessKubelet:
    """Simulated nodes and their pods' processes against a real control plane (module docstring)."""

    def __init__(self, plane: ControlPlane, work_dir: Path, *, images: Mapping[str, Sequence[str]] | None = None,
                 commands: Mapping[str, Sequence[str]] | None = None, max_processes: int = 4,
                 status_only_delay: float = 0.5, heartbeat_seconds: float = 2.0) -> None:
        self.plane = plane
        self.work_dir = work_dir
        self.api_port = plane.port
        self.status_only_delay = status_only_delay
        self.heartbeat_seconds = heartbeat_seconds
        self._lock = threading.Lock()
        self._images = {image: LocalImage(tuple(argv)) for image, argv in (images or {}).items()}
        self._commands = {name: tuple(argv) for name, argv in (commands or {}).items()}
        self._max_processes = max_processes
        self.nodes: dict[str, SimulatedNode] = {}
        self._next_ip = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self.slots: asyncio.Semaphore

    # ---- registration and lifecycle (any thread) --------------------------------------------------

    def register_image(self, image: str, entrypoint: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._images[image] = LocalImage(tuple(entrypoint), dict(env or {}))

    def register_command(self, name: str, argv: Sequence[str]) -> None:
        with self._lock:
            self._commands[name] = tuple(argv)

    def runtime_image(self, image: str) -> LocalImage | None:
        with self._lock:
            return self._images.get(image)

    def images_snapshot(self) -> dict[str, LocalImage]:
        with self._lock:
            return dict(self._images)

    def commands_snapshot(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._commands)

    def node_root(self, node: str) -> Path:
        return self.work_dir / "nodes" / node

    def next_pod_ip(self) -> str:
        self._next_ip += 1
        return f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 2}"

    def start(self) -> ProcessKubelet:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self.slots = asyncio.Semaphore(self._max_processes)
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="process-kubelet", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- nodes (any thread) -----------------------------------------------------------------------

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 taints: Sequence[Mapping[str, str]] = (), gpus: int = 0,
                 capacity: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        """Register a Node with its own identity and start heartbeating it and running its pods."""
        return self._call(self._add_node(name, labels or {}, taints, gpus, capacity or {}))

    def stop_node(self, name: str) -> None:
        """The node is lost: its heartbeats stop and its processes die; the Node object stays."""
        self._call(self._stop_node(name))

    def remove_node(self, name: str) -> None:
        """The node is gone for good: it stops (``stop_node``) and its Node object is deleted."""
        self._call(self._stop_node(name))
        with contextlib.suppress(KubeletApiError):
            self._call(self._admin("DELETE", f"/api/v1/nodes/{name}"))

    def set_node_ready(self, name: str, ready: bool) -> None:
        """The kubelet reports the node Ready or NotReady (it keeps heartbeating)."""
        node = self.nodes[name]
        node.ready = ready
        self._call(self._post_node_status(node))

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str | None:
        for node in list(self.nodes.values()):
            for run in list(node.pods.values()):
                if (run.namespace, run.name) == (namespace, name):
                    wanted = container or run.mains[0].name
                    try:
                        return run.log_path(wanted).read_text(errors="replace")
                    except OSError:
                        return ""
        return None

    @property
    def running_processes(self) -> int:
        return sum(1 for node in self.nodes.values() for run in node.pods.values()
                   for s in (*run.inits, *run.mains) if s.process is not None and s.process.returncode is None)

    # ---- on the kubelet's loop ----------------------------------------------------------------------

    async def _admin(self, method: str, path: str) -> Any:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.plane.ssl_context()))
        try:
            return await NodeClient(self.plane.url, session).call(method, path)
        finally:
            await session.close()

    async def _add_node(self, name: str, labels: Mapping[str, str], taints: Sequence[Mapping[str, str]], gpus: int,
                        capacity: Mapping[str, str | int]) -> dict[str, Any]:
        pair = self.plane.issue_client(f"node-{name}", f"system:node:{name}", ("system:nodes",))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.plane.ssl_context(pair)))
        self._sessions.append(session)
        address = f"127.0.1.{len(self.nodes) + 1}"
        body = node_body(name, labels=labels, taints=taints, gpus=gpus, capacity=capacity, address=address)
        body["status"]["nodeInfo"].update({"kubeletVersion": KUBELET_VERSION,
                                           "containerRuntimeVersion": "process://local"})
        body["status"]["conditions"] = self._conditions(True)
        node = SimulatedNode(name, address, NodeClient(self.plane.url, session))
        created: dict[str, Any] = await node.client.call("POST", "/api/v1/nodes", body)
        self.node_root(name).mkdir(parents=True, exist_ok=True)
        self.nodes[name] = node
        await node.client.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                                            "uid": created["metadata"]["uid"]}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}})
        loop = asyncio.get_running_loop()
        node.tasks = [loop.create_task(self._heartbeat(node)), loop.create_task(self._watch_pods(node))]
        return created

    async def _stop_node(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        node.heartbeating = False
        for task in node.tasks:
            task.cancel()
        for run in list(node.pods.values()):
            await run.kill(0)
            if run.task is not None:
                run.task.cancel()
        node.pods.clear()

    @staticmethod
    def _conditions(ready: bool) -> list[dict[str, str]]:
        stamp = now()
        quiet = [{"type": kind, "status": "False", "reason": reason, "message": message, "lastHeartbeatTime": stamp,
                  "lastTransitionTime": stamp}
                 for kind, reason, message in (
                     ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                     ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                     ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))]
        return [*quiet, {**ready_condition(ready), "lastHeartbeatTime": stamp}]

    async def _post_node_status(self, node: SimulatedNode) -> None:
        await node.client.call("PATCH", f"/api/v1/nodes/{node.name}/status",
                               {"status": {"conditions": self._conditions(node.ready)}}, content_type=MERGE)

    async def _heartbeat(self, node: SimulatedNode) -> None:
        """Renew the Lease every ``heartbeat_seconds``; post the conditions every fifth beat."""
        beat = 0
        while node.heartbeating:
            try:
                await node.client.call("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/"
                                       f"{node.name}", {"spec": {"renewTime": micro_now()}}, content_type=MERGE)
                if beat % 5 == 0:
                    await self._post_node_status(node)
            except (KubeletApiError, aiohttp.ClientError, OSError) as exc:
                logger.debug("SIMULATION: heartbeat of %s failed: %s", node.name, exc)
            beat += 1
            await asyncio.sleep(self.heartbeat_seconds)

    async def _watch_pods(self, node: SimulatedNode) -> None:
        """List then watch the pods bound to the node; relist after an expired watch (410)."""
        selector = {"fieldSelector": f"spec.nodeName={node.name}"}
        while node.heartbeating:
            try:
                listing = await node.client.call("GET", "/api/v1/pods", params=selector)
                for pod in listing.get("items") or []:
                    await self._pod_event(node, "ADDED", pod)
                version = listing["metadata"]["resourceVersion"]
                while node.heartbeating:
                    async for event in node.client.watch("/api/v1/pods", {**selector, "resourceVersion": version}):
                        if event["type"] == "ERROR":
                            raise KubeletApiError(int(event["object"].get("code", 500)), event["object"])
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            await self._pod_event(node, event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except (KubeletApiError, aiohttp.ClientError, OSError, ValueError) as exc:
                logger.debug("SIMULATION: pod watch of %s restarts: %s", node.name, exc)
                await asyncio.sleep(0.5)

    async def _pod_event(self, node: SimulatedNode, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        run = node.pods.get(uid)
        if kind == "DELETED":
            if run is not None:
                node.pods.pop(uid, None)
                await run.kill(0)
            return
        if run is None:
            if meta.get("deletionTimestamp"):
                run = PodRun(self, node, pod)  # deleted before it ran: nothing to stop, only the final delete
                node.pods[uid] = run
                asyncio.get_running_loop().create_task(self._finish_deletion(node, run, 0))
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return  # finished before this kubelet (re)started watching
            run = PodRun(self, node, pod)
            node.pods[uid] = run
            run.task = asyncio.get_running_loop().create_task(run.run())
            return
        run.pod = pod
        if meta.get("deletionTimestamp") and not run.deleting.is_set():
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            run.deleting.set()
            asyncio.get_running_loop().create_task(self._finish_deletion(node, run, grace))

    async def _finish_deletion(self, node: SimulatedNode, run: PodRun, grace: float) -> None:
        await run.delete(grace)
        node.pods.pop(run.uid, None)

    async def _shutdown(self) -> None:
        for name in list(self.nodes):
            await self._stop_node(name)
        for session in self._sessions:
            await session.close()

