"""plan_prewarm end to end on dicts: a small in-memory world that applies each plan like the
controller does (create/delete Jobs, write status), so every scenario runs several reconciles."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from kserve_operator.planning.diff import status_changes
from kserve_operator.planning.node_selection import NodeView
from kserve_operator.planning.prewarm import Observed, PrewarmPlan, plan_prewarm
from kserve_operator.planning.warm_capacity import CapacityDemand
from kserve_operator.resources.conditions import find_condition
from kserve_operator.resources.prewarm import PrewarmPlatform
from tests.unit.operator.prewarm_shapes import finished_job, node, pod, result

NOW = datetime.datetime(2026, 12, 2, 1, 0, tzinfo=datetime.UTC)
GPU = {"limits": {"nvidia.com/gpu": "1"}}
PLATFORM = PrewarmPlatform(namespace="kserve-prewarm", image="preloader:gpu")


@dataclasses.dataclass
class World:
    prewarm: dict[str, Any]
    nodes: list[dict[str, Any]]
    jobs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    account: dict[str, Any] | None = None
    secrets: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    serving: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    demands: list[CapacityDemand] = dataclasses.field(default_factory=list)
    now: datetime.datetime = NOW

    def plan(self) -> PrewarmPlan:
        observed = Observed(prewarm=self.prewarm, nodes=[NodeView.parse(n) for n in self.nodes],
                            jobs=list(self.jobs.values()), pods=self.pods, service_account=self.account,
                            secrets=self.secrets, serving_pods=self.serving, demands=self.demands)
        return plan_prewarm(observed, platform=PLATFORM, now=self.now)

    def reconcile(self) -> PrewarmPlan:
        plan = self.plan()
        for job in plan.create:
            assert job["metadata"]["name"] not in self.jobs, "a Job created twice"
            self.jobs[job["metadata"]["name"]] = json.loads(json.dumps(job))
        for name in plan.delete:
            self.jobs.pop(name)
            self.pods.pop(name, None)
        changes = status_changes(self.prewarm.get("status"), plan.status)
        self.prewarm["status"] = {**self.prewarm.get("status", {}), **changes}
        self.prewarm["status"] = {k: v for k, v in self.prewarm["status"].items() if v is not None}
        return plan

    def settled(self) -> bool:
        """A reconcile that changes nothing: no Job, no status write, no event."""
        plan = self.plan()
        return not plan.create and not plan.delete and not plan.events and \
            not status_changes(self.prewarm.get("status"), plan.status)

    def job_for(self, node_name: str) -> str:
        return next(n for n, j in self.jobs.items()
                    if j["metadata"]["annotations"]["serving.serverless.xyz/prewarm-node"] == node_name)

    def complete(self, node_name: str, *, version: str = "v1", finished: str = "2026-12-02T01:00:00Z") -> None:
        name = self.job_for(node_name)
        self.jobs[name] = finished_job(self.jobs[name], "Complete")
        self.pods[name] = [pod(name, phase="Succeeded", exit_code=0, message=result(version=version),
                               finished=finished)]

    def fail(self, node_name: str, error: dict[str, Any]) -> None:
        name = self.job_for(node_name)
        self.jobs[name] = finished_job(self.jobs[name], "Failed", reason="BackoffLimitExceeded")
        self.pods[name] = [pod(name, phase="Failed", exit_code=int(error["exit_code"]), message=error,
                               finished=self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))]


def world(nodes: int = 3, **spec: Any) -> World:
    body = {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
            "metadata": {"name": "torch-mnist", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"storageUri": "s3://models/mnist", "nodeCount": 2, "resources": GPU, **spec}}
    return World(body, [node(f"gpu-{i}") for i in range(1, nodes + 1)])


def condition(w: World, type: str) -> dict[str, Any]:
    found = find_condition(w.prewarm["status"]["conditions"], type)
    assert found is not None
    return found


def test_pending_to_warm_with_figures_then_settled() -> None:
    w = world()
    first = w.reconcile()
    assert sorted(w.jobs) == sorted(j["metadata"]["name"] for j in first.create) and len(w.jobs) == 2
    assert [e.reason for e in first.events] == ["PreloadJobsCreated"]
    assert w.prewarm["status"]["phase"] == "Pending" and w.prewarm["status"]["desiredNodes"] == 2
    assert w.settled()  # restart before the Jobs run: same names, nothing to do
    w.pods[w.job_for("gpu-1")] = [pod(w.job_for("gpu-1"), phase="Running")]
    w.reconcile()
    assert w.prewarm["status"]["phase"] == "Warming"
    assert condition(w, "Progressing")["status"] == "True"
    w.complete("gpu-1")
    w.complete("gpu-2")
    last = w.reconcile()
    status = w.prewarm["status"]
    assert (status["phase"], status["warmNodes"], status["modelVersion"]) == ("Warm", 2, "v1")
    assert status["nodes"][0] == {"name": "gpu-1", "phase": "Warm", "job": w.job_for("gpu-1"), "bytes": 1_000_000,
                                  "files": 2, "seconds": 0.25, "gbps": 0.004, "device": "cpu", "cache": "miss",
                                  "version": "v1", "finishedAt": "2026-12-02T01:00:00Z"}
    assert condition(w, "Ready")["status"] == "True" and condition(w, "Degraded")["status"] == "False"
    assert [e.reason for e in last.events] == ["ModelWarm"]
    assert w.settled()


def test_jobs_removed_by_their_ttl_are_not_recreated() -> None:
    w = world()
    w.reconcile()
    w.complete("gpu-1")
    w.complete("gpu-2")
    w.reconcile()
    w.jobs.clear()
    w.pods.clear()
    assert w.settled()


def test_changed_uri_warms_again_and_removes_the_old_jobs() -> None:
    w = world()
    w.reconcile()
    w.complete("gpu-1")
    w.complete("gpu-2")
    w.reconcile()
    old = set(w.jobs)
    w.prewarm["spec"]["storageUri"] = "s3://models/mnist-v2/"
    plan = w.reconcile()
    assert set(plan.delete) == old and len(plan.create) == 2 and not (set(w.jobs) & old)
    assert w.prewarm["status"]["phase"] == "Pending" and "modelVersion" not in w.prewarm["status"]
    assert all(a["metadata"]["annotations"]["serving.serverless.xyz/prewarm-node"] in ("gpu-1", "gpu-2")
               for a in w.jobs.values())


def test_a_lost_node_is_replaced() -> None:
    w = world()
    w.reconcile()
    w.complete("gpu-1")
    w.complete("gpu-2")
    w.reconcile()
    lost = w.job_for("gpu-2")
    w.nodes = [n for n in w.nodes if n["metadata"]["name"] != "gpu-2"]
    plan = w.reconcile()
    assert plan.delete == (lost,) and [j["metadata"]["annotations"]["serving.serverless.xyz/prewarm-node"]
                                       for j in plan.create] == ["gpu-3"]
    assert [n["name"] for n in w.prewarm["status"]["nodes"]] == ["gpu-1", "gpu-3"]
    w.nodes[0]["spec"]["taints"] = [{"key": "maintenance", "effect": "NoExecute"}]  # gpu-1 stops qualifying
    w.nodes.append(node("gpu-4"))
    plan = w.reconcile()
    assert [j["metadata"]["annotations"]["serving.serverless.xyz/prewarm-node"] for j in plan.create] == ["gpu-4"]


def test_a_newer_model_version_rewarms_the_nodes_holding_the_old_one() -> None:
    w = world(nodes=3)
    w.reconcile()
    w.complete("gpu-1", version="v1")
    w.complete("gpu-2", version="v1")
    w.reconcile()
    w.nodes = [n for n in w.nodes if n["metadata"]["name"] != "gpu-2"]
    w.reconcile()
    w.complete("gpu-3", version="v2", finished="2026-12-02T02:00:00Z")  # the object changed in between
    plan = w.reconcile()
    assert w.prewarm["status"]["modelVersion"] == "v2"
    (rewarm,) = plan.create
    assert rewarm["metadata"]["annotations"] == {"serving.serverless.xyz/prewarm-node": "gpu-1",
                                                 "serving.serverless.xyz/prewarm-owner": "ml/torch-mnist",
                                                 "serving.serverless.xyz/prewarm-target-version": "v2"}
    w.complete("gpu-1", version="v2", finished="2026-12-02T02:05:00Z")
    w.reconcile()
    assert w.prewarm["status"]["phase"] == "Warm" and w.settled()


def test_fewer_qualifying_nodes_warm_those_and_say_both_counts() -> None:
    w = world(nodes=1, nodeCount=3)
    w.nodes.append(node("cpu-1", gpus=0))
    w.reconcile()
    assert len(w.jobs) == 1
    degraded = condition(w, "Degraded")
    assert degraded["reason"] == "FewerNodesThanRequested"
    assert "1 qualifying node(s) for nodeCount 3" in degraded["message"] and "no nvidia.com/gpu" in degraded["message"]


def test_no_qualifying_node_is_pending_with_the_reasons() -> None:
    w = world(nodes=0)
    w.nodes = [node("cpu-1", gpus=0), node("gpu-9", taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])]
    plan = w.reconcile()
    assert not plan.create and w.prewarm["status"]["phase"] == "Pending"
    ready = condition(w, "Ready")
    assert ready["reason"] == "NoQualifyingNodes"
    assert "1 no nvidia.com/gpu allocatable" in ready["message"]
    assert "taint nvidia.com/gpu:NoSchedule is not tolerated" in ready["message"]
    assert [e.reason for e in plan.events] == ["NoQualifyingNodes"] and w.settled()


def test_a_failed_node_carries_the_preloaders_message() -> None:
    w = world()
    w.reconcile()
    w.complete("gpu-1")
    w.fail("gpu-2", {"model": "s3://models/mnist", "error": "DeviceOutOfMemory",
                     "message": "model needs 12.0 GiB, device has 8.0 GiB free", "exit_code": 7})
    plan = w.reconcile()
    status = w.prewarm["status"]
    failed = next(n for n in status["nodes"] if n["name"] == "gpu-2")
    assert (failed["phase"], failed["reason"]) == ("Failed", "DeviceOutOfMemory")
    assert failed["message"] == "model needs 12.0 GiB, device has 8.0 GiB free"
    # Partial success reads as such: one of two warm, the failed node named with its reason and retry.
    assert (status["phase"], status["warm"]) == ("PartiallyWarm", "1/2")
    assert condition(w, "Ready")["status"] == "False" and condition(w, "Ready")["reason"] == "PartiallyWarm"
    degraded = condition(w, "Degraded")
    assert degraded["reason"] == "NodesFailed" and "gpu-2: DeviceOutOfMemory" in degraded["message"]
    assert failed["attempts"] == 1 and failed["retryAt"] == status["nextRetryAt"]
    assert "retried at " + failed["retryAt"] in degraded["message"]
    assert [e.reason for e in plan.events] == ["PreloadFailed"] and w.settled()
    assert plan.outcome == "waiting"  # the retry is due later: the resync comes back for it


def test_unsupported_uris_create_no_job_and_remove_existing_ones() -> None:
    for uri in ("gs://bucket/model", "pvc://claim/model", "hf://org/model", "https://example.com/m.pt"):
        w = world()
        w.reconcile()
        w.prewarm["spec"]["storageUri"] = uri
        plan = w.reconcile()
        assert not plan.create and not w.jobs
        ready = condition(w, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "UnsupportedStorageUri")
        assert "does not support" in ready["message"] and w.prewarm["status"]["phase"] == "Failed"
        assert plan.outcome == "invalid" and [e.type for e in plan.events] == ["Warning"]
        assert w.settled()


def test_several_storage_uris_flagged_by_the_watcher() -> None:
    w = world()
    w.prewarm["metadata"]["annotations"] = {"serving.serverless.xyz/prewarm-unsupported": "several storageUris"}
    plan = w.reconcile()
    assert not plan.create and condition(w, "Ready")["reason"] == "MultipleStorageUris"


def test_missing_service_account_or_secret_is_named_and_blocks_jobs() -> None:
    w = world(serviceAccountName="models-s3")
    plan = w.reconcile()
    assert not plan.create and condition(w, "Ready")["reason"] == "ServiceAccountNotFound"
    assert plan.events[0].type == "Warning" and "ServiceAccount models-s3" in plan.events[0].message
    w.account = {"metadata": {"name": "models-s3"}, "secrets": [{"name": "s3"}]}
    w.secrets = {"s3": None}
    plan = w.reconcile()
    assert not plan.create and condition(w, "Ready")["reason"] == "SecretNotFound"
    assert "Secret s3 of service account models-s3" in plan.events[0].message and w.settled()
    w.secrets = {"s3": {"metadata": {"name": "s3"}, "data": {"awsAccessKeyID": "eA==", "awsSecretAccessKey": "eA=="}}}
    plan = w.reconcile()
    assert len(plan.create) == 2
    env = plan.create[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    # The Jobs run in the platform's namespace: the values come from a copy there, keyed by variable.
    copy = plan.credentials
    assert copy is not None and copy.name.startswith("torch-mnist-") and copy.name.endswith("-s3")
    assert env[1] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
        "name": copy.name, "key": "AWS_SECRET_ACCESS_KEY"}}}
    assert dict(copy.data) == {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eA=="}
    assert "eA==" not in json.dumps(plan.create)  # no value in a Job spec
    w.complete("gpu-1")
    w.complete("gpu-2")
    plan = w.reconcile()
    assert plan.credentials is None and plan.drop_credentials  # no Job needs them any more


def test_a_secret_without_the_key_it_names_is_reported() -> None:
    w = world(serviceAccountName="models-s3")
    w.account = {"metadata": {"name": "models-s3"}, "secrets": [{"name": "s3"}]}
    w.secrets = {"s3": {"metadata": {"name": "s3"}, "data": {"awsSecretAccessKey": "eA=="}}}
    plan = w.reconcile()
    assert not plan.create and condition(w, "Ready")["reason"] == "SecretKeyNotFound"
    assert "key awsAccessKeyID of Secret s3" in condition(w, "Ready")["message"]


def test_a_failed_node_is_retried_with_backoff_capped_and_at_once_on_request() -> None:
    w = world()
    w.reconcile()
    w.complete("gpu-1")
    error = {"model": "s3://models/mnist", "error": "AccessDenied", "message": "403", "exit_code": 3}
    w.fail("gpu-2", error)
    w.reconcile()
    first = w.prewarm["status"]["nextRetryAt"]
    delay = (datetime.datetime.fromisoformat(first) - NOW).total_seconds()
    assert 30 <= delay <= 60  # 60 s base, equal jitter
    failed_job = w.job_for("gpu-2")
    w.now = datetime.datetime.fromisoformat(first) + datetime.timedelta(seconds=1)
    plan = w.reconcile()
    (retry,) = plan.create
    assert plan.delete == (failed_job,) and "PreloadRetried" in [e.reason for e in plan.events]
    assert retry["metadata"]["annotations"]["serving.serverless.xyz/prewarm-attempt"] == "1"
    assert w.prewarm["status"]["nodes"][1]["attempts"] == 2 and w.prewarm["status"]["phase"] == "Warming"
    delays = []
    for _ in range(8):  # fail again and again: the delay doubles up to the platform's cap
        w.fail("gpu-2", error)
        w.reconcile()
        due = datetime.datetime.fromisoformat(w.prewarm["status"]["nextRetryAt"])
        delays.append((due - w.now).total_seconds())
        w.now = due + datetime.timedelta(seconds=1)
        w.reconcile()
    assert delays[1] > delays[0] and max(delays) <= PLATFORM.retry_max_seconds
    assert max(delays) >= PLATFORM.retry_max_seconds / 2
    # A new value of the retry annotation retries at once, once.
    w.fail("gpu-2", error)
    w.reconcile()
    assert not w.plan().create
    w.prewarm["metadata"]["annotations"] = {"serverless.xyz/prewarm-retry": "now-1"}
    plan = w.reconcile()
    assert len(plan.create) == 1 and w.prewarm["status"]["retryRequest"] == "now-1"
    w.fail("gpu-2", error)
    w.reconcile()
    assert not w.plan().create  # the same value again: back to the backoff


def test_warming_follows_where_the_predictor_serves() -> None:
    """The ModelPrewarm of an InferenceService prefers the nodes its Pods run on, and says how many
    of them sit on warm nodes."""
    w = world(nodes=4)
    w.prewarm["metadata"]["labels"] = {"serving.serverless.xyz/inferenceservice": "torch-mnist"}
    w.reconcile()
    w.complete("gpu-1")
    w.complete("gpu-2")
    w.serving = [{"metadata": {"name": "p1"}, "spec": {"nodeName": "gpu-1"}, "status": {"phase": "Running"}},
                 {"metadata": {"name": "p2"}, "spec": {"nodeName": "gpu-3"}, "status": {"phase": "Running"}}]
    plan = w.reconcile()
    assert [j["metadata"]["annotations"]["serving.serverless.xyz/prewarm-node"] for j in plan.create] == ["gpu-3"]
    # Make before break: gpu-2 stays warm (Job and entry kept) until gpu-3 is, so the placement
    # webhook always has warm nodes to prefer.
    assert plan.delete == () and w.prewarm["status"]["servingOnWarmNodes"] == "1/2"
    assert w.prewarm["status"]["warm"] == "2/2" and {n["name"] for n in w.prewarm["status"]["nodes"]} == {
        "gpu-1", "gpu-2", "gpu-3"}
    assert w.settled()
    w.complete("gpu-3")
    plan = w.reconcile()
    assert len(plan.delete) == 1 and w.job_for("gpu-3")
    status = w.prewarm["status"]
    assert (status["servingOnWarmNodes"], status["servingPods"], status["warm"]) == ("2/2", 2, "2/2")
    assert {n["name"] for n in status["nodes"]} == {"gpu-1", "gpu-3"}
    assert w.settled()


def test_changing_node_count_keeps_warm_nodes() -> None:
    w = world(nodes=4)
    w.reconcile()
    w.complete("gpu-1")
    w.complete("gpu-2")
    w.reconcile()
    w.prewarm["spec"]["nodeCount"] = 3
    plan = w.reconcile()
    assert not plan.delete and len(plan.create) == 1
    w.prewarm["spec"]["nodeCount"] = 1
    plan = w.reconcile()
    assert len(plan.delete) == 2 and [n["name"] for n in w.prewarm["status"]["nodes"]] == ["gpu-1"]
