"""manifests/kserve/: the ClusterStorageContainers that make the preloader KServe's storage initializer,
and the node cache volume serving pods mount."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from preloader.config import load_config

REPO = Path(__file__).resolve().parents[3]
KSERVE = REPO / "manifests" / "kserve"


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KSERVE / name).read_text()) if doc]


CONTAINERS = ["cluster-storage-container.yaml", "cluster-storage-container-node-cache.yaml"]


@pytest.mark.parametrize("name", CONTAINERS)
def test_cluster_storage_container_is_kserves_shape(name: str) -> None:
    [doc] = load(name)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterStorageContainer")
    assert doc["spec"]["supportedUriFormats"] == [{"prefix": "s3://"}]
    assert doc["spec"]["workloadType"] == "initContainer"
    container = doc["spec"]["container"]
    assert container["name"] == "storage-initializer"
    assert container["securityContext"]["runAsNonRoot"] is True
    # The container itself is a core v1 Container: validate it strictly inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    if container.get("volumeMounts"):
        pod["spec"]["volumes"] = [{"name": m["name"], "emptyDir": {}} for m in container["volumeMounts"]]
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_node_cache_container_mounts_the_claim_where_the_preloader_looks() -> None:
    [doc] = load("cluster-storage-container-node-cache.yaml")
    container = doc["spec"]["container"]
    env = {e["name"]: e["value"] for e in container["env"]}
    [mount] = container["volumeMounts"]
    config = load_config(["s3://models/llm/", "/mnt/models"], env)  # KServe's two arguments
    assert config.dest == Path("/mnt/models") and config.cache_dir == Path(mount["mountPath"])
    claims = [d for d in load("node-cache-volume.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert mount["name"] in {c["metadata"]["name"] for c in claims}


def test_node_cache_volume_is_a_local_pv_not_host_path() -> None:
    docs = load("node-cache-volume.yaml")
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    [pv] = [d for d in docs if d["kind"] == "PersistentVolume"]
    assert "local" in pv["spec"] and "hostPath" not in pv["spec"]
    assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]


def test_initializer_image_runs_the_preloader_without_torch() -> None:
    dockerfile = (REPO / "Dockerfile.gpu").read_text()
    stage = dockerfile.split("AS initializer", 1)[1].split("\nFROM ", 1)[0]
    assert 'ENTRYPOINT ["python", "-m", "preloader"]' in stage
    assert "torch" not in re.sub(r"#.*", "", stage)
    [doc] = load("cluster-storage-container.yaml")
    assert doc["spec"]["container"]["image"] == "kserve-preloader-initializer:0.1.0"
