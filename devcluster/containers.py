"""What a container gets when a kubelet runs it as a LOCAL PROCESS: argv, environment, mounts.

Shared by the emulator's kubelet (kubelet.py, store-backed) and the process kubelet that runs
against a real API server (controlplane/kubelet.py): both hand ``prepare_launch`` the pod, one
container, the registered images and commands, and a ``lookup`` of the Secrets and ConfigMaps
the pod references; neither knows how the other finds them.

What the container sees, as a real kubelet would give it:

* its environment: ``envFrom`` (ConfigMaps, Secrets, with ``prefix``), then ``env`` (``value``
  with ``$(VAR)`` expansion, ``valueFrom.secretKeyRef`` / ``configMapKeyRef`` / ``fieldRef``:
  metadata.name, metadata.namespace, metadata.uid, metadata.labels['k'],
  metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, status.hostIP,
  status.podIP), over the image's ENV and ``HOSTNAME``. A missing Secret, ConfigMap or key
  that is not ``optional`` raises ``ContainerWaiting`` (``CreateContainerConfigError`` and the
  kubelet's message; ``retry``: it starts once the object appears);
* its volumes, as local directories: ``hostPath`` -> ``<node root>/<path>`` (one tree per
  simulated node: pods on one node share it, two nodes never do), ``emptyDir`` -> a per-pod
  directory, ``secret`` / ``configMap`` -> a per-pod directory holding the keys as files.

THE ONE LIBERTY: a local process cannot see a mount at its ``mountPath``. So every argv
element and env value from the pod spec or the registered image (its ENTRYPOINT's arguments,
its ENV) that is a ``mountPath`` or starts with one (also after ``--flag=``), or that is the
container's ``terminationMessagePath`` (default ``/dev/termination-log``), is REWRITTEN to the
local path it maps to. A program that finds a path any other way (a default in its code, a
config file's content) sees the host's path: pass such paths in argv or env (e.g. register
the image as ``[python, "-m", "tool", "--termination-log", "/dev/termination-log"]``).

* ``projected`` volumes (what the ServiceAccount admission plugin adds): a bound token (the
  ``lookup`` of ``SERVICE_ACCOUNT_TOKEN``: only a kubelet that can request one provides it),
  ConfigMaps, Secrets and downward-API fields, as files.

NOT simulated: image pulls, resource limits (no cgroups), ``readOnly`` mounts, users and
security contexts, ``resourceFieldRef``, PVC and other volume kinds (the container waits with a
message saying so), a root filesystem (``workingDir`` works only inside a mount;
otherwise the process starts in its per-pod directory), the network namespace.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_MESSAGE_BYTES = 4096  # kubelet: MaxContainerTerminationMessageLength
MAX_LOG_MESSAGE_BYTES = 2048  # kubelet: MaxContainerTerminationMessageLogLength
MAX_LOG_MESSAGE_LINES = 80  # kubelet: MaxContainerTerminationMessageLogLines
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
HOST_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")

#: The ``lookup`` kind of a bound token for a ServiceAccount (``{"token": ...}``), for projected volumes.
SERVICE_ACCOUNT_TOKEN = "ServiceAccountToken"
#: ``lookup(kind, namespace, name)``: a Secret's or ConfigMap's data as text (Secrets decoded), or None.
Lookup = Callable[[str, str, str], "dict[str, str] | None"]


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


@dataclass(frozen=True)
class Runtime:
    """What one kubelet knows: its images and commands, where node trees live, the API's port."""

    images: Mapping[str, LocalImage]
    commands: Mapping[str, Sequence[str]]
    node_root: Callable[[str], Path]
    api_host: str = "127.0.0.1"
    api_port: int = 0


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


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + signal


def read_message(path: Path) -> str:
    """The kubelet's ``tail.ReadAtMost``: the LAST 4096 bytes of the termination-message file."""
    try:
        with path.open("rb") as file:
            file.seek(max(file.seek(0, os.SEEK_END) - MAX_MESSAGE_BYTES, 0))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path) -> str:
    try:
        lines = path.read_bytes().splitlines(keepends=True)[-MAX_LOG_MESSAGE_LINES:]
    except OSError:
        return ""
    return b"".join(lines)[-MAX_LOG_MESSAGE_BYTES:].decode(errors="replace")


def termination_message(launch: Launch, code: int, log_path: Path) -> str:
    """The file's last 4096 bytes; with FallbackToLogsOnError and nothing written, the log's tail."""
    message = read_message(launch.termination_file)
    if not message and code != 0 and launch.fallback_to_logs:
        message = log_tail(log_path)
    return message


def object_data(kind: str, obj: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A Secret's data decoded (and its stringData), or a ConfigMap's data; None when there is none."""
    if obj is None:
        return None
    if kind != "Secret":
        return {key: str(value) for key, value in (obj.get("data") or {}).items()}
    data: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True).decode(errors="replace")
        except (binascii.Error, ValueError):
            data[key] = str(value)
    data.update({key: str(value) for key, value in (obj.get("stringData") or {}).items()})
    return data


def referenced_objects(pod: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every (kind, name) of Secret / ConfigMap the pod's containers and volumes reference."""
    spec = pod.get("spec") or {}
    found: set[tuple[str, str]] = set()
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if source.get("configMapRef"):
                found.add(("ConfigMap", str(source["configMapRef"].get("name", ""))))
            if source.get("secretRef"):
                found.add(("Secret", str(source["secretRef"].get("name", ""))))
        for variable in container.get("env") or []:
            value_from = variable.get("valueFrom") or {}
            if value_from.get("secretKeyRef"):
                found.add(("Secret", str(value_from["secretKeyRef"].get("name", ""))))
            if value_from.get("configMapKeyRef"):
                found.add(("ConfigMap", str(value_from["configMapKeyRef"].get("name", ""))))
    for volume in spec.get("volumes") or []:
        if volume.get("secret"):
            found.add(("Secret", str(volume["secret"].get("secretName", ""))))
        if volume.get("configMap"):
            found.add(("ConfigMap", str(volume["configMap"].get("name", ""))))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("configMap"):
                found.add(("ConfigMap", str(source["configMap"].get("name", ""))))
            if source.get("secret"):
                found.add(("Secret", str(source["secret"].get("name", ""))))
            if source.get("serviceAccountToken"):
                found.add((SERVICE_ACCOUNT_TOKEN, str(spec.get("serviceAccountName") or "default")))
    return found


def prepare_launch(pod: dict[str, Any], container: Mapping[str, Any], pod_dir: Path, runtime: Runtime,
                   lookup: Lookup) -> Launch:
    """The local process for one container of ``pod`` (see the module docstring)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    mounts = container_mounts(pod, container, pod_dir, runtime, lookup)
    termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    termination_file = pod_dir / f"termination-log-{container.get('name', '')}"
    termination_file.write_bytes(b"")
    mounts.append((termination_path, termination_file))
    mounts.sort(key=lambda mount: len(mount[0]), reverse=True)

    image = runtime.images.get(container.get("image") or "")
    if image is None:
        raise ContainerStartError(f"image {container.get('image')!r} is not registered as a local image")
    declared = resolve_env(pod, container, lookup)
    env = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
    env.update({"HOME": str(pod_dir), "HOSTNAME": meta["name"], "KUBERNETES_SERVICE_HOST": runtime.api_host,
                "KUBERNETES_SERVICE_PORT": str(runtime.api_port)})
    env.update({name: translate(value, mounts) for name, value in image.env.items()})
    env.update({name: translate(value, mounts) for name, value in declared.items()})

    command = [translate(expand(str(part), declared), mounts) for part in container.get("command") or []]
    args = [translate(expand(str(part), declared), mounts) for part in container.get("args") or []]
    if command:
        prefix = runtime.commands.get(command[0])
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


def resolve_env(pod: dict[str, Any], container: Mapping[str, Any], lookup: Lookup) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = ("ConfigMap", source.get("configMapRef")) if source.get("configMapRef") else \
            ("Secret", source.get("secretRef") or {})
        data = lookup(kind, namespace, ref.get("name", ""))
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
            data = lookup(kind, namespace, ref.get("name", ""))
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                ref_name = ref.get("name", "")
                problem = f'{kind.lower()} "{ref_name}" not found' if data is None else \
                    f"couldn't find key {ref.get('key')} in {kind} {namespace}/{ref_name}"
                raise ContainerWaiting("CreateContainerConfigError", problem, retry=True)
            env[name] = data[ref["key"]]
        elif "fieldRef" in source:
            env[name] = field_value(pod, str((source.get("fieldRef") or {}).get("fieldPath", "")))
        else:
            raise ContainerWaiting("CreateContainerConfigError",
                                   f"env {name}: this valueFrom is not simulated by devcluster", retry=False)
    return env


def field_value(pod: dict[str, Any], path: str) -> str:
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


def container_mounts(pod: dict[str, Any], container: Mapping[str, Any], pod_dir: Path, runtime: Runtime,
                     lookup: Lookup) -> list[tuple[str, Path]]:
    spec = pod.get("spec") or {}
    volumes = {volume.get("name"): volume for volume in spec.get("volumes") or []}
    mounts: list[tuple[str, Path]] = []
    for mount in container.get("volumeMounts") or []:
        name = mount.get("name")
        volume = volumes.get(name)
        if volume is None:
            raise ContainerWaiting("CreateContainerConfigError", f'volume "{name}" is not declared', retry=False)
        local = volume_dir(volume, pod, runtime.node_root(spec.get("nodeName", "")), pod_dir, lookup)
        if mount.get("subPath"):
            local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
        mounts.append((str(mount.get("mountPath", "")), local))
    return mounts


def volume_dir(volume: Mapping[str, Any], pod: dict[str, Any], node_root: Path, pod_dir: Path,
               lookup: Lookup) -> Path:
    name = str(volume.get("name", ""))
    namespace = pod["metadata"]["namespace"]
    if "hostPath" in volume:
        host_path = str((volume.get("hostPath") or {}).get("path", ""))
        host_type = str((volume.get("hostPath") or {}).get("type") or "")
        local = node_root / host_path.lstrip("/")
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
            data = lookup(kind, namespace, str(source.get(ref_key, "")))
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
    if "projected" in volume:
        local.mkdir(parents=True, exist_ok=True)
        for source in (volume.get("projected") or {}).get("sources") or []:
            _project(source, pod, local, lookup, name)
        return local
    kinds = sorted(set(volume) - {"name"})
    raise ContainerWaiting("ContainerCreating",
                           f'volume "{name}": {", ".join(kinds) or "this"} volumes are not simulated by devcluster',
                           retry=False)


def _project(source: Mapping[str, Any], pod: dict[str, Any], local: Path, lookup: Lookup, volume: str) -> None:
    """One source of a projected volume (what the ServiceAccount admission plugin adds to every pod:
    a bound token, the cluster's CA from ``kube-root-ca.crt``, the namespace)."""
    namespace = pod["metadata"]["namespace"]
    files: dict[str, str] = {}
    if "serviceAccountToken" in source:
        token = lookup(SERVICE_ACCOUNT_TOKEN, namespace, str((pod.get("spec") or {}).get("serviceAccountName")
                                                             or "default"))
        if token is None:
            raise ContainerWaiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}" : '
                                   "no service account token could be requested", retry=True)
        files[str(source["serviceAccountToken"].get("path", "token"))] = token["token"]
    for kind, field_name in (("ConfigMap", "configMap"), ("Secret", "secret")):
        if field_name in source:
            ref = source.get(field_name) or {}
            data = lookup(kind, namespace, str(ref.get("name", "")))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerWaiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}" : '
                                       f'{kind.lower()} "{ref.get("name", "")}" not found', retry=True)
            for item in ref.get("items") or [{"key": key, "path": key} for key in data]:
                if item.get("key") in data:
                    files[str(item.get("path", item["key"]))] = data[item["key"]]
    if "downwardAPI" in source:
        for item in (source.get("downwardAPI") or {}).get("items") or []:
            files[str(item.get("path", ""))] = field_value(pod, str((item.get("fieldRef") or {}).get("fieldPath", "")))
    for path, text in files.items():
        target = local / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
