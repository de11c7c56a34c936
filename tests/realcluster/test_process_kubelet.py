"""The process kubelet on its own, against the real control plane: what it registers, and how the
pods the real scheduler binds to its nodes run (as local `/bin/sh` processes for the `shell`
image), so that the real Job and ReplicaSet controllers see what they would see from a kubelet.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from controlplane.kubelet import KubeletApiError
from tests.realcluster.conftest import World

SHELL = "shell:latest"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.fixture(autouse=True)
def shell_image(real_cluster: Any) -> None:
    real_cluster.register_local_image(SHELL, ["/bin/sh", "-c"])


def job(world: World, name: str, script: str, *, restart: str = "Never", backoff: int = 0,
        **pod: Any) -> dict[str, Any]:
    container = {"name": "main", "image": SHELL, "args": [script], **pod.pop("container", {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": world.namespace},
            "spec": {"backoffLimit": backoff, "template": {"spec": {
                "restartPolicy": restart, "automountServiceAccountToken": False, "containers": [container], **pod}}}}


def only_pod(world: World, job_name: str) -> dict[str, Any]:
    (pod,) = world.kube.list(world.path("v1", "pods"), label_selector=f"job-name={job_name}")
    return pod


def wait_job(world: World, name: str, condition: str, timeout: float = 60) -> dict[str, Any]:
    return world.kube.wait_for(world.path("batch/v1", "jobs", name), lambda o: any(
        c["type"] == condition and c["status"] == "True" for c in (o.get("status") or {}).get("conditions") or []),
        timeout=timeout, interval=0.2)


def test_a_node_registers_with_gpus_taints_and_a_renewed_lease(privileged_world: World) -> None:
    world = privileged_world
    node_name = world.add_node("gpu", gpus=2, labels={"nvidia.com/gpu.present": "true"}, taints=[GPU_TAINT])
    node = world.kube.get(f"/api/v1/nodes/{node_name}")
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node_name
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert GPU_TAINT in node["spec"]["taints"]
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node_name}"
    first = world.kube.get(lease_path)["spec"]["renewTime"]
    world.cluster.wait_for(lambda: world.kube.get(lease_path)["spec"]["renewTime"] != first, 10,
                           message="the lease to be renewed")


def test_a_job_runs_on_the_gpu_node_with_its_secret_and_host_path(privileged_world: World) -> None:
    world, kube = privileged_world, privileged_world.kube
    gpu = world.add_node("gpu", gpus=1, labels={"nvidia.com/gpu.present": "true"}, taints=[GPU_TAINT])
    world.add_node("cpu")
    kube.create(world.path("v1", "secrets"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                                              "data": {"token": base64.b64encode(b"s3cret").decode()}})
    script = 'echo "$TOKEN on $NODE" > "$0/out"; echo "all done" > "$1"'
    kube.create(world.path("batch/v1", "jobs"), job(  # $0, $1: mount paths passed as arguments (the one liberty)
        world, "warm", script,
        container={"args": [script, "/cache", "/dev/termination-log"],
                   "resources": {"limits": {"nvidia.com/gpu": "1"}}, "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        volumes=[{"name": "cache", "hostPath": {"path": "/var/cache/test", "type": "DirectoryOrCreate"}}]))
    done = wait_job(world, "warm", "Complete")
    assert done["status"]["succeeded"] == 1  # counted by the real Job controller
    pod = only_pod(world, "warm")
    assert pod["spec"]["nodeName"] == gpu  # the real scheduler: GPU requested, taint tolerated
    (status,) = pod["status"]["containerStatuses"]
    terminated = status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (0, "Completed", "all done\n")
    assert (world.cluster.node_root(gpu) / "var/cache/test/out").read_text() == f"s3cret on {gpu}\n"


def test_exit_codes_termination_messages_and_failed_jobs(privileged_world: World) -> None:
    world, kube = privileged_world, privileged_world.kube
    world.add_node("cpu")
    script = 'echo "model file is corrupt: header too short" > "$0"; exit 3'
    kube.create(world.path("batch/v1", "jobs"), job(  # $0: the termination-log path, rewritten as an argument
        world, "broken", script, container={"args": [script, "/dev/termination-log"]}))
    failed = wait_job(world, "broken", "Failed")
    assert failed["status"]["failed"] == 1
    (status,) = only_pod(world, "broken")["status"]["containerStatuses"]
    terminated = status["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert terminated["message"] == "model file is corrupt: header too short\n"
    assert only_pod(world, "broken")["status"]["phase"] == "Failed"


def test_on_failure_restarts_in_the_same_pod_with_back_off(privileged_world: World) -> None:
    world, kube = privileged_world, privileged_world.kube
    world.add_node("cpu")
    script = 'if [ -f "$0/ran" ]; then exit 0; fi; touch "$0/ran"; exit 1'
    kube.create(world.path("batch/v1", "jobs"), job(
        world, "flaky", script, restart="OnFailure", backoff=3,
        container={"args": [script, "/scratch"], "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    wait_job(world, "flaky", "Complete")
    pod = only_pod(world, "flaky")
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 1
    assert pod["status"]["phase"] == "Succeeded"


def test_deletion_sends_sigterm_and_the_pod_goes_after_its_grace(privileged_world: World) -> None:
    world, kube = privileged_world, privileged_world.kube
    node = world.add_node("cpu")
    script = 'trap "echo terminated > $0/signal; exit 0" TERM; while true; do sleep 0.1; done'
    kube.create(world.path("v1", "pods"), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": SHELL, "args": [script, "/data"],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "hostPath": {"path": "/srv", "type": "DirectoryOrCreate"}}]}})
    kube.wait_for(world.path("v1", "pods", "server"), lambda o: o["status"].get("phase") == "Running", timeout=30)
    started = time.monotonic()
    kube.delete(world.path("v1", "pods", "server"))
    kube.wait_gone(world.path("v1", "pods", "server"), timeout=20, interval=0.1)
    assert time.monotonic() - started < 5  # it stopped on SIGTERM, well inside its grace period
    assert (world.cluster.node_root(node) / "srv/signal").read_text() == "terminated\n"


def test_an_unregistered_image_is_status_only_and_ready(world: World) -> None:
    """SIMULATION: nginx has no registered command; the kubelet reports it Running and Ready."""
    world.add_node("cpu")
    kube = world.kube
    kube.create(world.path("apps/v1", "deployments"), {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 101,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "nginx", "image": "nginx:1.27", "securityContext": {
                         "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}}})
    deployment = kube.wait_for(world.path("apps/v1", "deployments", "web"),
                               lambda o: (o.get("status") or {}).get("readyReplicas") == 2, timeout=60)
    assert deployment["status"]["availableReplicas"] == 2


def test_a_node_reads_only_the_secrets_of_its_own_pods(privileged_world: World) -> None:
    """The Node authorizer judges the kubelet's identity: a Secret no pod on the node references is refused."""
    world, kube = privileged_world, privileged_world.kube
    node = world.add_node("cpu")
    kube.create(world.path("v1", "secrets"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other"},
                                              "stringData": {"k": "v"}})
    client = world.cluster.kubelet.nodes[node].client
    with pytest.raises(KubeletApiError) as refused:
        world.cluster.kubelet._call(client.call("GET", world.path("v1", "secrets", "other")))
    assert refused.value.status == 403
    assert kube.get(world.path("v1", "secrets", "other"))["metadata"]["name"] == "other"  # the admin may


def test_a_stopped_node_is_marked_unreachable_by_the_real_node_controller(privileged_world: World) -> None:
    world, kube = privileged_world, privileged_world.kube
    node = world.add_node("cpu")
    world.cluster.stop_node(node)
    lost = kube.wait_for(f"/api/v1/nodes/{node}", lambda o: any(
        t["key"] == "node.kubernetes.io/unreachable" for t in (o.get("spec") or {}).get("taints") or []),
        timeout=60, interval=0.5)
    assert {c["type"]: c["status"] for c in lost["status"]["conditions"]}["Ready"] == "Unknown"
