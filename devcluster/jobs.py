"""SIMULATED Job controller (plus scheduler and TTL controller) for Jobs of local images.

A Job whose pod template's first container uses an image registered with the kubelet
(``kubelet.LocalKubelet.register_image``) is run for real: this controller creates its Pods
(``generateName: <job>-``, labels ``batch.kubernetes.io/job-name``, ``job-name``,
``batch.kubernetes.io/controller-uid``, ``controller-uid``, a controller owner reference),
binds each to a Ready node that fits (``nodes.schedule``: the template's ``nodeName`` or
``nodeSelector``, e.g. ``kubernetes.io/hostname``, taints, ``nvidia.com/gpu``) or leaves it
``Pending`` with ``PodScheduled=False/Unschedulable`` until a node fits, and lets the kubelet
run it. From the Pods' outcomes it writes the Job's status as kube-controller-manager does:
``active`` / ``ready`` / ``succeeded`` / ``failed`` (zeros omitted, ``ready`` kept),
``startTime``, ``completionTime``, and the conditions ``SuccessCriteriaMet`` + ``Complete``
(``CompletionsReached``) or ``FailureTarget`` + ``Failed`` (``BackoffLimitExceeded`` once
``failed > backoffLimit``, default 6; ``DeadlineExceeded`` after ``activeDeadlineSeconds``,
whose active pods are deleted and counted as failed). Every retry is a new Pod. A pod lost
without finishing (deleted, or garbage-collected with its node) counts as failed.
``spec.suspend: true`` deletes the active pods (not counted) and sets ``Suspended``; resuming
resets ``startTime``. ``ttlSecondsAfterFinished`` deletes a finished Job (Foreground: its Pods
go first).

NOT simulated: Indexed completion mode, ``podFailurePolicy``, ``successPolicy``,
``backoffLimitPerIndex``, ``podReplacementPolicy``, ``managedBy``, the job-tracking finalizer
on pods, and ``restartPolicy: OnFailure`` restarts in place (treated like ``Never``). The
delay before a retry is ``retry_delay * 2**(failures - 1)`` (the real controller: 10 s
doubling up to 6 min); it is 0 unless set, so tests do not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devcluster import errors
from devcluster.kubelet import LocalKubelet
from devcluster.nodes import gpu_request, schedule
from devcluster.store import ObjectStore, now_rfc3339

logger = logging.getLogger("devcluster.jobs")

_JOBS = ("batch", "jobs")
_PODS = ("", "pods")
_NODES = ("", "nodes")
_TERMINAL = ("Succeeded", "Failed")


@dataclass
class _JobState:
    """What the controller remembers of one Job (by uid) between reconciles."""

    succeeded: int = 0
    failed: int = 0
    counted: set[str] = field(default_factory=set)  # pod uids already in the counts
    not_counted: set[str] = field(default_factory=set)  # pods this controller deleted on suspend
    started_at: float | None = None  # time.time() of startTime, at full precision
    finished_at: float | None = None
    retry_at: float = 0.0


def _parse_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def _condition(old: list[dict[str, Any]], kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    previous = next((c for c in old if c.get("type") == kind), None)
    if previous is not None and (previous.get("status"), previous.get("reason")) == (status, reason):
        return previous
    stamp = now_rfc3339()
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastProbeTime": stamp,
            "lastTransitionTime": stamp}


def owner_uid(obj: dict[str, Any]) -> str | None:
    return next((o.get("uid") for o in obj["metadata"].get("ownerReferences") or []
                 if o.get("kind") == "Job" and o.get("controller")), None)


class ProcessJobController:
    """Jobs of local images: Pods, scheduling, retries, deadlines, suspension, TTL (module docstring)."""

    def __init__(self, store: ObjectStore, loop: asyncio.AbstractEventLoop, kubelet: LocalKubelet, *,
                 retry_delay: float = 0.0) -> None:
        self._store = store
        self._loop = loop
        self._kubelet = kubelet
        self.retry_delay = retry_delay
        self._states: dict[str, _JobState] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        kubelet.on_exit = self.pod_finished

    # ---- which Jobs are ours ------------------------------------------------------------------

    def handles(self, job: dict[str, Any]) -> bool:
        if job["metadata"]["uid"] in self._states:
            return True
        containers = ((((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}])
        return self._kubelet.runs_image(str(containers[0].get("image") or ""))

    # ---- events (the server's loop) -------------------------------------------------------------

    def pod_finished(self, pod: dict[str, Any]) -> None:
        job_uid = owner_uid(pod)
        state = self._states.get(job_uid or "")
        if job_uid is None or state is None:
            return
        self._count(state, pod, succeeded=pod.get("status", {}).get("phase") == "Succeeded")
        self._reconcile_uid(job_uid)

    def pod_changed(self, pod: dict[str, Any]) -> None:
        """A pod of ours changed (e.g. it runs now): the Job's ``active`` / ``ready`` follow."""
        job_uid = owner_uid(pod)
        if job_uid in self._states:
            self._reconcile_uid(job_uid)

    def pod_deleted(self, pod: dict[str, Any]) -> None:
        """A pod went away: if it had not finished (and we did not suspend it), it failed."""
        job_uid = owner_uid(pod)
        state = self._states.get(job_uid or "")
        if job_uid is None or state is None:
            return
        if pod["metadata"]["uid"] not in state.not_counted:  # a pod the kubelet reported is counted already
            self._count(state, pod, succeeded=(pod.get("status") or {}).get("phase") == "Succeeded")
        self._reconcile_uid(job_uid)

    def nodes_changed(self) -> None:
        """Bind pods that were unschedulable, now that the nodes differ."""
        for pod in list(self._store.objects[_PODS].values()):
            if owner_uid(pod) not in self._states or pod["metadata"].get("deletionTimestamp"):
                continue
            status = pod.get("status") or {}
            if status.get("phase") == "Pending" and any(
                    c.get("type") == "PodScheduled" and c.get("status") == "False"
                    for c in status.get("conditions") or []):
                self._bind(pod)

    def _count(self, state: _JobState, pod: dict[str, Any], *, succeeded: bool) -> None:
        uid = pod["metadata"]["uid"]
        if uid in state.counted:
            return
        state.counted.add(uid)
        if succeeded:
            state.succeeded += 1
        else:
            state.failed += 1
            state.retry_at = time.time() + self.retry_delay * 2 ** (state.failed - 1)

    def _reconcile_uid(self, job_uid: str) -> None:
        ref = self._store.uids.get(job_uid)
        if ref is not None and ref[0] == _JOBS:
            job = self._store.objects[_JOBS].get((ref[1], ref[2]))
            if job is not None:
                self.reconcile(job)

    def _later(self, key: tuple[str, str], delay: float, action: Callable[[], None]) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = self._loop.call_later(max(delay, 0.0), action)

    # ---- the Job controller ----------------------------------------------------------------------

    def _pods(self, job_uid: str) -> list[dict[str, Any]]:
        return [pod for pod in self._store.objects[_PODS].values() if owner_uid(pod) == job_uid]

    def reconcile(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
        state = self._states.setdefault(uid, _JobState())
        old_status = job.get("status") or {}
        status = copy.deepcopy(old_status)
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        if meta.get("deletionTimestamp"):
            return
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions):
            self._expire_later(job, state)
            return
        now = time.time()
        active = [pod for pod in self._pods(uid)
                  if (pod.get("status") or {}).get("phase") not in _TERMINAL
                  and not pod["metadata"].get("deletionTimestamp")]

        if spec.get("suspend"):
            for pod in active:
                state.not_counted.add(pod["metadata"]["uid"])
                self._delete_pod(pod)
            state.started_at = None
            status.pop("startTime", None)
            status.pop("active", None)
            status["ready"] = 0
            status["conditions"] = self._set(conditions, _condition(conditions, "Suspended", "True", "JobSuspended",
                                                                   "Job suspended"))
            self._write(job, old_status, status)
            return
        if any(c.get("type") == "Suspended" and c.get("status") == "True" for c in conditions):
            conditions = self._set(conditions, _condition(conditions, "Suspended", "False", "JobResumed",
                                                          "Job resumed"))
            status.pop("startTime", None)
        if not status.get("startTime"):
            state.started_at = now
            status["startTime"] = now_rfc3339()
        started = state.started_at or _parse_time(status.get("startTime")) or now

        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and now - started >= float(deadline):
            for pod in active:
                self._count(state, pod, succeeded=False)
                self._delete_pod(pod)
            self._finish(job, state, old_status, status, conditions, False, "DeadlineExceeded",
                         "Job was active longer than specified deadline")
            return
        if deadline is not None:
            self._later((uid, "deadline"), started + float(deadline) - now, lambda: self._reconcile_uid(uid))

        completions = int(spec.get("completions") or 1)
        if state.failed > int(spec.get("backoffLimit", 6)):
            for pod in active:
                self._delete_pod(pod)
            self._finish(job, state, old_status, status, conditions, False, "BackoffLimitExceeded",
                         "Job has reached the specified backoff limit")
            return
        if state.succeeded >= completions:
            self._finish(job, state, old_status, status, conditions, True, "CompletionsReached",
                         "Reached expected number of succeeded pods")
            return
        wanted = min(int(spec.get("parallelism", 1)), completions - state.succeeded) - len(active)
        if wanted > 0 and now < state.retry_at:
            self._later((uid, "retry"), state.retry_at - now, lambda: self._reconcile_uid(uid))
        elif wanted > 0:
            for _ in range(wanted):
                active.append(self._create_pod(job))
        status["conditions"] = conditions
        if not conditions:
            status.pop("conditions")
        self._counts(status, state, active)
        self._write(job, old_status, status)
        logger.debug("SIMULATION: Job %s/%s: %d active", namespace, name, len(active))

    def _finish(self, job: dict[str, Any], state: _JobState, old_status: dict[str, Any], status: dict[str, Any],
                conditions: list[dict[str, Any]], succeeded: bool, reason: str, message: str) -> None:
        stamp = now_rfc3339()
        state.finished_at = time.time()
        for kind in ("SuccessCriteriaMet", "Complete") if succeeded else ("FailureTarget", "Failed"):
            conditions = self._set(conditions, _condition(conditions, kind, "True", reason, message))
        status["conditions"] = conditions
        if succeeded:
            status["completionTime"] = stamp
        self._counts(status, state, [])
        for timer in ("deadline", "retry"):
            handle = self._timers.pop((job["metadata"]["uid"], timer), None)
            if handle is not None:
                handle.cancel()
        logger.info("SIMULATION: Job %s/%s %s (%s)", job["metadata"]["namespace"], job["metadata"]["name"],
                    "complete" if succeeded else "failed", reason)
        after = self._write(job, old_status, status)
        self._expire_later(after or job, state)

    @staticmethod
    def _set(conditions: list[dict[str, Any]], condition: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in conditions if c.get("type") != condition["type"]] + [condition]

    @staticmethod
    def _counts(status: dict[str, Any], state: _JobState, active: list[dict[str, Any]]) -> None:
        for key, value in (("active", len(active)), ("succeeded", state.succeeded), ("failed", state.failed)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        status["ready"] = sum(1 for pod in active if (pod.get("status") or {}).get("phase") == "Running")
        status["uncountedTerminatedPods"] = {}

    def _write(self, job: dict[str, Any], old_status: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        if status == old_status:
            return job
        meta = job["metadata"]
        return self._store.write_status(self._store.resources[_JOBS], meta["namespace"], meta["name"], status)

    def _expire_later(self, job: dict[str, Any], state: _JobState) -> None:
        """The TTL-after-finished controller: delete the Job (Foreground) ``ttl`` seconds after it finished."""
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        meta = job["metadata"]
        if ttl is None or (meta["uid"], "ttl") in self._timers:
            return
        status = job.get("status") or {}
        failed_at = next((c.get("lastTransitionTime") for c in status.get("conditions") or []
                          if c.get("type") in ("Complete", "Failed")), None)
        finished = state.finished_at or _parse_time(status.get("completionTime") or failed_at) or time.time()
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]

        def expire() -> None:
            current = self._store.objects[_JOBS].get((namespace, name))
            if current is None or current["metadata"]["uid"] != uid:
                return
            logger.info("SIMULATION: TTL controller deletes finished Job %s/%s", namespace, name)
            with contextlib.suppress(errors.ApiStatusError):
                self._store.delete(self._store.resources[_JOBS], namespace, name, propagation="Foreground")
            self._states.pop(uid, None)
        self._later((uid, "ttl"), finished + float(ttl) - time.time(), expire)

    # ---- pods, the scheduler -----------------------------------------------------------------------

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"],
                       "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"]})
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"], "labels": labels,
                         "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        pod, _ = self._store.create(self._store.resources[_PODS], meta["namespace"], body, field_validation="Ignore")
        return self._bind(pod) or pod

    def _bind(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        """Schedule and bind a pod (then the kubelet runs it), or mark it Unschedulable."""
        spec = pod.get("spec") or {}
        meta = pod["metadata"]
        in_use: dict[str, int] = {}
        for other in self._store.objects[_PODS].values():
            node = (other.get("spec") or {}).get("nodeName")
            if node and (other.get("status") or {}).get("phase") not in _TERMINAL \
                    and other["metadata"]["uid"] != meta["uid"]:
                in_use[node] = in_use.get(node, 0) + gpu_request(other.get("spec") or {})
        node, message = schedule(spec, self._store.objects[_NODES].values(), in_use)
        pods = self._store.resources[_PODS]
        if node is None:
            stamp = now_rfc3339()
            status = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastProbeTime": None, "lastTransitionTime": stamp}], "qosClass": "BestEffort"}
            if (pod.get("status") or {}).get("conditions") != status["conditions"]:
                return self._store.write_status(pods, meta["namespace"], meta["name"], status)
            return pod
        if spec.get("nodeName") != node:
            pod, _ = self._store.patch(pods, meta["namespace"], meta["name"], {"spec": {"nodeName": node}},
                                       "application/merge-patch+json", field_validation="Ignore")
        self._kubelet.start(pod)
        return self._store.objects[_PODS].get((meta["namespace"], meta["name"]))

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(errors.ApiStatusError):
            self._store.delete(self._store.resources[_PODS], meta["namespace"], meta["name"])
