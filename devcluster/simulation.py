"""SIMULATED controllers: stand-ins for kube-controller-manager, kube-scheduler and the kubelet.

* Deployments: after ``ready_delay`` seconds, ``status.replicas``, ``updatedReplicas``,
  ``readyReplicas``, ``availableReplicas`` follow ``spec.replicas`` (zero counts omitted, as
  the real controller does), ``observedGeneration`` follows ``metadata.generation``, and the
  ``Available`` / ``Progressing`` conditions are set, all through the ``/status`` path so that
  watchers see a MODIFIED event. ``hold_ready(ns, name, ready=n)`` caps the ready count. No
  ReplicaSets or Pods are created and nothing runs.
* Jobs of LOCAL IMAGES (``register_local_image``, or ``local_images`` on the cluster) run for
  real: jobs.py creates, schedules and retries their Pods, kubelet.py runs each Pod's
  container as a local process. See those modules for what is and is not simulated.
* Other Jobs, STATUS ONLY: after ``ready_delay`` a Pod is created for the Job (owned by it,
  with the job-name labels, on the node it is pinned to or ``devcluster-node``, even if no
  such Node exists) and the Job becomes ``active``; it then stays active until a test calls
  ``complete_job(...)`` (or ``auto_complete_jobs(...)`` was set), which marks the Pod
  Succeeded/Failed with a termination message and the Job Complete/Failed. Nothing runs.
* Nodes (the pod garbage collector): when a Node is deleted, its unfinished Pods get
  ``phase: Failed`` with ``DisruptionTarget=True/DeletionByPodGC`` and are deleted (a local
  process is killed), as kube-controller-manager's pod GC does with orphaned pods.

Controls are thread-safe: tests call them from their own thread.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import secrets
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import errors
from devcluster.jobs import ProcessJobController
from devcluster.kubelet import LocalKubelet
from devcluster.resources import ResourceDef
from devcluster.store import ObjectStore, WatchEvent, now_rfc3339

logger = logging.getLogger("devcluster.simulation")

_DEPLOYMENTS = ("apps", "deployments")
_JOBS = ("batch", "jobs")
_PODS = ("", "pods")
_NODES = ("", "nodes")
_CONFIGURATION = (("", "secrets"), ("", "configmaps"))


@dataclass(frozen=True)
class JobOutcome:
    succeeded: bool
    message: str = ""
    exit_code: int | None = None


class Simulation:
    """SIMULATION of the Deployment and Job controllers (and the kubelet), with test controls."""

    def __init__(self, store: ObjectStore, loop: asyncio.AbstractEventLoop, *, ready_delay: float = 0.2,
                 enabled: bool = True, work_dir: Path | None = None,
                 local_images: Mapping[str, Sequence[str]] | None = None,
                 local_commands: Mapping[str, Sequence[str]] | None = None, max_processes: int = 4,
                 job_retry_delay: float = 0.0) -> None:
        self._store = store
        self._loop = loop
        self.ready_delay = ready_delay
        self.enabled = enabled
        self._lock = threading.Lock()
        self._ready_holds: dict[tuple[str, str], int] = {}
        self._job_outcomes: dict[tuple[str, str], JobOutcome] = {}
        self._auto_job_outcome: JobOutcome | None = None
        self._pending: dict[tuple[tuple[str, str], str, str], asyncio.TimerHandle] = {}
        self._status_only_jobs: set[str] = set()
        self.kubelet = LocalKubelet(store, loop, work_dir or Path(tempfile.mkdtemp(prefix="devcluster-")),
                                    max_processes=max_processes, images=local_images, commands=local_commands)
        self.jobs = ProcessJobController(store, loop, self.kubelet, retry_delay=job_retry_delay)
        store.listeners.append(self._on_event)
        if enabled:
            logger.info("SIMULATION: Deployment and Job controllers are simulated; only Jobs of registered local "
                        "images run, as local processes.")

    # ---- controls (any thread) ----------------------------------------------------------------------

    def hold_ready(self, namespace: str, name: str, ready: int) -> None:
        """Cap a Deployment's ready (and available) replicas at ``ready`` until ``release``."""
        with self._lock:
            self._ready_holds[(namespace, name)] = ready
        self._kick_threadsafe(_DEPLOYMENTS, namespace, name)

    def release(self, namespace: str, name: str) -> None:
        """Let a held Deployment become fully ready again."""
        with self._lock:
            self._ready_holds.pop((namespace, name), None)
        self._kick_threadsafe(_DEPLOYMENTS, namespace, name)

    def register_local_image(self, image: str, entrypoint: Sequence[str], *,
                             env: Mapping[str, str] | None = None) -> None:
        """Run Jobs whose first container uses ``image`` as local processes: ``entrypoint`` stands for
        the image's ENTRYPOINT (the container's ``args`` follow it), ``env`` for its ENV."""
        self.kubelet.register_image(image, entrypoint, env)

    def register_local_command(self, name: str, argv: Sequence[str]) -> None:
        """What a container's ``command[0] == name`` runs locally (the rest of ``command`` and ``args`` follow)."""
        self.kubelet.register_command(name, argv)

    def pod_log(self, namespace: str, name: str) -> str | None:
        """stdout and stderr of a pod's local process (``None`` if none ran)."""
        return self.kubelet.log(namespace, name)

    async def shutdown(self) -> None:
        await self.kubelet.shutdown()

    def complete_job(self, namespace: str, name: str, *, succeeded: bool = True, message: str = "",
                     exit_code: int | None = None) -> None:
        """Finish a Job: its Pod terminates with ``message`` as the termination message."""
        with self._lock:
            self._job_outcomes[(namespace, name)] = JobOutcome(succeeded, message, exit_code)
        self._kick_threadsafe(_JOBS, namespace, name)

    def auto_complete_jobs(self, *, succeeded: bool | None = True, message: str = "") -> None:
        """Make every (current and future) Job finish on its own; ``succeeded=None`` turns it off."""
        with self._lock:
            self._auto_job_outcome = None if succeeded is None else JobOutcome(succeeded, message)
        self._loop.call_soon_threadsafe(self._kick_all_jobs)

    def _kick_all_jobs(self) -> None:
        for (namespace, name) in list(self._store.objects.get(_JOBS, {})):
            self._schedule(_JOBS, namespace, name, 0.0)

    # ---- event plumbing (the server's loop) -----------------------------------------------------------

    def _kick_threadsafe(self, resource_key: tuple[str, str], namespace: str, name: str) -> None:
        self._loop.call_soon_threadsafe(self._schedule, resource_key, namespace, name, 0.0)

    def _on_event(self, resource: ResourceDef, event: WatchEvent) -> None:
        """Store listener: runs inside a write, so every action is deferred to the loop."""
        if not self.enabled:
            return
        meta = event.obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        if resource.key == _PODS and event.type == "DELETED":
            self._loop.call_soon(self._pod_deleted, event.obj)
        elif resource.key == _PODS:
            self._loop.call_soon(self.jobs.pod_changed, event.obj)
        elif resource.key == _NODES:
            self._loop.call_soon(self._node_changed, event)
        elif resource.key in _CONFIGURATION and event.type != "DELETED":
            self._loop.call_soon(self.kubelet.retry_blocked, namespace)
        elif resource.key in (_DEPLOYMENTS, _JOBS) and event.type != "DELETED":
            runs = resource.key == _JOBS and self._runs_locally(event.obj)
            self._schedule(resource.key, namespace, name, 0.0 if runs else self.ready_delay)

    def _runs_locally(self, job: dict[str, Any]) -> bool:
        """Whether a Job runs as local processes; decided once, so a later registration changes no Job."""
        uid = job["metadata"]["uid"]
        if uid in self._status_only_jobs:
            return False
        if self.jobs.handles(job):
            return True
        self._status_only_jobs.add(uid)
        return False

    def _pod_deleted(self, pod: dict[str, Any]) -> None:
        self.kubelet.kill(pod["metadata"].get("namespace", ""), pod["metadata"]["name"])
        self.jobs.pod_deleted(pod)

    def _node_changed(self, event: WatchEvent) -> None:
        if event.type != "DELETED":
            self.jobs.nodes_changed()
            return
        node = event.obj["metadata"]["name"]
        pods = self._store.resources[_PODS]
        for pod in list(self._store.objects[_PODS].values()):
            meta = pod["metadata"]
            if (pod.get("spec") or {}).get("nodeName") != node or meta.get("deletionTimestamp"):
                continue
            status = copy.deepcopy(pod.get("status") or {})
            if status.get("phase") not in ("Succeeded", "Failed"):
                stamp = now_rfc3339()
                status["phase"] = "Failed"
                status["conditions"] = [c for c in status.get("conditions") or []
                                        if c.get("type") != "DisruptionTarget"] + [
                    {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                     "message": "PodGC: node no longer exists", "lastProbeTime": None, "lastTransitionTime": stamp}]
                self._store.write_status(pods, meta["namespace"], meta["name"], status)
            logger.info("SIMULATION: pod GC deletes %s/%s (node %s is gone)", meta["namespace"], meta["name"], node)
            try:
                self._store.delete(pods, meta["namespace"], meta["name"])
            except errors.ApiStatusError:
                continue

    def _schedule(self, resource_key: tuple[str, str], namespace: str, name: str, delay: float) -> None:
        key = (resource_key, namespace, name)
        if key in self._pending:
            if delay > 0:
                return
            self._pending.pop(key).cancel()
        self._pending[key] = self._loop.call_later(delay, self._reconcile, resource_key, namespace, name)

    def _reconcile(self, resource_key: tuple[str, str], namespace: str, name: str) -> None:
        self._pending.pop((resource_key, namespace, name), None)
        if not self.enabled:
            return
        obj = self._store.objects.get(resource_key, {}).get((namespace, name))
        if obj is None:
            return
        try:
            if resource_key == _DEPLOYMENTS:
                self._reconcile_deployment(obj)
            elif self._runs_locally(obj):
                self.jobs.reconcile(obj)
            else:
                self._reconcile_job(obj)
        except Exception:
            logger.exception("SIMULATION: failed to reconcile %s %s/%s", resource_key[1], namespace, name)

    # ---- the Deployment controller --------------------------------------------------------------------

    def _reconcile_deployment(self, deployment: dict[str, Any]) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        namespace, name = meta.get("namespace", ""), meta["name"]
        replicas = int(spec.get("replicas", 1))
        with self._lock:
            hold = self._ready_holds.get((namespace, name))
        ready = replicas if hold is None else max(0, min(hold, replicas))
        max_unavailable = spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable", "25%")
        if isinstance(max_unavailable, str) and max_unavailable.endswith("%"):
            max_unavailable = math.floor(replicas * int(max_unavailable[:-1]) / 100)
        available = ready >= replicas - int(max_unavailable)
        old_status = deployment.get("status") or {}
        status: dict[str, Any] = {"observedGeneration": meta.get("generation", 1)}
        for field, value in (("replicas", replicas), ("updatedReplicas", replicas), ("readyReplicas", ready),
                             ("availableReplicas", ready), ("unavailableReplicas", replicas - ready)):
            if value:
                status[field] = value
        complete = ready == replicas
        status["conditions"] = [
            self._condition(old_status, "Available", available,
                            "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                            "Deployment has minimum availability." if available
                            else "Deployment does not have minimum availability."),
            self._condition(old_status, "Progressing", True,
                            "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                            f'ReplicaSet "{name}" has successfully progressed.' if complete
                            else f'ReplicaSet "{name}" is progressing.'),
        ]
        if status != old_status:
            logger.debug("SIMULATION: Deployment %s/%s has %d/%d ready replicas", namespace, name, ready, replicas)
            self._store.write_status(self._store.resources[_DEPLOYMENTS], namespace, name, status)

    @staticmethod
    def _condition(old_status: dict[str, Any], kind: str, value: bool, reason: str, message: str) -> dict[str, Any]:
        old = next((c for c in old_status.get("conditions") or [] if c.get("type") == kind), None)
        text = "True" if value else "False"
        stamp = now_rfc3339()
        if old is not None and old.get("status") == text and old.get("reason") == reason \
                and old.get("message") == message:
            return dict(old)
        return {"type": kind, "status": text, "reason": reason, "message": message,
                "lastUpdateTime": stamp,
                "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == text else stamp}

    # ---- the Job controller and the kubelet ------------------------------------------------------------

    def _job_pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"]["uid"]
        return [pod for pod in self._store.objects[_PODS].values()
                if any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences") or [])]

    def _reconcile_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        namespace, name = meta.get("namespace", ""), meta["name"]
        status = copy.deepcopy(job.get("status") or {})
        if meta.get("deletionTimestamp") or any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                                for c in status.get("conditions") or []):
            return
        pods = self._job_pods(job)
        if not pods:
            pods = [self._create_job_pod(job)]
        with self._lock:
            outcome = self._job_outcomes.get((namespace, name)) or self._auto_job_outcome
        if outcome is None:
            if status.get("active") != len(pods) or "startTime" not in status:
                status.update({"active": len(pods), "ready": len(pods), "startTime": status.get("startTime")
                               or now_rfc3339(), "uncountedTerminatedPods": {}})
                self._store.write_status(self._store.resources[_JOBS], namespace, name, status)
            return
        for pod in pods:
            self._terminate_pod(pod, outcome)
        stamp = now_rfc3339()
        status.pop("active", None)
        status["ready"] = 0
        status.setdefault("startTime", stamp)
        if outcome.succeeded:
            status["succeeded"] = int(spec.get("completions", 1))
            status["completionTime"] = stamp
            status["conditions"] = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": stamp,
                 "lastTransitionTime": stamp},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": stamp,
                 "lastTransitionTime": stamp}]
        else:
            status["failed"] = int(spec.get("backoffLimit", 6)) + 1
            status["conditions"] = [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastProbeTime": stamp,
                 "lastTransitionTime": stamp},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit", "lastProbeTime": stamp,
                 "lastTransitionTime": stamp}]
        logger.info("SIMULATION: Job %s/%s %s", namespace, name, "succeeded" if outcome.succeeded else "failed")
        self._store.write_status(self._store.resources[_JOBS], namespace, name, status)

    def _create_job_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta, template = job["metadata"], (job.get("spec") or {}).get("template") or {}
        pod_spec = copy.deepcopy(template.get("spec") or {})
        node = pod_spec.get("nodeName") or (pod_spec.get("nodeSelector") or {}).get("kubernetes.io/hostname") \
            or "devcluster-node"
        pod_spec["nodeName"] = node
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
                       "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]})
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-{suffix}", "namespace": meta.get("namespace"),
                         "labels": labels,
                         "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": pod_spec,
        }
        pods = self._store.resources[_PODS]
        pod, _ = self._store.create(pods, meta.get("namespace"), body, field_validation="Ignore")
        stamp = now_rfc3339()
        status = {"phase": "Running", "startTime": stamp, "hostIP": "10.0.0.1", "podIP": "10.244.0.10",
                  "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": stamp}],
                  "containerStatuses": [
                      {"name": c.get("name"), "image": c.get("image"), "ready": True, "restartCount": 0,
                       "started": True, "state": {"running": {"startedAt": stamp}}}
                      for c in pod_spec.get("containers") or []]}
        return self._store.write_status(pods, meta.get("namespace"), pod["metadata"]["name"], status) or pod

    def _terminate_pod(self, pod: dict[str, Any], outcome: JobOutcome) -> None:
        stamp = now_rfc3339()
        exit_code = outcome.exit_code if outcome.exit_code is not None else (0 if outcome.succeeded else 1)
        containers = (pod.get("spec") or {}).get("containers") or []
        statuses = []
        for index, container in enumerate(containers):
            terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                          "startedAt": stamp, "finishedAt": stamp}
            if index == 0 and outcome.message:
                terminated["message"] = outcome.message
            statuses.append({"name": container.get("name"), "image": container.get("image"), "ready": False,
                             "restartCount": 0, "started": False, "state": {"terminated": terminated}})
        status = dict(pod.get("status") or {})
        status.update({"phase": "Succeeded" if outcome.succeeded else "Failed", "containerStatuses": statuses,
                       "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted",
                                       "lastTransitionTime": stamp}]})
        meta = pod["metadata"]
        self._store.write_status(self._store.resources[_PODS], meta.get("namespace"), meta["name"], status)
