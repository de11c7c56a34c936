"""One name per image across README, manifests, settings, the Dockerfiles and the dev stack, and a
kustomize `images:` override that reaches the preloader image as well as the operator's (through the
ConfigMap the Deployment reads PRELOADER_IMAGE from, and kustomizeconfig/images.yaml)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from devstack.simulated_gpu_pool import PRELOADER_IMAGE as SIMULATED_PRELOADER_IMAGE
from kserve_operator.settings import OperatorSettings
from tests.controlplane_binaries import controlplane_bin

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATOR = "kserve-operator:0.1.0"
PRELOADER = "kserve-preloader:0.1.0"
INITIALIZER = "kserve-preloader-initializer:0.1.0"


def load(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kserve-operator")
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def preloader_env(container: dict[str, Any]) -> dict[str, Any]:
    return dict(next(e for e in container["env"] if e["name"] == "PRELOADER_IMAGE"))


def test_every_place_names_the_same_images() -> None:
    container = operator_container(load(ROOT / "manifests" / "operator" / "deployment.yaml"))
    assert container["image"] == OPERATOR
    [config_map] = load(ROOT / "manifests" / "operator" / "images.yaml")
    assert preloader_env(container)["valueFrom"]["configMapKeyRef"] == {
        "name": config_map["metadata"]["name"], "key": "preloader"}
    assert config_map["data"]["preloader"] == PRELOADER == OperatorSettings.preloader_image
    assert SIMULATED_PRELOADER_IMAGE == PRELOADER  # the dev stack's simulated GPU pool runs the default
    for path in sorted((ROOT / "manifests" / "kserve").glob("cluster-storage-container*.yaml")):
        [storage] = load(path)
        assert storage["spec"]["container"]["image"] == INITIALIZER, path.name
    readme, gpu = (ROOT / "README.md").read_text(), (ROOT / "Dockerfile.gpu").read_text()
    assert f"docker build -t {OPERATOR} ." in readme
    assert f"-f Dockerfile.gpu -t {PRELOADER} ." in readme and f"-f Dockerfile.gpu -t {PRELOADER} ." in gpu
    assert f"--target initializer -t {INITIALIZER} ." in readme and f"--target initializer -t {INITIALIZER} ." in gpu
    for old in ("preloader:gpu", "preloader:initializer"):
        for path in (ROOT / "README.md", ROOT / "Dockerfile.gpu", ROOT / "docs" / "preloader.md"):
            assert old not in path.read_text(), f"{path.name} still names {old}"


def kustomize() -> pathlib.Path:
    """The built kubectl (its `kustomize`); skipped without it, as the real-control-plane tiers are."""
    configured = os.environ.get("CONTROLPLANE_BIN")
    if configured:
        return pathlib.Path(configured) / "kubectl"
    if os.environ.get("CI") == "1":
        return controlplane_bin("the kustomize images test") / "kubectl"
    pytest.skip("no built kubectl: set CONTROLPLANE_BIN (`make controlplane` prints it)")


def test_an_overlay_images_list_reaches_the_preloader_image(tmp_path: pathlib.Path) -> None:
    kubectl = kustomize()
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../manifests"],
        "images": [{"name": "kserve-preloader", "newName": "registry.example/p", "newTag": "v2"},
                   {"name": "kserve-operator", "newName": "registry.example/op", "newTag": "v2"}]}))
    rendered = subprocess.run([str(kubectl), "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kserve-operator-images")
    assert config_map["data"]["preloader"] == "registry.example/p:v2"
    container = operator_container(docs)
    assert container["image"] == "registry.example/op:v2"
    assert preloader_env(container)["valueFrom"]["configMapKeyRef"]["name"] == "kserve-operator-images"
    # Without an override the shipped names stand.
    plain = subprocess.run([str(kubectl), "kustomize", str(tmp_path / "manifests")], capture_output=True, text=True,
                           check=True)
    assert f"preloader: {PRELOADER}" in plain.stdout and f"image: {OPERATOR}" in plain.stdout
