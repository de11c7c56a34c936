"""SIMULATED kubelet: a bound Pod's container runs as a LOCAL PROCESS on this machine.

Only images registered as local (``register_image``: an argv prefix standing for the image's
ENTRYPOINT, plus the image's ENV) run; ``command[0]`` must be registered too
(``register_command``) when the pod spec sets ``command``, or the container fails with the
runtime's "executable file not found" StartError, as a real one would for a missing binary.

What the container sees, as a real kubelet would give it:

* its environment: ``envFrom`` (ConfigMaps, Secrets, with ``prefix``), then ``env`` (``value``
  with ``$(VAR)`` expansion, ``valueFrom.secretKeyRef`` / ``configMapKeyRef`` / ``fieldRef``:
  metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'],
  metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP,
  status.podIP), over the image's ENV and ``HOSTNAME``. A missing Secret, ConfigMap or key
  that is not ``optional`` leaves the container waiting with ``CreateContainerConfigError``
  and the kubelet's message, and it starts once the object appears (as the kubelet retries);
* its volumes, as local directories: ``hostPath`` -> ``<node root>/<path>`` (one tree per
  simulated node: Jobs on one node share it, two nodes never do), ``emptyDir`` -> a per-pod
  directory, ``secret`` / ``configMap`` -> a per-pod directory holding the keys as files.

THE ONE LIBERTY: a local process cannot see a mount at its ``mountPath``. So every argv
element and env value from the pod spec or the registered image (its ENTRYPOINT's arguments,
its ENV) that is a ``mountPath`` or starts with one (also after ``--flag=``), or that is the
container's ``terminationMessagePath`` (default ``/dev/termination-log``), is REWRITTEN to the
local path it maps to. A program that finds a path any other way (a default in its code, a
config file's content) sees the host's path: pass such paths in argv or env (e.g. register
the image as ``[python, "-m", "tool", "--termination-log", "/dev/termination-log"]``).

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
import base64
import binascii
import contextlib
import copy
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster import errors
from devcluster.nodes import node_address
from devcluster.store import ObjectStore, now_rfc3339

logger = logging.getLogger("devcluster.kubelet")

_PODS = ("", "pods")
_NODES = ("", "nodes")
MAX_MESSAGE_BYTES = 4096  # kubelet: MaxContainerTerminationMessageLength
MAX_LOG_MESSAGE_BYTES = 2048  # kubelet: MaxContainerTerminationMessageLogLength
MAX_LOG_MESSAGE_LINES = 80  # kubelet: MaxContainerTerminationMessageLogLines
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
_HOST_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")


@dataclass(frozen=True)
class LocalImage:
    """What a registered image stands for: its ENTRYPOINT as a local argv, and its ENV."""

    entrypoint: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


class ContainerWaiting(Exception):
    """The container cannot start yet: the kubelet's waiting ``reason`` and ``message``."""

    def __init__(self, reason: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry  # whether a Secret / ConfigMap appearing can unblock it


class ContainerStartError(Exception):
    """The runtime could not start the process (exit code 128, reason ``StartError``)."""


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    fallback_to_logs: bool
    grace_seconds: float


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    grace_seconds: float
    killed: bool = False


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``."""
    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _REFERENCE.sub(substitute, value)


def translate(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """Rewrite a container path (or ``--flag=path``) under a mount to the local path (the one liberty)."""
    for mount_path, local in mounts:
        prefix = mount_path.rstrip("/")
        if prefix and (value == prefix or value.startswith(prefix + "/")):
            return str(local) + value[len(prefix):]
    if value.startswith("-") and "=" in value:
        flag, _, rest = value.partition("=")
        translated = translate(rest, mounts)
        if translated != rest:
            return f"{flag}={translated}"
    return value


def _in_image(argv: Sequence[str], mounts: Sequence[tuple[str, Path]]) -> list[str]:
    """A registered ENTRYPOINT: its arguments (not the local executable) are container paths too."""
    return [*argv[:1], *(translate(part, mounts) for part in argv[1:])]


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + signal


def _read_message(path: Path) -> str:
    """The kubelet's ``tail.ReadAtMost``: the LAST 4096 bytes of the termination-message file."""
    try:
        with path.open("rb") as file:
            file.seek(max(file.seek(0, os.SEEK_END) - MAX_MESSAGE_BYTES, 0))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_bytes().splitlines(keepends=True)[-MAX_LOG_MESSAGE_LINES:]
    except OSError:
        return ""
    return b"".join(lines)[-MAX_LOG_MESSAGE_BYTES:].decode(errors="replace")


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
        code = _exit_code(returncode)
        message = _read_message(launch.termination_file)
        if not message and code != 0 and launch.fallback_to_logs:
            message = _log_tail(log_path)
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
        meta, spec = pod["metadata"], pod.get("spec") or {}
        container = (spec.get("containers") or [{}])[0]
        pod_dir = self.work_dir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        self._logs[(meta["namespace"], meta["name"])] = pod_dir / "log"
        (pod_dir / "log").touch()
        mounts = self._mounts(pod, container, pod_dir)
        termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        termination_file = pod_dir / "termination-log"
        termination_file.write_bytes(b"")
        mounts.append((termination_path, termination_file))
        mounts.sort(key=lambda mount: len(mount[0]), reverse=True)

        with self._lock:
            image = self._images.get(container.get("image") or "")
            commands = dict(self._commands)
        if image is None:
            raise ContainerStartError(f"image {container.get('image')!r} is not registered as a local image")
        declared = self._resolve_env(pod, container)
        env = {name: os.environ[name] for name in _HOST_ENV if name in os.environ}
        env.update({"HOME": str(pod_dir), "HOSTNAME": meta["name"], "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(self.api_port)})
        env.update({name: translate(value, mounts) for name, value in image.env.items()})
        env.update({name: translate(value, mounts) for name, value in declared.items()})

        command = [translate(expand(str(part), declared), mounts) for part in container.get("command") or []]
        args = [translate(expand(str(part), declared), mounts) for part in container.get("args") or []]
        if command:
            prefix = commands.get(command[0])
            if prefix is None:
                raise ContainerStartError(
                    "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
                    f'runc create failed: unable to start container process: exec: "{command[0]}": '
                    "executable file not found in $PATH: unknown")
            argv = [*_in_image(prefix, mounts), *command[1:], *args]
        else:
            argv = [*_in_image(image.entrypoint, mounts), *args]
        working_dir = container.get("workingDir")
        cwd = Path(translate(working_dir, mounts)) if working_dir else pod_dir
        if not cwd.is_dir():
            cwd = pod_dir
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        return Launch(argv, env, cwd, termination_file,
                      container.get("terminationMessagePolicy") == "FallbackToLogsOnError", grace)

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._store.objects[("", kind)].get((namespace, name))

    def _secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self._object("secrets", namespace, name)
        if secret is None:
            return None
        data: dict[str, str] = {}
        for key, value in (secret.get("data") or {}).items():
            try:
                data[key] = base64.b64decode(str(value), validate=True).decode(errors="replace")
            except (binascii.Error, ValueError):
                data[key] = str(value)
        data.update({key: str(value) for key, value in (secret.get("stringData") or {}).items()})
        return data

    def _config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        config_map = self._object("configmaps", namespace, name)
        if config_map is None:
            return None
        return {key: str(value) for key, value in (config_map.get("data") or {}).items()}

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        return self._secret_data(namespace, name) if kind == "Secret" else self._config_map_data(namespace, name)

    def _resolve_env(self, pod: dict[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            kind, ref = ("ConfigMap", source.get("configMapRef")) if source.get("configMapRef") else \
                ("Secret", source.get("secretRef") or {})
            data = self._lookup(kind, namespace, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerWaiting("CreateContainerConfigError",
                                       f'{kind.lower()} "{ref.get("name", "")}" not found', retry=True)
            env.update({f"{source.get('prefix') or ''}{key}": value for key, value in data.items()})
        for variable in container.get("env") or []:
            name = variable.get("name", "")
            source = variable.get("valueFrom")
            if not source:
                env[name] = expand(str(variable.get("value", "")), env)
                continue
            if "secretKeyRef" in source or "configMapKeyRef" in source:
                kind = "Secret" if "secretKeyRef" in source else "ConfigMap"
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                data = self._lookup(kind, namespace, ref.get("name", ""))
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    ref_name = ref.get("name", "")
                    problem = f'{kind.lower()} "{ref_name}" not found' if data is None else \
                        f"couldn't find key {ref.get('key')} in {kind} {namespace}/{ref_name}"
                    raise ContainerWaiting("CreateContainerConfigError", problem, retry=True)
                env[name] = data[ref["key"]]
            elif "fieldRef" in source:
                env[name] = self._field(pod, str((source.get("fieldRef") or {}).get("fieldPath", "")))
            else:
                raise ContainerWaiting("CreateContainerConfigError",
                                       f"env {name}: this valueFrom is not simulated by devcluster", retry=False)
        return env

    def _field(self, pod: dict[str, Any], path: str) -> str:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
                  "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
                  "status.hostIP": status.get("hostIP", ""), "status.podIP": status.get("podIP", "")}
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise ContainerWaiting("CreateContainerConfigError", f"fieldRef {path!r} is not simulated by devcluster",
                               retry=False)

    def _mounts(self, pod: dict[str, Any], container: Mapping[str, Any], pod_dir: Path) -> list[tuple[str, Path]]:
        spec = pod.get("spec") or {}
        namespace = pod["metadata"]["namespace"]
        volumes = {volume.get("name"): volume for volume in spec.get("volumes") or []}
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            name = mount.get("name")
            volume = volumes.get(name)
            if volume is None:
                raise ContainerWaiting("CreateContainerConfigError", f'volume "{name}" is not declared', retry=False)
            local = self._volume_dir(volume, namespace, spec.get("nodeName", ""), pod_dir)
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mounts.append((str(mount.get("mountPath", "")), local))
        return mounts

    def _volume_dir(self, volume: Mapping[str, Any], namespace: str, node: str, pod_dir: Path) -> Path:
        name = str(volume.get("name", ""))
        if "hostPath" in volume:
            host_path = str((volume.get("hostPath") or {}).get("path", ""))
            host_type = str((volume.get("hostPath") or {}).get("type") or "")
            local = self.node_root(node) / host_path.lstrip("/")
            if host_type in ("File", "FileOrCreate"):
                local.parent.mkdir(parents=True, exist_ok=True)
                if host_type == "FileOrCreate":
                    local.touch()
            elif host_type == "Directory" and not local.is_dir():
                raise ContainerWaiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{name}" : '
                                       f"hostPath type check failed: {host_path} is not a directory", retry=False)
            else:
                local.mkdir(parents=True, exist_ok=True)
            return local
        local = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            return local
        for kind, field_name, ref_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            if field_name in volume:
                source = volume.get(field_name) or {}
                data = self._lookup(kind, namespace, str(source.get(ref_key, "")))
                if data is None and not source.get("optional"):
                    raise ContainerWaiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{name}" : '
                                           f'{kind.lower()} "{source.get(ref_key, "")}" not found', retry=True)
                local.mkdir(parents=True, exist_ok=True)
                items = source.get("items") or [{"key": key, "path": key} for key in data or {}]
                for item in items:
                    if (data or {}).get(item.get("key")) is not None:
                        target = local / item.get("path", item.get("key"))
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text((data or {})[item["key"]])
                return local
        kinds = sorted(set(volume) - {"name"})
        raise ContainerWaiting("ContainerCreating",
                               f'volume "{name}": {", ".join(kinds) or "this"} volumes are not simulated by devcluster',
                               retry=False)

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
