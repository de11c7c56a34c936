"""An InferenceService's predictor as the pre-warm watcher reads it, and the ModelPrewarm it gets."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from kserve_operator.resources.inferenceservice import (
    ANNOTATION_UNSUPPORTED,
    Predictor,
    desired_prewarm,
    opted_in,
)
from kserve_operator.resources.prewarm import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[3]
TORCH_MNIST = yaml.safe_load((ROOT / "manifests" / "samples" / "torch-mnist.yaml").read_text())


def isvc(predictor: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "svc", "namespace": "ml", "uid": "isvc-uid", "annotations": annotations or {}},
            "spec": {"predictor": predictor}}


def test_torch_mnist_sample_becomes_an_owned_prewarm() -> None:
    sample = {**TORCH_MNIST, "metadata": {**TORCH_MNIST["metadata"], "uid": "u-1"}}
    body = desired_prewarm(sample).body
    assert body is not None
    assert body["metadata"]["name"] == "torch-mnist" and body["metadata"]["namespace"] == "default"
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "serving.kserve.io/v1beta1",
                                                    "kind": "InferenceService", "name": "torch-mnist",
                                                    "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]
    spec = body["spec"]
    assert spec["storageUri"] == "s3://models/mnist" and spec["nodeCount"] == 1
    assert spec["serviceAccountName"] == "models-s3"
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert parse_spec(spec).device == "cuda"


@pytest.mark.parametrize("framework", ["pytorch", "sklearn", "tensorflow", "onnx", "triton", "xgboost",
                                       "lightgbm", "huggingface"])
def test_legacy_framework_fields(framework: str) -> None:
    predictor = Predictor.parse(isvc({framework: {"storageUri": "s3://m/x", "resources": {"limits": {"cpu": "1"}}}}))
    assert predictor.storage_uris == ("s3://m/x",) and predictor.resources == {"limits": {"cpu": "1"}}


def test_node_count_from_min_replicas_and_the_annotation() -> None:
    def count(predictor: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
        found = desired_prewarm(isvc({"model": {"storageUri": "s3://m/x"}, **predictor}, annotations))
        assert found.body is not None
        return found.body["spec"]["nodeCount"], found.problems

    assert count({}) == (1, ())
    assert count({"minReplicas": 0}) == (1, ())
    assert count({"minReplicas": 3}) == (3, ())
    assert count({"minReplicas": 3}, {"serverless.xyz/prewarm-nodes": "5"}) == (5, ())
    bad, problems = count({"minReplicas": 2}, {"serverless.xyz/prewarm-nodes": "lots"})
    assert bad == 2 and "is not a node count" in problems[0]


def test_only_node_affinity_requirements_and_toleration_fields_are_kept() -> None:
    required = {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}
    body = desired_prewarm(isvc({"model": {"storageUri": "s3://m/x"},
                                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                                                               required},
                                              "podAntiAffinity": {"x": 1}},
                                 "tolerations": [{"key": "a", "operator": "Exists", "extra": True}]})).body
    assert body is not None
    assert body["spec"]["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    assert body["spec"]["tolerations"] == [{"key": "a", "operator": "Exists"}]


def test_several_storage_uris_are_flagged_and_no_uri_means_nothing_to_warm() -> None:
    flagged = desired_prewarm(isvc({"model": {"storageUri": "s3://m/a"},
                                    "storageUris": [{"uri": "s3://m/b", "mountPath": "/mnt/b"}]})).body
    assert flagged is not None and "several storageUris" in flagged["metadata"]["annotations"][ANNOTATION_UNSUPPORTED]
    nothing = desired_prewarm(isvc({"containers": [{"name": "c", "image": "i"}]}))
    assert nothing.body is None and "no storageUri" in nothing.problems[0]


def test_opt_in_by_annotation_or_namespace_label() -> None:
    plain = isvc({"model": {"storageUri": "s3://m/x"}})
    assert not opted_in(plain, {})
    assert opted_in(isvc({}, {"serverless.xyz/prewarm": "true"}), {})
    assert opted_in(plain, {"serverless.xyz/prewarm": "enabled"})
    assert not opted_in(isvc({}, {"serverless.xyz/prewarm": "false"}), {"serverless.xyz/prewarm": "enabled"})


def test_device_annotation_picks_the_preloader_device() -> None:
    gpu = {"model": {"storageUri": "s3://m/x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}}
    plain = desired_prewarm(isvc(gpu)).body
    assert plain is not None and "device" not in plain["spec"] and parse_spec(plain["spec"]).device == "cuda"
    cpu = desired_prewarm(isvc(gpu, {"serverless.xyz/prewarm-device": "cpu"})).body
    assert cpu is not None and parse_spec(cpu["spec"]).device == "cpu"
    bad = desired_prewarm(isvc(gpu, {"serverless.xyz/prewarm-device": "tpu"}))
    assert bad.body is not None and "device" not in bad.body["spec"]
    assert "is not one of cuda, cpu, none" in bad.problems[0]
