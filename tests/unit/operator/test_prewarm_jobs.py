"""The preloader Job manifest, its deterministic name, and reading a node's outcome from its Pods."""

from __future__ import annotations

import re
from typing import Any

from kserve_operator.planning.prewarm_jobs import JobTemplate, build_job, job_name, node_progress, parse_message
from kserve_operator.resources.meta import OwnerRef
from kserve_operator.resources.prewarm import parse_spec
from tests.unit.operator.prewarm_shapes import finished_job, pod, result

OWNER = OwnerRef("serving.serverless.xyz/v1alpha1", "ModelPrewarm", "torch-mnist", "uid-1", controller=True)
ENV = ({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "awsAccessKeyID"}}},)


def template(**spec: Any) -> JobTemplate:
    full = {"storageUri": "s3://models/mnist", "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "4Gi"}},
            **spec}
    return JobTemplate(namespace="ml", prewarm="torch-mnist", owner=OWNER, spec=parse_spec(full),
                       image="registry.local/preloader:gpu", env=ENV)


def test_job_runs_the_preloader_pinned_owned_and_locked_down() -> None:
    job = build_job(template(serviceAccountName="models-s3", cache={"hostPath": "/mnt/nvme/models",
                                                                    "maxBytes": "1Gi"},
                             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
                    node="gpu-1", hostname="gpu-1.local")
    meta, spec = job["metadata"], job["spec"]
    assert job["apiVersion"] == "batch/v1" and meta["namespace"] == "ml"
    assert meta["labels"]["serving.serverless.xyz/modelprewarm"] == "torch-mnist"
    assert meta["ownerReferences"] == [{"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
                                        "name": "torch-mnist", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert spec["ttlSecondsAfterFinished"] >= 3600
    pod_spec = spec["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "gpu-1.local"}
    assert pod_spec["restartPolicy"] == "Never" and pod_spec["serviceAccountName"] == "models-s3"
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
    job = build_job(template(resources={"requests": {"cpu": "1"}}), node="n", hostname="n")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--device", "cpu"] and "--cache-max-bytes" not in args


def test_names_are_deterministic_bounded_and_change_with_what_matters() -> None:
    base = template()
    first = build_job(base, node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert first == build_job(template(), node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert first != build_job(base, node="gpu-2", hostname="gpu-2")["metadata"]["name"]
    assert first != build_job(template(storageUri="s3://models/mnist-v2"), node="gpu-1",
                              hostname="gpu-1")["metadata"]["name"]
    assert first != build_job(template(revision="2"), node="gpu-1", hostname="gpu-1")["metadata"]["name"]
    assert base.spec_hash() == template(nodeCount=5, nodeSelector={"a": "b"}).spec_hash()  # choice, not content
    recreated = JobTemplate(namespace="ml", prewarm="torch-mnist", spec=base.spec, image=base.image, env=ENV,
                            owner=OwnerRef(OWNER.api_version, OWNER.kind, OWNER.name, "uid-2", controller=True))
    assert recreated.spec_hash() != base.spec_hash()  # a new incarnation never meets the old one's Jobs
    long = job_name("a-very-long-model-prewarm-name-" * 3, "ip-10-0-0-1.eu-west-1.compute.internal", "abc")
    assert len(long) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long)
    assert job_name("m", "n", "abc") != job_name("m", "n", "abc", "v2")


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
