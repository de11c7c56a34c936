"""What informers keep (clients/stored_objects.py): the readers give the same answers on the kept
object as on the whole one, so dropping the rest changes no decision.

Each object here is shaped as a real API server returns it (managedFields, kubectl's last-applied
copy, a Node's image list, a Pod's full spec); the pre-warm plan, Node qualification and the
Node fingerprint run on the whole objects and on what an informer keeps of them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from typing import Any

from kserve_operator.clients.stored_objects import (
    LAST_APPLIED,
    node_for_store,
    pod_for_store,
    strip_bookkeeping,
    transform_for,
)
from kserve_operator.controllers.prewarm import node_fingerprint
from kserve_operator.planning.node_selection import NodeView
from kserve_operator.planning.prewarm import Observed, PrewarmPlan, plan_prewarm
from kserve_operator.resources.kinds import DEPLOYMENT, JOB, NODE, POD
from kserve_operator.resources.prewarm import PrewarmPlatform
from tests.unit.operator.prewarm_shapes import finished_job, node, pod, result

NOW = datetime.datetime(2026, 12, 2, 1, 0, tzinfo=datetime.UTC)
PLATFORM = PrewarmPlatform(namespace="kserve-prewarm", image="preloader:gpu")
MANAGED_FIELDS = [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                   "time": "2026-12-02T00:00:00Z", "fieldsType": "FieldsV1",
                   "fieldsV1": {"f:status": {"f:conditions": {".": {}}, "f:phase": {}}}}]


def as_served(obj: dict[str, Any], **extra_meta: Any) -> dict[str, Any]:
    """`obj` with the server's bookkeeping: managedFields, kubectl's last-applied copy, a resourceVersion."""
    served = copy.deepcopy(obj)
    meta = served.setdefault("metadata", {})
    meta.update({"resourceVersion": "4711", "uid": f"uid-{meta.get('name')}", "managedFields": MANAGED_FIELDS,
                 **extra_meta})
    meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(obj)
    return served


def served_node(name: str, **kwargs: Any) -> dict[str, Any]:
    raw = as_served(node(name, **kwargs))
    raw["status"]["images"] = [{"names": [f"registry.example/image-{i}@sha256:{i:064x}"], "sizeBytes": 10 ** 9}
                               for i in range(40)]
    raw["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    raw["status"]["capacity"] = dict(raw["status"]["allocatable"])
    return raw


def served_pod(base: dict[str, Any], *, node_name: str | None = None, **extra_meta: Any) -> dict[str, Any]:
    """A Pod as the server has it: containers, volumes, tolerations, a nodeSelector, maybe bound."""
    raw = as_served(base, **extra_meta)
    raw["spec"] = {"containers": [{"name": "preloader", "image": "preloader:gpu", "args": ["--device", "cuda"],
                                   "env": [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
                                       "name": "copy", "key": "k"}}}],
                                   "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                   "volumes": [{"name": "cache", "hostPath": {"path": "/var/cache/kserve-prewarm"}}],
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                   "nodeSelector": {"kubernetes.io/hostname": node_name or "gpu-1"}}
    if node_name:
        raw["spec"]["nodeName"] = node_name
    return raw


def test_bookkeeping_goes_and_what_a_conditional_write_needs_stays() -> None:
    served = as_served({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "cache", "namespace": "ns", "labels": {"app": "cache"},
                                     "annotations": {"cache.serverless.xyz/last-scale-time": "t"},
                                     "ownerReferences": [{"kind": "Memcached", "name": "cache", "uid": "u"}],
                                     "finalizers": ["f"], "generation": 3},
                        "spec": {"replicas": 2}, "status": {"readyReplicas": 2}},
                       deletionTimestamp="2026-12-02T00:00:00Z")
    before = copy.deepcopy(served)
    kept = transform_for(DEPLOYMENT)(served)
    assert served == before  # the object handed in (a write's answer, kopf's body) is untouched
    meta = kept["metadata"]
    assert "managedFields" not in meta and meta["annotations"] == {"cache.serverless.xyz/last-scale-time": "t"}
    for field in ("resourceVersion", "uid", "generation", "labels", "ownerReferences", "finalizers",
                  "deletionTimestamp", "name", "namespace"):
        assert meta[field] == before["metadata"][field]
    assert (kept["spec"], kept["status"]) == (before["spec"], before["status"])
    # A Job (its spec is compared by the plans) keeps everything but the bookkeeping.
    job = as_served({"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {"x": 1}}}})
    assert transform_for(JOB)(job)["spec"] == job["spec"]


def test_objects_without_bookkeeping_are_kept_as_they_are() -> None:
    plain = {"metadata": {"name": "a", "resourceVersion": "1", "annotations": {"k": "v"}}, "spec": {}}
    assert strip_bookkeeping(plain) == plain and strip_bookkeeping(plain) is not plain
    assert strip_bookkeeping({}) == {}
    assert pod_for_store({"metadata": {"name": "p"}, "spec": {"containers": []}})["spec"] == {}


def test_a_node_reads_the_same_without_its_images() -> None:
    nodes = [served_node("gpu-1"), served_node("gpu-2", gpus=0, unschedulable=True),
             served_node("gpu-3", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}], labels={"pool": "a"}),
             served_node("gpu-4", gpus=4)]
    nodes[3]["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    for raw in nodes:
        kept = transform_for(NODE)(raw)
        assert "images" not in kept["status"] and "managedFields" not in kept["metadata"]
        assert NodeView.parse(kept) == NodeView.parse(raw)
        assert node_fingerprint(kept) == node_fingerprint(raw)
    assert transform_for(NODE) is node_for_store


def _plan(prewarm: dict[str, Any], nodes: list[dict[str, Any]], jobs: list[dict[str, Any]],
          pods: dict[str, list[dict[str, Any]]], serving: list[dict[str, Any]], *, kept: bool) -> PrewarmPlan:
    keep_node = transform_for(NODE) if kept else (lambda o: o)
    keep_pod = transform_for(POD) if kept else (lambda o: o)
    keep_job = transform_for(JOB) if kept else (lambda o: o)
    observed = Observed(prewarm=prewarm, nodes=[NodeView.parse(keep_node(n)) for n in nodes],
                        jobs=[keep_job(j) for j in jobs],
                        pods={name: [keep_pod(p) for p in group] for name, group in pods.items()},
                        service_account={"metadata": {"name": "default"}}, secrets={},
                        serving_pods=[keep_pod(p) for p in serving])
    return plan_prewarm(observed, platform=PLATFORM, now=NOW)


def _same(left: PrewarmPlan, right: PrewarmPlan) -> bool:
    return json.dumps(dataclasses.asdict(left), sort_keys=True, default=str) == \
        json.dumps(dataclasses.asdict(right), sort_keys=True, default=str)


def test_the_prewarm_plan_is_the_same_on_kept_pods_and_nodes() -> None:
    """Pending, running, failed and completed Job pods, and predictor pods bound, pending, finished and
    deleting: every plan step decides the same on what the informers keep."""
    prewarm = {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
               "metadata": {"name": "torch-mnist", "namespace": "ml", "uid": "uid-1", "generation": 1,
                            "labels": {"serving.serverless.xyz/inferenceservice": "torch-mnist"}},
               "spec": {"storageUri": "s3://models/mnist", "nodeCount": 2,
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    nodes = [served_node(f"gpu-{i}") for i in range(1, 5)]
    serving = [served_pod({"metadata": {"name": "p1"}, "status": {"phase": "Running"}}, node_name="gpu-3"),
               served_pod({"metadata": {"name": "p2"}, "status": {"phase": "Pending"}}),
               served_pod({"metadata": {"name": "p3"}, "status": {"phase": "Succeeded"}}, node_name="gpu-1"),
               served_pod({"metadata": {"name": "p4"}, "status": {"phase": "Running"}}, node_name="gpu-2",
                          deletionTimestamp="2026-12-02T00:00:00Z")]
    first = _plan(prewarm, nodes, [], {}, serving, kept=False)
    assert first.create and _same(first, _plan(prewarm, nodes, [], {}, serving, kept=True))

    jobs = [as_served(job) for job in first.create]
    names = [j["metadata"]["name"] for j in jobs]
    steps: list[tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]] = [
        (jobs, {}),  # created, no pod yet
        (jobs, {names[0]: [served_pod(pod(names[0], phase="Pending"))],
                names[1]: [served_pod(pod(names[1], phase="Running"), node_name="gpu-3")]}),
        ([finished_job(jobs[0], "Failed", reason="BackoffLimitExceeded"), jobs[1]],
         {names[0]: [served_pod(pod(names[0], phase="Failed", exit_code=3,
                                    message={"error": "S3AccessDenied", "message": "denied", "exit_code": 3}),
                               node_name="gpu-1")]}),
        ([finished_job(j, "Complete") for j in jobs],
         {name: [served_pod(pod(name, phase="Succeeded", exit_code=0, message=result()), node_name="gpu-3")]
          for name in names}),
    ]
    for step_jobs, step_pods in steps:
        whole = _plan(prewarm, nodes, step_jobs, step_pods, serving, kept=False)
        assert _same(whole, _plan(prewarm, nodes, step_jobs, step_pods, serving, kept=True))
    assert whole.status.get("warm") is not None  # the last step read the pods' results
