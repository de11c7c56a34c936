"""Jobs of registered local images run as real local processes (devcluster's kubelet and Job controller).

Every container here is a small ``python -c`` program (``LOCAL_PYTHON`` stands for an image
whose ENTRYPOINT is ``python -c``); the tests check what the process saw (environment, paths)
and what the cluster wrote back (Pod and Job status), as a real cluster would.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devcluster import ApiError, ClusterClient, EmulatedCluster

JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"
SECRETS = "/api/v1/namespaces/default/secrets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
LOCAL_PYTHON = "example.com/local-python:1"


@pytest.fixture
def nodes(cluster: EmulatedCluster) -> EmulatedCluster:
    """The test cluster with two Ready nodes (one GPU each) and the local python image registered."""
    cluster.sim.register_local_image(LOCAL_PYTHON, [sys.executable, "-c"])
    cluster.add_node("gpu-1", gpus=1, labels={"pool": "gpu"})
    cluster.add_node("gpu-2", gpus=1, labels={"pool": "gpu"})
    return cluster


def job(name: str, program: str, *args: str, node: str | None = "gpu-1", backoff_limit: int = 0,
        container: dict[str, Any] | None = None, pod: dict[str, Any] | None = None,
        **spec: Any) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                                "containers": [{"name": "main", "image": LOCAL_PYTHON, "args": [program, *args],
                                                **(container or {})}], **(pod or {})}
    if node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"metadata": {"name": name}, "spec": {"backoffLimit": backoff_limit, "template": {"spec": pod_spec},
                                                 **spec}}


def finished(kube: ClusterClient, name: str, timeout: float = 20) -> dict[str, Any]:
    return kube.wait_for(f"{JOBS}/{name}", lambda j: any(
        c["type"] in ("Complete", "Failed") and c["status"] == "True"
        for c in j.get("status", {}).get("conditions", [])), timeout=timeout)


def pods_of(kube: ClusterClient, name: str) -> list[dict[str, Any]]:
    return kube.list(PODS, label_selector=f"batch.kubernetes.io/job-name={name}")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


WRITE_ENV = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


def test_a_job_runs_with_its_environment_resolved(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(SECRETS, {"metadata": {"name": "s3"}, "data": {"key": base64.b64encode(b"AKIA").decode()}})
    kube.create(SECRETS, {"metadata": {"name": "extra"}, "stringData": {"TOKEN": "t0k"}})
    kube.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"region": "eu-west-1", "mode": "fast"}})
    kube.create(JOBS, job("env", WRITE_ENV, "/dev/termination-log", container={
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}, {"secretRef": {"name": "extra"}}],
        "env": [{"name": "ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}},
                {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "region"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "value": "in $(REGION), $$(REGION) literally"},
                {"name": "ABSENT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}}]}))
    done = finished(kube, "env")
    assert done["status"]["succeeded"] == 1
    pod = pods_of(kube, "env")[0]
    env = json.loads(terminated(pod)["message"])
    assert env["ACCESS_KEY"] == "AKIA" and env["TOKEN"] == "t0k"
    assert env["CM_region"] == "eu-west-1" and env["CM_mode"] == "fast" and env["REGION"] == "eu-west-1"
    assert env["POD"] == pod["metadata"]["name"] == env["HOSTNAME"]
    assert (env["NS"], env["NODE"]) == ("default", "gpu-1")
    assert env["GREETING"] == "in eu-west-1, $(REGION) literally"
    assert "ABSENT" not in env
    assert pod["metadata"]["labels"]["job-name"] == "env"
    assert pod["metadata"]["labels"]["controller-uid"] == done["metadata"]["uid"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0 and terminated(pod)["reason"] == "Completed"
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    assert [c["type"] for c in done["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert "active" not in done["status"] and done["status"]["ready"] == 0


def test_a_missing_secret_waits_with_create_container_config_error(nodes: EmulatedCluster,
                                                                   kube: ClusterClient) -> None:
    kube.create(JOBS, job("secretive", "import os; assert os.environ['KEY'] == 'v'", container={
        "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]}))
    nodes.wait_for(lambda: pods_of(kube, "secretive") and pods_of(kube, "secretive")[0]["status"].get(
        "containerStatuses", [{}])[0].get("state", {}).get("waiting", {}).get("reason") ==
        "CreateContainerConfigError", timeout=10)
    pod = pods_of(kube, "secretive")[0]
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"] == 'secret "later" not found'
    assert kube.get(f"{JOBS}/secretive")["status"]["active"] == 1

    kube.create(SECRETS, {"metadata": {"name": "later"}, "stringData": {"other": "x"}})
    nodes.wait_for(lambda: pods_of(kube, "secretive")[0]["status"]["containerStatuses"][0]["state"]
                   .get("waiting", {}).get("message") == "couldn't find key k in Secret default/later", timeout=10)
    kube.patch(f"{SECRETS}/later", {"stringData": {"k": "v"}})
    assert finished(kube, "secretive")["status"]["succeeded"] == 1


def test_termination_messages_follow_the_kubelet(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("long", "import sys; open(sys.argv[1], 'w').write('a' * 2000 + 'b' * 4096)", "/tmp/msg",
                          container={"terminationMessagePath": "/tmp/msg"}))
    kube.create(JOBS, job("logs", "import sys; [print(f'line {i}') for i in range(100)]; sys.exit(3)",
                          container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    kube.create(JOBS, job("quiet-ok", "print('fine')", container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    kube.create(JOBS, job("plain-fail", "import sys; print('boom'); sys.exit(2)"))
    for name in ("long", "logs", "quiet-ok", "plain-fail"):
        finished(kube, name)
    assert terminated(pods_of(kube, "long")[0])["message"] == "b" * 4096  # the file's last 4096 bytes
    logs = terminated(pods_of(kube, "logs")[0])
    assert (logs["exitCode"], logs["reason"]) == (3, "Error")
    assert logs["message"].splitlines() == [f"line {i}" for i in range(20, 100)]  # the last 80 lines
    assert "message" not in terminated(pods_of(kube, "quiet-ok")[0])  # no fallback on success
    plain = pods_of(kube, "plain-fail")[0]
    assert "message" not in terminated(plain) and plain["status"]["phase"] == "Failed"
    log = kube.text(f"{PODS}/{plain['metadata']['name']}/log")
    assert log == "boom\n"
    assert kube.text(f"{PODS}/{pods_of(kube, 'logs')[0]['metadata']['name']}/log",
                     {"tailLines": "2"}) == "line 98\nline 99\n"


def test_failures_are_retried_with_new_pods_up_to_the_backoff_limit(nodes: EmulatedCluster,
                                                                    kube: ClusterClient) -> None:
    kube.create(JOBS, job("doomed", "import sys; sys.exit(1)", backoff_limit=2))
    done = finished(kube, "doomed")
    assert done["status"]["failed"] == 3 and "succeeded" not in done["status"]
    failed = next(c for c in done["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == ("BackoffLimitExceeded",
                                                     "Job has reached the specified backoff limit")
    assert "completionTime" not in done["status"]
    pods = pods_of(kube, "doomed")
    assert len({p["metadata"]["name"] for p in pods}) == 3
    assert all(p["status"]["phase"] == "Failed" and terminated(p)["exitCode"] == 1 for p in pods)


def test_a_retry_can_succeed(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    flaky = ("import os, sys; p = sys.argv[1] + '/tries'; n = int(open(p).read()) if os.path.exists(p) else 0; "
             "open(p, 'w').write(str(n + 1)); sys.exit(0 if n else 1)")
    kube.create(JOBS, job("flaky", flaky, "/state", backoff_limit=3, container={
        "volumeMounts": [{"name": "state", "mountPath": "/state"}]},
        pod={"volumes": [{"name": "state", "hostPath": {"path": "/var/lib/flaky", "type": "DirectoryOrCreate"}}]}))
    done = finished(kube, "flaky")
    assert (done["status"]["succeeded"], done["status"]["failed"]) == (1, 1)
    assert (nodes.node_root("gpu-1") / "var/lib/flaky/tries").read_text() == "2"


def test_an_active_deadline_kills_the_process(nodes: EmulatedCluster, kube: ClusterClient,
                                              tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    started = time.monotonic()
    kube.create(JOBS, job("slow", "import sys, time; time.sleep(30); open(sys.argv[1], 'w').write('x')",
                          str(marker), activeDeadlineSeconds=1, backoff_limit=5))
    done = finished(kube, "slow", timeout=15)
    assert time.monotonic() - started < 10
    failed = next(c for c in done["status"]["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == \
        ("DeadlineExceeded", "Job was active longer than specified deadline")
    assert done["status"]["failed"] == 1 and "active" not in done["status"]
    nodes.wait_for(lambda: not pods_of(kube, "slow"), timeout=5)  # the active pod was deleted
    nodes.wait_for(lambda: nodes.sim.kubelet.running_count == 0, timeout=5)
    assert not marker.exists()


def test_a_finished_job_is_deleted_after_its_ttl(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("brief", "pass", ttlSecondsAfterFinished=1))
    finished(kube, "brief")
    assert pods_of(kube, "brief")
    kube.wait_gone(f"{JOBS}/brief", timeout=10)
    assert pods_of(kube, "brief") == []  # deleted with it (Foreground)


def test_host_path_is_per_node_and_shared_by_jobs_on_one_node(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    cache = {"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    volumes = {"volumes": [{"name": "cache", "hostPath": {"path": "/mnt/models", "type": "DirectoryOrCreate"}}]}
    write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    look = ("import os, sys; p = sys.argv[1]; "
            "open(sys.argv[2], 'w').write(open(p).read() if os.path.exists(p) else 'missing')")
    kube.create(JOBS, job("fill", write, "/cache/model.bin", "weights", container=cache, pod=volumes))
    finished(kube, "fill")
    kube.create(JOBS, job("same-node", look, "/cache/model.bin", "/dev/termination-log", container=cache,
                          pod=volumes))
    kube.create(JOBS, job("other-node", look, "/cache/model.bin", "/dev/termination-log", node="gpu-2",
                          container=cache, pod=volumes))
    finished(kube, "same-node")
    finished(kube, "other-node")
    assert terminated(pods_of(kube, "same-node")[0])["message"] == "weights"
    assert terminated(pods_of(kube, "other-node")[0])["message"] == "missing"
    assert (nodes.node_root("gpu-1") / "mnt/models/model.bin").read_text() == "weights"
    assert not (nodes.node_root("gpu-2") / "mnt/models/model.bin").exists()


def test_empty_dir_and_secret_volumes(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(SECRETS, {"metadata": {"name": "creds"}, "stringData": {"token": "abc"}})
    program = ("import os, sys; open(sys.argv[1] + '/x', 'w').write('1'); "
               "open(sys.argv[3], 'w').write(open(sys.argv[2]).read() + ':' + os.environ['SCRATCH'])")
    kube.create(JOBS, job("volumes", program, "/scratch", "/etc/creds/token", "/dev/termination-log", container={
        "env": [{"name": "SCRATCH", "value": "/scratch/sub"}],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "creds", "mountPath": "/etc/creds"}]},
        pod={"volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "creds", "secret": {"secretName": "creds"}}]}))
    finished(kube, "volumes")
    token, scratch = terminated(pods_of(kube, "volumes")[0])["message"].split(":")
    assert token == "abc"
    assert scratch.endswith("/volumes/scratch/sub") and not scratch.startswith("/scratch")


def test_an_unschedulable_pod_waits_for_a_node(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("pinned", "pass", node="gpu-9"))
    nodes.wait_for(lambda: pods_of(kube, "pinned"), timeout=10)
    pod = pods_of(kube, "pinned")[0]
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]
    scheduled = pod["status"]["conditions"][0]
    assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert scheduled["message"].startswith("0/2 nodes are available: 2 node(s) didn't match Pod's node "
                                           "affinity/selector.")
    assert kube.get(f"{JOBS}/pinned")["status"]["active"] == 1
    nodes.add_node("gpu-9")
    done = finished(kube, "pinned")
    assert done["status"]["succeeded"] == 1
    assert pods_of(kube, "pinned")[0]["spec"]["nodeName"] == "gpu-9"


def test_taints_gpus_and_readiness_decide_scheduling(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    nodes.add_node("tainted", taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}], gpus=2)
    gpu = {"resources": {"limits": {"nvidia.com/gpu": 2}}}
    kube.create(JOBS, job("intolerant", "pass", node="tainted", container=gpu))
    kube.create(JOBS, job("too-big", "pass", node=None, container=gpu,
                          pod={"nodeSelector": {"pool": "gpu"}}))
    kube.create(JOBS, job("tolerant", "pass", node="tainted", container=gpu, pod={
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}))
    assert finished(kube, "tolerant")["status"]["succeeded"] == 1
    for name, reason in (("intolerant", "had untolerated taint {nvidia.com/gpu: present}"),
                         ("too-big", "2 Insufficient nvidia.com/gpu")):
        nodes.wait_for(lambda n=name: pods_of(kube, n), timeout=10)
        assert reason in pods_of(kube, name)[0]["status"]["conditions"][0]["message"]
    nodes.set_node_ready("gpu-1", False)
    kube.create(JOBS, job("not-ready", "pass"))
    nodes.wait_for(lambda: pods_of(kube, "not-ready"), timeout=10)
    assert "node.kubernetes.io/not-ready" in pods_of(kube, "not-ready")[0]["status"]["conditions"][0]["message"]
    nodes.set_node_ready("gpu-1", True)
    assert finished(kube, "not-ready")["status"]["succeeded"] == 1


def test_suspend_and_resume(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("later", "pass", suspend=True))
    suspended = kube.wait_for(f"{JOBS}/later", lambda j: any(
        c["type"] == "Suspended" and c["status"] == "True" for c in j.get("status", {}).get("conditions", [])))
    assert pods_of(kube, "later") == [] and "startTime" not in suspended["status"]
    kube.patch(f"{JOBS}/later", {"spec": {"suspend": False}})
    done = finished(kube, "later")
    resumed = next(c for c in done["status"]["conditions"] if c["type"] == "Suspended")
    assert (resumed["status"], resumed["reason"]) == ("False", "JobResumed")
    assert done["status"]["succeeded"] == 1


def test_suspending_a_running_job_stops_it_without_counting_a_failure(nodes: EmulatedCluster,
                                                                      kube: ClusterClient) -> None:
    kube.create(JOBS, job("paused", "import time; time.sleep(30)"))
    kube.wait_for(f"{JOBS}/paused", lambda j: j.get("status", {}).get("ready") == 1, timeout=10)
    kube.patch(f"{JOBS}/paused", {"spec": {"suspend": True}})
    nodes.wait_for(lambda: not pods_of(kube, "paused") and nodes.sim.kubelet.running_count == 0, timeout=10)
    status = kube.get(f"{JOBS}/paused")["status"]
    assert "failed" not in status and "active" not in status


def test_a_command_must_be_registered(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("no-binary", "", container={"command": ["preload"], "args": []}))
    done = finished(kube, "no-binary")
    state = terminated(pods_of(kube, "no-binary")[0])
    assert (state["exitCode"], state["reason"]) == (128, "StartError")
    assert 'exec: "preload": executable file not found in $PATH' in state["message"]
    assert done["status"]["failed"] == 1
    nodes.sim.register_local_command("preload", [sys.executable, "-c", "import sys; sys.exit(len(sys.argv))"])
    kube.create(JOBS, job("binary", "", container={"command": ["preload", "a"], "args": ["b"]}))
    finished(kube, "binary")
    assert terminated(pods_of(kube, "binary")[0])["exitCode"] == 3  # argv: -c, a, b


def test_deleting_a_node_fails_and_deletes_its_pods(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("stranded", "import time; time.sleep(30)"))
    kube.wait_for(f"{JOBS}/stranded", lambda j: j.get("status", {}).get("ready") == 1, timeout=10)
    nodes.remove_node("gpu-1")
    done = finished(kube, "stranded")
    assert done["status"]["failed"] == 1
    assert next(c for c in done["status"]["conditions"] if c["type"] == "Failed")["reason"] == "BackoffLimitExceeded"
    nodes.wait_for(lambda: not pods_of(kube, "stranded") and nodes.sim.kubelet.running_count == 0, timeout=10)
    with pytest.raises(ApiError):
        kube.get("/api/v1/nodes/gpu-1")


def test_processes_are_bounded() -> None:
    with EmulatedCluster(local_images={LOCAL_PYTHON: [sys.executable, "-c"]}, max_processes=2) as small:
        small.add_node("gpu-1")
        kube = small.client()
        for index in range(6):
            kube.create(JOBS, job(f"j{index}", "import time; time.sleep(0.3)"))
        for index in range(6):
            assert finished(kube, f"j{index}", timeout=30)["status"]["succeeded"] == 1
        assert small.sim.kubelet.peak_running == 2


def test_paths_in_the_registered_entrypoint_are_container_paths(nodes: EmulatedCluster,
                                                                kube: ClusterClient) -> None:
    program = "import os, sys; open(sys.argv[1], 'w').write(os.environ['MODEL_DIR'])"
    nodes.sim.register_local_image("example.com/writer:1", [sys.executable, "-c", program, "/dev/termination-log"],
                                   env={"MODEL_DIR": "/models/current"})
    kube.create(JOBS, job("entrypoint", "", container={
        "image": "example.com/writer:1", "args": [], "volumeMounts": [{"name": "m", "mountPath": "/models"}]},
        pod={"volumes": [{"name": "m", "emptyDir": {}}]}))
    finished(kube, "entrypoint")
    message = terminated(pods_of(kube, "entrypoint")[0])["message"]
    assert message.endswith("/volumes/m/current") and not message.startswith("/models")


def test_a_job_created_before_its_image_is_registered_stays_status_only(cluster: EmulatedCluster,
                                                                        kube: ClusterClient) -> None:
    cluster.add_node("gpu-1")
    kube.create(JOBS, job("early", "pass"))
    kube.wait_for(f"{JOBS}/early", lambda j: j.get("status", {}).get("active") == 1, timeout=10)
    cluster.sim.register_local_image(LOCAL_PYTHON, [sys.executable, "-c"])
    cluster.sim.complete_job("default", "early", succeeded=True, message="from the hook")
    assert finished(kube, "early")["status"]["succeeded"] == 1
    assert terminated(pods_of(kube, "early")[0])["message"] == "from the hook"
    pod_name = pods_of(kube, "early")[0]["metadata"]["name"]
    assert cluster.pod_log("default", pod_name) is None
    with pytest.raises(ApiError) as info:
        kube.text(f"{PODS}/{pod_name}/log")
    assert info.value.status == 400 and "waiting to start" in info.value.message


def test_completions_and_parallelism(nodes: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(JOBS, job("batch", "import time; time.sleep(0.2)", completions=3, parallelism=2))
    kube.wait_for(f"{JOBS}/batch", lambda j: j.get("status", {}).get("active") == 2, timeout=10)
    done = finished(kube, "batch")
    assert done["status"]["succeeded"] == 3 and "failed" not in done["status"]
    assert len(pods_of(kube, "batch")) == 3
