"""Serving never fails because of the node cache, on the real control plane.

A serving pod shaped as KServe makes it for the node-cache ClusterStorageContainer
(manifests/kserve/cluster-storage-container-node-cache.yaml, read here as shipped): its container
becomes the init container `storage-initializer` with args `[storageUri, /mnt/models]`, KServe's
emptyDir `kserve-provision-location` at /mnt/models, `FallbackToLogsOnError`, and the S3 credentials
KServe's credential builder derives from the predictor's ServiceAccount and its Secret (AWS keys as
`secretKeyRef`s, `S3_ENDPOINT`/`AWS_ENDPOINT_URL`/... from the Secret's annotations; derived here by
`kserve_operator.planning.s3_credentials`, which follows KServe's rules). The model server shares the
emptyDir read-only: a Python process that reads every byte of every file under /mnt/models, prints
their SHA-256 and stays running. The REAL scheduler binds each pod to its node, the process kubelet
runs the REAL initializer (`python -m preloader`, the initializer image's ENTRYPOINT) against moto's
S3, reading the keys with the node's identity, and posts the init container's termination message.

Shown: a warm node cache serves the pod (`cache: hit`, nothing fetched, files linked from the cache);
a node whose cache is corrupt (a file where a version directory belongs), locked (another process
holds the model's writer lock) or unwritable still starts the pod: the init container exits 0, its
termination message in the pod's status says `"cache": "bypassed"` with `cacheBypassReason`, its log
warns, the model server read the complete model, and the cache is left as it was found.

What the process kubelet cannot do, and what stands in for it:
* The shipped setup mounts the node cache through a PVC over a local PV (node-cache-volume.yaml), which
  Pod Security `baseline` admits. The process kubelet does not simulate PVCs, so the same directory
  (/var/cache/kserve-prewarm on the node) is a hostPath volume of the same name here, and Pod Security
  admits a hostPath only in a `privileged` namespace: these pods run in `privileged_world`.
* It ignores security contexts: every process runs as root, so the ClusterStorageContainer's
  `runAsUser: 10001` and Istio CNI's UID 1337 are not honoured, and neither is a `readOnly` mount. The
  unwritable case is therefore a cache directory the kernel refuses to root as well (immutable,
  `chattr +i`: EPERM where UID 1337 meets EACCES; both are `CacheUnwritable`). The real UID 1337 against
  a cache owned by 10001 is tests/integration/preloader/test_initializer_fallback.py.
* A locked cache is bypassed after `min(--lock-timeout, 300 s)`. KServe passes only
  `[storageUri, /mnt/models]`, so that pod alone adds `--lock-timeout 2` to its args to keep the test
  short; the 300 s bound itself is covered by the integration test.
* Unlike a real container, the initializer cannot see /dev/termination-log at its path (a default in
  its code is not rewritten by the process kubelet), so the image is registered with
  `--termination-log /dev/termination-log` (controlplane/kubelet.py, "the one liberty").
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.cluster import RealCluster
from devstack.local_s3 import BUCKET, S3, create_credentials, moto_s3, upload_sharded_model
from kserve_operator.planning.s3_credentials import derive_credentials
from preloader.cache import FORMAT_DIR, LEASE_FILE, LOCK_FILE, ROOM_LOCK, location_key
from preloader.plan import parse_s3_uri
from tests.realcluster.conftest import World

ROOT = Path(__file__).resolve().parents[2]
STORAGE_CONTAINER = ROOT / "manifests" / "kserve" / "cluster-storage-container-node-cache.yaml"
INITIALIZER_IMAGE = "kserve-preloader-initializer:0.1.0"
MODEL_SERVER_IMAGE = "model-server-reads-every-byte:test"
MODEL_MOUNT = "/mnt/models"  # KServe's DefaultModelLocalMountPath
PROVISION_VOLUME = "kserve-provision-location"  # KServe's emptyDir for the model
CACHE_VOLUME = "kserve-prewarm-cache"  # the volume the ClusterStorageContainer mounts
CACHE_HOST_PATH = "/var/cache/kserve-prewarm"  # the local PV's path on each node
ACCOUNT, SECRET = "models-s3", "models-s3-keys"
PREFIX = "llm-serving"
URI = f"s3://{BUCKET}/{PREFIX}/"
READ_MARK = "model server read "

#: The model server: reads every byte of every file under argv[1] (KServe mounts it read-only), prints
#: their SHA-256, then serves (sleeps) until it is stopped.
MODEL_SERVER = """
import hashlib, json, os, sys, time
root = sys.argv[1]
digests = {}
for dirpath, _, names in os.walk(root):
    for name in names:
        path = os.path.join(dirpath, name)
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        digests[os.path.relpath(path, root)] = digest.hexdigest()
print("model server read " + json.dumps(digests, sort_keys=True), flush=True)
while True:
    time.sleep(3600)
"""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        upload_sharded_model(server, PREFIX, shards=3, seed=15)
        yield server


@pytest.fixture(scope="module", autouse=True)
def images(real_cluster: RealCluster) -> None:
    """The initializer image stands for its ENTRYPOINT `python -m preloader` (Dockerfile.gpu's
    `initializer` stage), as the pre-warm tests register the preloader image."""
    real_cluster.register_local_image(
        INITIALIZER_IMAGE, [sys.executable, "-m", "preloader", "--termination-log", "/dev/termination-log"],
        env={"AWS_EC2_METADATA_DISABLED": "true"})
    real_cluster.register_local_image(MODEL_SERVER_IMAGE, [sys.executable, "-c", MODEL_SERVER])


def model_digests(s3: S3) -> dict[str, str]:
    """Every file of the model as S3 holds it: path under the prefix -> SHA-256."""
    listing = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["Contents"]
    return {obj["Key"][len(PREFIX) + 1:]: hashlib.sha256(
        s3.client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()).hexdigest() for obj in listing}


def credentials_env(world: World, s3: S3) -> list[dict[str, Any]]:
    """What KServe's credential builder adds to the storage initializer for the predictor's account."""
    create_credentials(world.kube, s3.endpoint, namespace=world.namespace, account=ACCOUNT, secret=SECRET)
    account = world.kube.get(world.path("v1", "serviceaccounts", ACCOUNT))
    secret = world.kube.get(world.path("v1", "secrets", SECRET))
    derived = derive_credentials(account_name=ACCOUNT, account_named=True, service_account=account,
                                 secrets={SECRET: secret})
    assert derived.secrets == (SECRET,), derived
    return [dict(var) for var in derived.env]


def serving_pod(name: str, node: str, env: list[dict[str, Any]], *extra_args: str) -> dict[str, Any]:
    """A predictor pod as KServe's storage-initializer injector makes it from the ClusterStorageContainer."""
    storage = yaml.safe_load(STORAGE_CONTAINER.read_text())
    init = copy.deepcopy(storage["spec"]["container"])
    assert init["image"] == INITIALIZER_IMAGE, init["image"]
    init["args"] = [URI, MODEL_MOUNT, *extra_args]
    init["env"] = [*(init.get("env") or []), *env]
    init["volumeMounts"] = [*(init.get("volumeMounts") or []), {"name": PROVISION_VOLUME, "mountPath": MODEL_MOUNT}]
    init["terminationMessagePolicy"] = "FallbackToLogsOnError"
    (cache_mount,) = [m for m in init["volumeMounts"] if m["name"] == CACHE_VOLUME]
    assert cache_mount["mountPath"] == CACHE_HOST_PATH
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {
        "serving.kserve.io/inferenceservice": name, "component": "predictor"}},
        "spec": {
            "serviceAccountName": ACCOUNT, "terminationGracePeriodSeconds": 2,
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "initContainers": [init],
            "containers": [{"name": "kserve-container", "image": MODEL_SERVER_IMAGE, "args": [MODEL_MOUNT],
                            "volumeMounts": [{"name": PROVISION_VOLUME, "mountPath": MODEL_MOUNT,
                                              "readOnly": True}]}],
            "volumes": [{"name": PROVISION_VOLUME, "emptyDir": {}},
                        {"name": CACHE_VOLUME, "hostPath": {"path": CACHE_HOST_PATH, "type": "DirectoryOrCreate"}}]}}


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def failed_init(pod: dict[str, Any]) -> bool:
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if terminated and terminated.get("exitCode") != 0:
            return True
    return False


def started(world: World, name: str, timeout: float = 45) -> tuple[dict[str, Any], dict[str, str], str]:
    """Wait until the pod is Ready and its model server has read the model: the initializer's result
    (its termination message in the pod's status), what the model server read, the initializer's log."""
    pod = world.kube.wait_for(world.path("v1", "pods", name), lambda p: ready(p) or failed_init(p),
                              timeout=timeout, interval=0.2)
    kubelet = world.cluster.kubelet
    log = kubelet.pod_log(world.namespace, name, "storage-initializer") or ""
    assert not failed_init(pod), f"the storage initializer failed: {pod['status']}\n{log}"
    assert pod["status"]["phase"] == "Running"
    (init,) = pod["status"]["initContainerStatuses"]
    terminated = init["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], init["restartCount"]) == (0, "Completed", 0), init
    result = json.loads(terminated["message"])

    def read_line() -> str:
        lines = (kubelet.pod_log(world.namespace, name, "kserve-container") or "").splitlines()
        return next((line[len(READ_MARK):] for line in lines if line.startswith(READ_MARK)), "")

    served = world.cluster.wait_for(read_line, 15, message=f"{name}'s model server to read the model")
    return result, json.loads(served), log


def stop(world: World, *names: str) -> None:
    for name in names:
        world.kube.delete(world.path("v1", "pods", name))
    for name in names:
        world.kube.wait_gone(world.path("v1", "pods", name), timeout=30)


def cache_root(world: World, node: str) -> Path:
    return world.cluster.node_root(node) / CACHE_HOST_PATH.lstrip("/")


def tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """The cache as it is on disk (lock files aside: taking a lock may create one)."""
    out: dict[str, tuple[str, bytes]] = {}
    for path in sorted(root.rglob("*")):
        if path.name in (LOCK_FILE, ROOM_LOCK, LEASE_FILE):
            continue
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        out[str(path.relative_to(root))] = (kind, path.read_bytes() if kind == "file" else b"")
    return out


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """A directory nobody may write into, root included (``chattr +i``); skips where the kernel or the
    filesystem refuses the attribute (no CAP_LINUX_IMMUTABLE, tmpfs)."""
    directory.mkdir(parents=True, exist_ok=True)
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("no chattr here to make the cache unwritable to root")
    done = subprocess.run([chattr, "+i", str(directory)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make {directory} immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


@contextlib.contextmanager
def flock_held(path: Path) -> Iterator[None]:
    """Another process's exclusive flock on ``path`` (a stuck writer of the same model): this test's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def assert_bypassed(result: dict[str, Any], reason: str, log: str, served: dict[str, str],
                    model: dict[str, str]) -> None:
    assert result["cache"] == "bypassed" and result["cacheBypassReason"] == reason, result
    assert result["cache_path"] is None and result["linked"] is False, result
    assert result["files"] == len(model) and result["fetched_bytes"] == result["bytes"], result
    assert f"WARNING cache bypassed ({reason})" in log, log
    assert served == model  # every byte of every file, and nothing else in /mnt/models


def test_a_warm_node_cache_starts_the_serving_pod_from_the_cache(privileged_world: World, s3: S3) -> None:
    world = privileged_world
    (node,) = world.add_gpu_nodes("warm")
    env = credentials_env(world, s3)
    model = model_digests(s3)
    kube = world.kube
    kube.create(world.path("v1", "pods"), serving_pod("cold", node, env))
    result, served, _ = started(world, "cold")
    assert (result["cache"], result["fetched_bytes"], served) == ("miss", result["bytes"], model), result
    assert Path(result["cache_path"]).is_relative_to(cache_root(world, node))  # the node's cache, filled
    stop(world, "cold")

    kube.create(world.path("v1", "pods"), serving_pod("hit", node, env))
    result, served, log = started(world, "hit")
    assert (result["cache"], result["fetched_bytes"], result["linked"]) == ("hit", 0, True), result
    assert "cacheBypassReason" not in result and "cache hit" in log
    assert served == model
    pod = kube.get(world.path("v1", "pods", "hit"))
    assert pod["spec"]["nodeName"] == node  # placed by the real scheduler


def test_a_corrupt_locked_or_unwritable_cache_never_stops_the_serving_pod(privileged_world: World, s3: S3) -> None:
    world = privileged_world
    corrupt, locked, unwritable = world.add_gpu_nodes("corrupt", "locked", "unwritable")
    env = credentials_env(world, s3)
    model = model_digests(s3)
    kube = world.kube

    # corrupt: a warm node whose version directory was replaced by a file (a foreign tool, a bad restore)
    kube.create(world.path("v1", "pods"), serving_pod("warms-it", corrupt, env))
    warmed, _, _ = started(world, "warms-it")
    assert warmed["cache"] == "miss", warmed
    stop(world, "warms-it")
    entry = Path(warmed["cache_path"]).parent
    assert entry.is_relative_to(cache_root(world, corrupt))
    shutil.rmtree(entry)
    entry.write_text("garbage")
    corrupt_before = tree(cache_root(world, corrupt))

    # locked: a cold node where another process holds the model's writer lock and does not let go
    location = parse_s3_uri(URI)
    lock = cache_root(world, locked) / FORMAT_DIR / location_key(s3.url, location) / LOCK_FILE
    with flock_held(lock), immutable(cache_root(world, unwritable)):
        locked_before = tree(cache_root(world, locked))
        kube.create(world.path("v1", "pods"), serving_pod("on-corrupt", corrupt, env))
        kube.create(world.path("v1", "pods"), serving_pod("on-locked", locked, env, "--lock-timeout", "2"))
        kube.create(world.path("v1", "pods"), serving_pod("on-unwritable", unwritable, env))
        outcomes = {name: started(world, name) for name in ("on-corrupt", "on-locked", "on-unwritable")}
        assert list(cache_root(world, unwritable).iterdir()) == []  # nothing could be written, nothing was

    result, served, log = outcomes["on-corrupt"]
    assert_bypassed(result, "CacheCorrupt", log, served, model)
    assert tree(cache_root(world, corrupt)) == corrupt_before  # left as found: the pre-warm Job repairs it

    result, served, log = outcomes["on-locked"]
    assert_bypassed(result, "CacheLocked", log, served, model)
    assert "for over 2s" in log
    assert tree(cache_root(world, locked)) == locked_before

    result, served, log = outcomes["on-unwritable"]
    assert_bypassed(result, "CacheUnwritable", log, served, model)
    assert "Operation not permitted" in log

    for name in outcomes:  # each on its own node, by the real scheduler
        assert kube.get(world.path("v1", "pods", name))["spec"]["nodeName"] == {
            "on-corrupt": corrupt, "on-locked": locked, "on-unwritable": unwritable}[name]
