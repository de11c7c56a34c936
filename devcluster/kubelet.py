"""SIMULATED kubelet: a bound Pod's container runs as a LOCAL PROCESS on this machine.

Only images registered as local (``register_image``: an argv prefix standing for the image's
ENTRYPOINT, plus the image's ENV) run; ``command[0]`` must be registered too
(``register_command``) when the pod spec sets ``command``, or the container fails with the
runtime's "executable file not found" StartError, as a real one would for a missing binary.

What the container sees (environment, volumes, THE ONE LIBERTY of rewritten mount paths) is
devcluster/containers.py's ``prepare_launch``, shared with the process kubelet of controlplane/.

When the process exits, the pod's status gets phase ``Succeeded`` / ``Failed`` and
``state.terminated`` (exitCode, reason ``Completed`` / ``Error``, 128+signal when killed;
message: the termination-message file, its last 4096 bytes, or with
``terminationMessagePolicy: FallbackToLogsOnError`` and an empty file after a failure the
log's last 80 lines, at most 2048 bytes: the kubelet's limits). stdout and stderr are the
pod log. At most ``max_processes`` run at once; the others wait as ``ContainerCreating``.

NOT simulated: more than the first container (init and sidecar containers are not run),
image pulls, ``restartPolicy`` (a container is never restarted in its pod), probes, resource
limits (no cgroups: a process may use the whole machine), ``readOnly`` mounts, users and
security contexts, ``resourceFieldRef``, projected / PVC / other volume kinds (the container
waits with a message saying so), a root filesystem (``workingDir`` works only inside a
mount; otherwise the process starts in its per-pod directory), the network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import errors
from devcluster.containers import (
    ContainerStartError,
    ContainerWaiting,
    Launch,
    LocalImage,
    Runtime,
    exit_code,
    object_data,
    prepare_launch,
    termination_message,
)
from devcluster.nodes import node_address
from devcluster.store import ObjectStore, now_rfc3339

logger = logging.getLogger("devcluster.kubelet")

_PODS = ("", "pods")
_NODES = ("", "nodes")


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    grace_seconds: float
    killed: bool = False


class LocalKubelet:
    """Runs bound pods of registered images as local processes (see the module docstring)."""

    def __init__(self, store: ObjectStore, loop: asyncio.AbstractEventLoop, work_dir: Path, *,
                 max_processes: int = 4, api_port: int = 0,
                 images: Mapping[str, Sequence[str]] | None = None,
                 commands: Mapping[str, Sequence[str]] | None = None) -> None:
        if max_processes < 1:
            raise ValueError("max_processes must be at least 1")
        self._store = store
        self._loop = loop
        self.work_dir = work_dir
        self.api_port = api_port
        self._lock = threading.Lock()
        self._images = {image: LocalImage(tuple(argv)) for image, argv in (images or {}).items()}
        self._commands = {name: tuple(argv) for name, argv in (commands or {}).items()}
        self._slots = asyncio.Semaphore(max_processes)
        self._running: dict[tuple[str, str], _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked: dict[tuple[str, str], str] = {}  # waiting for a Secret / ConfigMap: pod -> uid
        self._logs: dict[tuple[str, str], Path] = {}
        self._next_ip = 10
        #: Called on the server's loop with the pod after its container terminated.
        self.on_exit: Callable[[dict[str, Any]], None] = lambda pod: None
        self.peak_running = 0

    # ---- registration (any thread) -------------------------------------------------------------

    def register_image(self, image: str, entrypoint: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._images[image] = LocalImage(tuple(entrypoint), dict(env or {}))

    def register_command(self, name: str, argv: Sequence[str]) -> None:
        with self._lock:
            self._commands[name] = tuple(argv)

    def runs_image(self, image: str) -> bool:
        with self._lock:
            return image in self._images

    def node_root(self, node: str) -> Path:
        return self.work_dir / "nodes" / node

    def log(self, namespace: str, name: str) -> str | None:
        path = self._logs.get((namespace, name))
        if path is None:
            return None
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running_count(self) -> int:
        return len(self._running)

    # ---- lifecycle (the server's loop) -------------------------------------------------------------

    def start(self, pod: dict[str, Any]) -> None:
        """Run a bound pod: ``ContainerCreating`` now, ``Running`` once a process slot is free."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        self._blocked.pop(key, None)
        pod = self._write_status(pod, "Pending", self._waiting_status(pod, "ContainerCreating", "")) or pod
        task = self._loop.create_task(self._run(key, meta["uid"]))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("SIMULATION: the kubelet failed on a pod", exc_info=task.exception())

    def kill(self, namespace: str, name: str) -> None:
        """The pod is gone: SIGTERM its process group, SIGKILL after the grace period."""
        self._blocked.pop((namespace, name), None)
        running = self._running.get((namespace, name))
        if running is None or running.killed:
            return
        running.killed = True
        pid = running.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)

        def force() -> None:
            if running.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self._loop.call_later(running.grace_seconds, force)

    def retry_blocked(self, namespace: str) -> None:
        """A Secret or ConfigMap changed: containers waiting on configuration try again."""
        for (pod_namespace, name), uid in list(self._blocked.items()):
            if pod_namespace != namespace:
                continue
            pod = self._current((pod_namespace, name), uid)
            self._blocked.pop((pod_namespace, name), None)
            if pod is not None:
                self.start(pod)

    async def shutdown(self) -> None:
        """Kill every process (the cluster stops) and wait for them."""
        for running in list(self._running.values()):
            running.killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.process.pid, signal.SIGKILL)
        for task in list(self._tasks):
            task.cancel()
        for running in list(self._running.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running.process.wait(), timeout=5)

    # ---- one pod ------------------------------------------------------------------------------

    def _current(self, key: tuple[str, str], uid: str) -> dict[str, Any] | None:
        pod = self._store.objects[_PODS].get(key)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return None
        return pod

    async def _run(self, key: tuple[str, str], uid: str) -> None:
        pod = self._current(key, uid)
        if pod is None:
            return
        try:
            launch = self._prepare(pod)
        except ContainerWaiting as waiting:
            self._write_status(pod, "Pending", self._waiting_status(pod, waiting.reason, waiting.message))
            if waiting.retry:
                self._blocked[key] = uid
            return
        except (ContainerStartError, OSError) as exc:
            self._finish(pod, 128, "StartError", str(exc), None)
            return
        async with self._slots:
            pod = self._current(key, uid)
            if pod is None:
                return
            log_path = self._logs[key]
            with log_path.open("ab") as log:
                try:
                    process = await asyncio.create_subprocess_exec(
                        *launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, start_new_session=True)
                except OSError as exc:
                    self._finish(pod, 128, "StartError", f"failed to start the local process: {exc}", None)
                    return
            running = _Running(process, launch.grace_seconds)
            self._running[key] = running
            self.peak_running = max(self.peak_running, len(self._running))
            started = now_rfc3339()
            logger.info("SIMULATION: pod %s/%s runs %s (pid %d)", key[0], key[1], launch.argv, process.pid)
            self._write_status(pod, "Running", self._running_status(pod, started, process.pid))
            try:
                returncode = await process.wait()
            finally:
                self._running.pop(key, None)
        pod = self._current(key, uid)
        if pod is None or running.killed:
            return
        code = exit_code(returncode)
        message = termination_message(launch, code, log_path)
        self._finish(pod, code, "Completed" if code == 0 else "Error", message, started)

    def _finish(self, pod: dict[str, Any], code: int, reason: str, message: str, started: str | None) -> None:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": started,
                                      "finishedAt": now_rfc3339()}
        if message:
            terminated["message"] = message
        status = self._base_status(pod)
        status["conditions"] = self._conditions(pod, ready=False, reason="PodCompleted")
        status["containerStatuses"] = [{
            "name": container.get("name"), "image": container.get("image"), "imageID": "", "ready": False,
            "restartCount": 0, "started": False, "state": {"terminated": terminated}}]
        logger.info("SIMULATION: pod %s/%s exited %d (%s)", pod["metadata"]["namespace"], pod["metadata"]["name"],
                    code, reason)
        after = self._write_status(pod, "Succeeded" if code == 0 else "Failed", status)
        if after is not None:
            self.on_exit(after)

    # ---- what the container gets -----------------------------------------------------------------

    def _prepare(self, pod: dict[str, Any]) -> Launch:
        meta = pod["metadata"]
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        pod_dir = self.work_dir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        self._logs[(meta["namespace"], meta["name"])] = pod_dir / "log"
        (pod_dir / "log").touch()
        with self._lock:
            runtime = Runtime(dict(self._images), dict(self._commands), self.node_root, api_port=self.api_port)
        return prepare_launch(pod, container, pod_dir, runtime, self._lookup)

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        if kind not in ("Secret", "ConfigMap"):
            return None  # no service-account tokens in the emulator
        resource = "secrets" if kind == "Secret" else "configmaps"
        return object_data(kind, self._store.objects[("", resource)].get((namespace, name)))

    # ---- status ---------------------------------------------------------------------------------

    def _base_status(self, pod: dict[str, Any]) -> dict[str, Any]:
        status = copy.deepcopy(pod.get("status") or {})
        node = self._store.objects[_NODES].get(("", (pod.get("spec") or {}).get("nodeName", "")))
        host_ip = node_address(node) if node is not None else ""
        if "podIP" not in status:
            self._next_ip += 1
            status["podIP"] = f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 2}"
            status["podIPs"] = [{"ip": status["podIP"]}]
        status.update({"hostIP": host_ip, "hostIPs": [{"ip": host_ip}], "qosClass": "BestEffort"})
        status.setdefault("startTime", now_rfc3339())
        return status

    def _conditions(self, pod: dict[str, Any], *, ready: bool, reason: str = "") -> list[dict[str, Any]]:
        old = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
        stamp = now_rfc3339()
        result = []
        for kind, value in (("PodReadyToStartContainers", True), ("Initialized", True), ("Ready", ready),
                            ("ContainersReady", ready), ("PodScheduled", True)):
            text = "True" if value else "False"
            previous = old.get(kind)
            condition: dict[str, Any] = {"type": kind, "status": text, "lastProbeTime": None,
                                         "lastTransitionTime": previous["lastTransitionTime"]
                                         if previous and previous.get("status") == text else stamp}
            if not value and reason:
                condition["reason"] = reason
            result.append(condition)
        return result

    def _waiting_status(self, pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        waiting = {"reason": reason, **({"message": message} if message else {})}
        status = self._base_status(pod)
        status["conditions"] = self._conditions(pod, ready=False, reason="ContainersNotReady")
        status["containerStatuses"] = [{"name": container.get("name"), "image": container.get("image"),
                                        "imageID": "", "ready": False, "restartCount": 0, "started": False,
                                        "state": {"waiting": waiting}}]
        return status

    def _running_status(self, pod: dict[str, Any], started: str, pid: int) -> dict[str, Any]:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        status = self._base_status(pod)
        status["conditions"] = self._conditions(pod, ready=True)
        status["containerStatuses"] = [{"name": container.get("name"), "image": container.get("image"),
                                        "imageID": "", "containerID": f"local://{pid}", "ready": True,
                                        "restartCount": 0, "started": True,
                                        "state": {"running": {"startedAt": started}}}]
        return status

    def _write_status(self, pod: dict[str, Any], phase: str, status: dict[str, Any]) -> dict[str, Any] | None:
        status["phase"] = phase
        meta = pod["metadata"]
        try:
            return self._store.write_status(self._store.resources[_PODS], meta["namespace"], meta["name"], status)
        except errors.ApiStatusError:
            return None
