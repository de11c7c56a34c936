"""The ModelPrewarm CRD admits the samples and rejects bad input the way the API server would
(the emulated server's admission: structural pruning, defaults, then the OpenAPI schema)."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devcluster.errors import ApiStatusError
from devcluster.validation import CustomResourceSchema, admit_custom

ROOT = pathlib.Path(__file__).resolve().parents[3]
CRD = yaml.safe_load((ROOT / "manifests" / "crds" / "modelprewarm.yaml").read_text())
ISVC_CRD = yaml.safe_load(
    (ROOT / "tests" / "fixtures" / "crds" / "serving.kserve.io_inferenceservices.yaml").read_text())


def admit(doc: dict[str, Any], crd: dict[str, Any] = CRD) -> dict[str, Any]:
    schema = CustomResourceSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    admitted, warnings = admit_custom(schema, doc, field_validation="Strict", kind=crd["spec"]["names"]["kind"],
                                      group=crd["spec"]["group"], name=doc["metadata"]["name"])
    assert warnings == []
    return admitted


def prewarm(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
            "metadata": {"name": "m", "namespace": "default"}, "spec": spec}


def test_crd_is_a_valid_crd_with_the_agreed_names_and_columns() -> None:
    kubernetes_validate.validate(CRD, kubernetes_validate.latest_version(), strict=True)
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelPrewarm", "modelprewarms", ["prewarm"])
    version = CRD["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    assert columns == [".spec.storageUri", ".status.phase", ".status.warm",
                       '.status.conditions[?(@.type=="Ready")].status', ".status.servingOnWarmNodes",
                       ".metadata.creationTimestamp"]


def test_defaults_fill_a_minimal_spec() -> None:
    spec = admit(prewarm(storageUri="s3://models/mnist"))["spec"]
    assert spec["nodeCount"] == 1 and spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert "cache" not in spec


@pytest.mark.parametrize(("spec", "expected"), [
    ({"storageUri": "s3://m/x", "nodeCount": 0}, "greater than or equal to 1"),
    ({"storageUri": "s3://m/x", "nodeCount": -1}, "greater than or equal to 1"),
    ({"storageUri": "s3://m/x", "nodeCount": "2"}, "must be of type integer"),
    ({"storageUri": "s3://m/x", "nodeCount": 1, "replicas": 2}, 'unknown field "spec.replicas"'),
    ({"nodeCount": 1}, "spec.storageUri: Required value"),
    ({"storageUri": "s3://m/x", "device": "tpu"}, "Unsupported value"),
    # The node cache's path is the platform's setting: no tenant field reaches a host path.
    ({"storageUri": "s3://m/x", "cache": {"hostPath": "/etc"}}, 'unknown field "spec.cache"'),
    ({"storageUri": "s3://m/x", "resources": {"limits": {"nvidia.com/gpu": "one"}}}, "resources.limits"),
    ({"storageUri": "s3://m/x", "tolerations": [{"key": "a", "operator": "Matches"}]}, "Unsupported value"),
])
def test_bad_specs_are_rejected(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(ApiStatusError) as caught:
        admit(prewarm(**spec))
    assert expected in str(caught.value)


def test_device_none_fills_the_cache_only() -> None:
    assert admit(prewarm(storageUri="s3://m/x", device="none"))["spec"]["device"] == "none"


def test_partial_warmth_and_retries_fit_the_status_schema() -> None:
    status = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "PartiallyWarm" in status["phase"]["enum"]
    assert (status["warm"]["type"], status["servingOnWarmNodes"]["type"], status["servingPods"]["type"]) == (
        "string", "string", "integer")
    assert status["nextRetryAt"]["nullable"] is True and status["warmNodes"]["type"] == "integer"
    node = status["nodes"]["items"]["properties"]
    assert (node["attempts"]["type"], node["retryAt"]["type"], node["hostname"]["type"]) == (
        "integer", "string", "string")


def test_samples_are_admitted_by_their_crds() -> None:
    sample = yaml.safe_load((ROOT / "manifests" / "samples" / "modelprewarm.yaml").read_text())
    assert admit(sample)["spec"]["nodeCount"] == 2
    isvc = yaml.safe_load((ROOT / "manifests" / "samples" / "torch-mnist.yaml").read_text())
    admitted = admit(isvc, ISVC_CRD)
    assert admitted["spec"]["predictor"]["model"]["storageUri"] == "s3://models/mnist"
