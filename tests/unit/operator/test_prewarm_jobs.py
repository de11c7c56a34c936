"""The preloader Job manifest, its deterministic name, and reading a node's outcome from its Pods."""

from __future__ import annotations

import re
from typing import Any

from kserve_operator.planning.prewarm_jobs import JobTemplate, build_job, job_name, node_progress, parse_message
from kserve_operator.resources.prewarm import PrewarmPlatform, parse_spec
from tests.unit.operator.prewarm_shapes import finished_job, pod, result

PLATFORM = PrewarmPlatform(namespace="kserve-prewarm", cache_path="/mnt/nvme/models", cache_max_bytes=2**30,
                           image="registry.local/preloader:gpu")
ENV = ({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "copy-s3", "key": "AWS_ACCESS_KEY_ID"}}},)


def template(platform: PrewarmPlatform = PLATFORM, **spec: Any) -> JobTemplate:
    full = {"storageUri": "s3://models/mnist", "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}},
            **spec}
    return JobTemplate(owner_namespace="ml", prewarm="torch-mnist", owner_uid="uid-1", spec=parse_spec(full),
                       platform=platform, env=ENV)


def test_job_runs_the_preloader_pinned_labelled_and_locked_down() -> None:
    job = build_job(template(serviceAccountName="models-s3",
                             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
                    node="gpu-1", hostname="gpu-1.local")
    meta, spec = job["metadata"], job["spec"]
    # In the platform's namespace, whose it is in labels: an owner reference cannot cross namespaces.
    assert job["apiVersion"] == "batch/v1" and meta["namespace"] == "kserve-prewarm"
    assert "ownerReferences" not in meta
    assert meta["labels"]["serving.serverless.xyz/modelprewarm"] == "torch-mnist"
    assert meta["labels"]["serving.serverless.xyz/prewarm-namespace"] == "ml"
    assert meta["labels"]["serving.serverless.xyz/prewarm-uid"] == "uid-1"
    assert meta["annotations"]["serving.serverless.xyz/prewarm-owner"] == "ml/torch-mnist"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert pod_labels["serving.serverless.xyz/prewarm-namespace"] == "ml"
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert spec["ttlSecondsAfterFinished"] >= 3600
    pod_spec = spec["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "gpu-1.local"}
    # The tenant's service account does not exist here; its credentials come as copied Secret keys.
    assert pod_spec["restartPolicy"] == "Never" and "serviceAccountName" not in pod_spec
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod_spec["containers"]
    assert container["image"] == "registry.local/preloader:gpu"
    assert container["args"] == ["--device", "cuda", "--cache-dir", "/cache", "--cache-max-bytes", str(2**30),
                                 "--termination-log", "/dev/termination-log", "s3://models/mnist"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}}
    assert container["env"] == list(ENV)
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["cache"]["hostPath"] == {"path": "/mnt/nvme/models", "type": "DirectoryOrCreate"}
    assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    assert [v for v in pod_spec["volumes"] if "hostPath" in v] == [volumes["cache"]]  # the one exception


def test_cpu_device_without_a_gpu_and_no_size_bound() -> None:
    job = build_job(template(PrewarmPlatform(image="p"), resources={"requests": {"cpu": "1"}}), node="n", hostname="n")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--device", "cpu"] and "--cache-max-bytes" not in args
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["hostPath"]["path"] == "/var/cache/kserve-prewarm"  # the platform's default


def test_cache_only_warming_asks_for_no_gpu() -> None:
    """`device: none` (a runtime that loads its own weights): the Job fills the node cache and
    never competes with the serving pods for the GPU; the node is still chosen among GPU nodes."""
    spec = template(device="none", resources={"limits": {"nvidia.com/gpu": "2", "memory": "8Gi"},
                                              "requests": {"nvidia.com/gpu": "2", "cpu": "2"}}).spec
    job = build_job(template(device="none", resources={"limits": {"nvidia.com/gpu": "2", "memory": "8Gi"},
                                                       "requests": {"nvidia.com/gpu": "2", "cpu": "2"}}),
                    node="n", hostname="n")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--device", "none"]
    assert container["resources"] == {"limits": {"memory": "8Gi"}, "requests": {"cpu": "2"}}
    assert "nvidia.com/gpu" in {str(k) for k in spec.requested()}  # qualification still wants GPU nodes
    cpu = build_job(template(device="cpu"), node="n", hostname="n")["spec"]["template"]["spec"]["containers"][0]
    assert cpu["resources"] == {"limits": {"memory": "4Gi"}}  # host memory only: no GPU held either
    cuda = build_job(template(), node="n", hostname="n")["spec"]["template"]["spec"]["containers"][0]
    assert cuda["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_names_are_deterministic_bounded_and_change_with_what_matters() -> None:
    base = template()
    first = build_job(base, node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert first == build_job(template(), node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert first != build_job(base, node="gpu-2", hostname="gpu-2")["metadata"]["name"]
    assert first != build_job(template(storageUri="s3://models/mnist-v2"), node="gpu-1",
                              hostname="gpu-1")["metadata"]["name"]
    assert first != build_job(template(revision="2"), node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert base.spec_hash() == template(nodeCount=5, nodeSelector={"a": "b"}).spec_hash()  # choice, not content
    recreated = JobTemplate(owner_namespace="ml", prewarm="torch-mnist", owner_uid="uid-2", spec=base.spec,
                            platform=PLATFORM, env=ENV)
    assert recreated.spec_hash() != base.spec_hash()  # a new incarnation never meets the old one's Jobs
    long = job_name("a-very-long-model-prewarm-name-" * 3, "ip-10-0-0-1.eu-west-1.compute.internal", "abc")
    assert len(long) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long)
    assert job_name("m", "n", "abc") != job_name("m", "n", "abc", "v2")
    assert job_name("m", "n", "abc") == job_name("m", "n", "abc", "", 0)
    assert len({job_name("m", "n", "abc", "", attempt) for attempt in range(4)}) == 4  # each retry its own Job


def test_progress_from_pods() -> None:
    job = build_job(template(), node="n", hostname="n")
    name = job["metadata"]["name"]
    assert node_progress(job, []).phase == "Pending"
    assert node_progress(job, [pod(name, phase="Running")]).phase == "Warming"
    done = node_progress(finished_job(job, "Complete"), [pod(name, phase="Succeeded", exit_code=0,
                                                            message=result(version="abc"))])
    assert (done.phase, done.version, done.result and done.result["bytes"]) == ("Warm", "abc", 1_000_000)
    error = {"model": "s3://models/mnist", "error": "AccessDenied", "message": "403 on GetObject", "exit_code": 4}
    retrying = node_progress(job, [pod(name, phase="Failed", exit_code=4, message=error)])
    assert retrying.phase == "Warming" and retrying.reason == "AccessDenied"
    assert "attempt 1 failed" in retrying.message and "403 on GetObject" in retrying.message
    failed = node_progress(finished_job(job, "Failed", reason="BackoffLimitExceeded"), [
        pod(name, phase="Failed", exit_code=4, message=error, created="1"),
        pod(name, phase="Failed", exit_code=6, created="2", message={
            "model": "s3://m", "error": "CorruptModel", "message": "bad header", "exit_code": 6})])
    assert (failed.phase, failed.reason, failed.message) == ("Failed", "CorruptModel", "bad header")
    deadline = node_progress(finished_job(job, "Failed", reason="DeadlineExceeded", message="too long"), [])
    assert (deadline.phase, deadline.reason) == ("Failed", "DeadlineExceeded")


def test_message_fallback_to_logs_takes_the_last_json_line() -> None:
    logs = 'INFO downloading\n{"model":"s3://m","error":"DeviceOutOfMemory","message":"12 GiB > 8 GiB"}\n'
    assert parse_message(logs) == {"model": "s3://m", "error": "DeviceOutOfMemory", "message": "12 GiB > 8 GiB"}
    assert parse_message("Traceback ...\nKilled") is None
    job = build_job(template(), node="n", hostname="n")
    oom = node_progress(finished_job(job, "Failed"), [pod("j", phase="Failed", exit_code=137, message="Killed")])
    assert oom.phase == "Failed" and oom.reason == "Error" and "exit code 137" in oom.message
