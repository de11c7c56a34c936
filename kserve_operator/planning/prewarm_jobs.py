"""The preloader Job of one node, its deterministic name, and what its Pods say about it.

The name is a function of the ModelPrewarm, the node and a hash of everything the Job runs
(image, arguments, environment, resources, tolerations, limits): a restart in the middle of a
reconcile computes the same name and finds the Job it already created (a create answers 409).
A changed spec gives a new hash, hence a new Job, and the old one is stale.

The outcome comes from the preloader's termination message: its JSON result
`{"model","files","bytes","seconds":{...,"total"},"gbps","device","cache","version",...}` or its
JSON error `{"model","error","message","exit_code"}`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.resources.prewarm import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_NODE,
    ANNOTATION_OWNER,
    ANNOTATION_TARGET_VERSION,
    LABEL_HOSTNAME,
    LABEL_PREWARM,
    LABEL_PREWARM_NAMESPACE,
    LABEL_PREWARM_UID,
    LABEL_SPEC_HASH,
    MANAGED_BY,
    PrewarmPlatform,
    PrewarmSpec,
)
from kserve_operator.resources.prewarm_conditions import PrewarmPhase

CONTAINER = "preloader"
CACHE_MOUNT_PATH = "/cache"  # the preloader image's cache directory (Dockerfile.gpu)
TERMINATION_LOG = "/dev/termination-log"
PRELOADER_UID = 10001  # Dockerfile.gpu's USER
# Kept a day after finishing: the status records the outcome within seconds, and the status
# (not the Job) is what later reconciles read once the Job is gone.
TTL_SECONDS_AFTER_FINISHED = 86400
MAX_NAME = 63  # the Job's name is the value of its Pods' job-name label
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclasses.dataclass(frozen=True)
class JobTemplate:
    """Everything a Job runs except the node: hashed into its name.

    The Job runs in the platform's namespace (`platform.namespace`), not the ModelPrewarm's: an
    owner reference cannot cross namespaces, so whose it is lives in labels (namespace, name,
    uid), and a finalizer on the ModelPrewarm deletes it."""

    owner_namespace: str
    prewarm: str
    owner_uid: str
    spec: PrewarmSpec
    platform: PrewarmPlatform
    env: tuple[dict[str, Any], ...]
    target_version: str = ""  # set on a re-warm Job: the model version it should bring
    attempt: int = 0  # the retry of a node whose earlier Jobs failed: 0 for the first

    @property
    def namespace(self) -> str:
        return self.platform.namespace

    def owner_labels(self) -> dict[str, str]:
        return {**MANAGED_BY, LABEL_PREWARM: self.prewarm, LABEL_PREWARM_NAMESPACE: self.owner_namespace,
                LABEL_PREWARM_UID: self.owner_uid}

    def pod_spec(self) -> dict[str, Any]:
        spec, platform = self.spec, self.platform
        args = ["--device", spec.device, "--cache-dir", CACHE_MOUNT_PATH]
        if platform.cache_max_bytes is not None:
            args += ["--cache-max-bytes", str(platform.cache_max_bytes)]
        # A cache hit is checked against S3's ETags first, so a re-warm brings a new version.
        args += ["--termination-log", TERMINATION_LOG, spec.storage_uri]
        container: dict[str, Any] = {
            "name": CONTAINER,
            "image": platform.image,
            "args": args,
            "env": [dict(var) for var in self.env],
            "resources": spec.resources,
            "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT_PATH},
                             {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 (an emptyDir)
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": PRELOADER_UID,
                "runAsGroup": PRELOADER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                # The one exception to Pod Security's "restricted" profile: a node-local cache.
                # The path is a platform setting; no tenant field reaches it.
                {"name": "cache", "hostPath": {"path": platform.cache_path, "type": "DirectoryOrCreate"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            ],
        }
        if spec.tolerations:
            pod["tolerations"] = [t.to_dict() for t in spec.tolerations]
        return pod

    def job_spec(self) -> dict[str, Any]:
        return {
            "backoffLimit": self.spec.backoff_limit,
            "activeDeadlineSeconds": self.spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
        }

    def spec_hash(self) -> str:
        """Ten hex digits over what the Job runs and whose it is; the node is added by the name."""
        # The owner's uid too: a ModelPrewarm deleted and created again under the same name never
        # meets its predecessor's Jobs (still being garbage-collected) under the same names.
        material = json.dumps(
            {"pod": self.pod_spec(), "job": self.job_spec(), "revision": self.spec.revision, "owner": self.owner_uid},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(material.encode()).hexdigest()[:10]


def job_name(prewarm: str, node: str, spec_hash: str, target_version: str = "", attempt: int = 0) -> str:
    """`<prewarm>-<node>-<hash>`, cut to 63 characters, DNS-1123, unique per (node, spec, target,
    attempt); the spec hash covers the owner's uid, so two tenants' same names never meet."""
    material = f"{prewarm}\0{node}\0{spec_hash}\0{target_version}" + (f"\0{attempt}" if attempt else "")
    digest = hashlib.sha256(material.encode()).hexdigest()[:10]
    readable = _NOT_DNS.sub("-", f"{prewarm}-{node}".lower()).strip("-")
    prefix = readable[: MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{prefix}-{digest}" if prefix else f"p-{digest}"


def build_job(template: JobTemplate, *, node: str, hostname: str) -> dict[str, Any]:
    """The batch/v1 Job warming `node`, pinned there by its hostname label, owned by the ModelPrewarm."""
    spec_hash = template.spec_hash()
    labels = {**template.owner_labels(), LABEL_SPEC_HASH: spec_hash}
    pod = template.pod_spec()
    pod["nodeSelector"] = {LABEL_HOSTNAME: hostname}
    annotations = {ANNOTATION_NODE: node, ANNOTATION_OWNER: f"{template.owner_namespace}/{template.prewarm}"}
    if template.target_version:
        annotations[ANNOTATION_TARGET_VERSION] = template.target_version
    if template.attempt:
        annotations[ANNOTATION_ATTEMPT] = str(template.attempt)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(template.prewarm, node, spec_hash, template.target_version, template.attempt),
            "namespace": template.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            **template.job_spec(),
            "template": {"metadata": {"labels": template.owner_labels()}, "spec": pod},
        },
    }


@dataclasses.dataclass(frozen=True)
class NodeProgress:
    """A node's state as its Job and Pods show it, with the preloader's figures when it finished."""

    phase: str
    result: Mapping[str, Any] | None = None
    reason: str = ""
    message: str = ""
    finished_at: str = ""

    @property
    def version(self) -> str:
        return str((self.result or {}).get("version") or "")


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            if isinstance(terminated, Mapping):
                return terminated
            last = (status.get("lastState") or {}).get("terminated")
            return last if isinstance(last, Mapping) else None
    return None


def parse_message(text: str) -> Mapping[str, Any] | None:
    """The preloader's JSON line; with FallbackToLogsOnError the message may be log lines, so
    the last line that parses as a JSON object wins."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _condition(job: Mapping[str, Any], type: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") == type and cond.get("status") == "True":
            return dict(cond)
    return None


def _by_start(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(pods, key=lambda p: (str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                                       str((p.get("metadata") or {}).get("name") or "")))


def _error_text(message: Mapping[str, Any] | None, terminated: Mapping[str, Any]) -> tuple[str, str]:
    if message is not None and message.get("error"):
        return str(message["error"]), str(message.get("message") or "")
    reason = str(terminated.get("reason") or "Error")
    return reason, f"exit code {terminated.get('exitCode')}: {str(terminated.get('message') or '').strip()[-500:]}"


def node_progress(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> NodeProgress:
    """Warm with the result of the Pod that succeeded; Failed with the last preloader error once
    the Job gave up (backoffLimit, activeDeadlineSeconds); else Warming (a Pod runs or failed and
    will be retried) or Pending (nothing ran yet)."""
    ordered = _by_start(pods)
    if _condition(job, "Complete") is not None:
        for pod in reversed(ordered):
            terminated = _terminated(pod)
            if terminated is not None and terminated.get("exitCode") == 0:
                result = parse_message(str(terminated.get("message") or ""))
                if result is not None and "error" not in result:
                    return NodeProgress(PrewarmPhase.WARM, result=result,
                                        finished_at=str(terminated.get("finishedAt") or ""))
                return NodeProgress(PrewarmPhase.WARM, reason="NoResult", message="the preloader left no JSON result",
                                    finished_at=str(terminated.get("finishedAt") or ""))
        return NodeProgress(PrewarmPhase.WARM, reason="NoResult", message="the Job completed; its Pods are gone")
    failed_pods = [(pod, t) for pod in ordered if (t := _terminated(pod)) is not None and t.get("exitCode") != 0]
    gave_up = _condition(job, "Failed")
    if gave_up is not None:
        if failed_pods:
            _, terminated = failed_pods[-1]
            reason, message = _error_text(parse_message(str(terminated.get("message") or "")), terminated)
            return NodeProgress(PrewarmPhase.FAILED, reason=reason, message=message,
                                finished_at=str(terminated.get("finishedAt") or ""))
        return NodeProgress(PrewarmPhase.FAILED, reason=str(gave_up.get("reason") or "JobFailed"),
                            message=str(gave_up.get("message") or "the Job failed"))
    running = any((pod.get("status") or {}).get("phase") == "Running" for pod in ordered)
    if failed_pods:
        _, terminated = failed_pods[-1]
        reason, message = _error_text(parse_message(str(terminated.get("message") or "")), terminated)
        return NodeProgress(PrewarmPhase.WARMING, reason=reason,
                            message=f"attempt {len(failed_pods)} failed, retrying: {message}")
    return NodeProgress(PrewarmPhase.WARMING if running else PrewarmPhase.PENDING)
