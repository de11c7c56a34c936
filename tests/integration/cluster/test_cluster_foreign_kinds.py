"""KServe's InferenceService and Istio's VirtualService, served from the test fixtures' CRDs.

The operator's next two controllers read and patch these kinds; the emulator must serve them
with the same discovery, schema validation and multi-version behaviour as a real cluster
with KServe and Istio installed.
"""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import ApiError, ClusterClient

ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
VS_V1 = "/apis/networking.istio.io/v1/namespaces/default/virtualservices"
VS_V1BETA1 = "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices"


def inference_service(name: str = "sklearn-iris", **predictor: Any) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {"predictor": predictor or {
                "minReplicas": 1, "maxReplicas": 3, "canaryTrafficPercent": 10,
                "serviceAccountName": "models",
                "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
                "model": {"modelFormat": {"name": "sklearn", "version": "1"}, "runtime": "kserve-mlserver",
                          "storageUri": "s3://models/iris", "args": ["--workers", "2"],
                          "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}],
                          "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "2Gi"}}}}}}


def virtual_service(name: str = "iris", weights: tuple[int, int] = (90, 10)) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
            "spec": {"hosts": ["iris.example.com"], "gateways": ["mesh"], "exportTo": ["."],
                     "http": [{"name": "primary",
                               "match": [{"uri": {"prefix": "/v1/models"}, "headers": {"x-canary": {"exact": "1"}}}],
                               "route": [{"destination": {"host": "iris-stable", "subset": "v1",
                                                          "port": {"number": 80}}, "weight": weights[0]},
                                         {"destination": {"host": "iris-canary", "port": {"number": 80}},
                                          "weight": weights[1],
                                          "headers": {"response": {"set": {"x-variant": "canary"}}}}],
                               "timeout": "5s", "retries": {"attempts": 3, "perTryTimeout": "2s"},
                               "mirror": {"host": "iris-shadow"}, "mirrorPercentage": {"value": 5.0}}],
                     "tcp": [{"match": [{"port": 9000}], "route": [{"destination": {"host": "iris-grpc"}}]}],
                     "tls": [{"match": [{"sniHosts": ["iris.example.com"]}],
                              "route": [{"destination": {"host": "iris-tls"}}]}]}}


def test_discovery_lists_both_kinds_with_short_names(kube: ClusterClient) -> None:
    isvc = kube.get("/apis/serving.kserve.io/v1beta1")["resources"]
    assert {"name": "inferenceservices", "kind": "InferenceService"}.items() <= \
        next(r for r in isvc if r["name"] == "inferenceservices").items()
    assert next(r for r in isvc if r["name"] == "inferenceservices")["shortNames"] == ["isvc"]
    group = kube.get("/apis/networking.istio.io")
    assert [v["version"] for v in group["versions"]] == ["v1", "v1beta1"]
    assert group["preferredVersion"]["version"] == "v1"
    for version in ("v1", "v1beta1"):
        vs = next(r for r in kube.get(f"/apis/networking.istio.io/{version}")["resources"]
                  if r["name"] == "virtualservices")
        assert vs["shortNames"] == ["vs"] and vs["namespaced"] is True


def test_an_inference_service_round_trips_with_a_separate_status(kube: ClusterClient) -> None:
    created = kube.create(ISVC, inference_service())
    assert created["spec"]["predictor"]["model"]["resources"]["limits"] == {"nvidia.com/gpu": 1, "memory": "2Gi"}
    assert created["spec"]["predictor"]["affinity"] == \
        {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}  # preserved, not pruned
    assert "status" not in created
    status = {"observedGeneration": 1, "url": "http://sklearn-iris.default.example.com",
              "conditions": [{"type": "Ready", "status": "True"}],
              "components": {"predictor": {"latestReadyRevision": "sklearn-iris-predictor-00001",
                                           "traffic": [{"percent": 100, "latestRevision": True}]}}}
    kube.patch(f"{ISVC}/sklearn-iris/status", {"status": status})
    again = kube.patch(f"{ISVC}/sklearn-iris", {"spec": {"predictor": {"minReplicas": 2}}, "status": {"url": "x"}})
    assert again["status"] == status  # the main resource ignores status writes
    assert again["metadata"]["generation"] == 2


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
                                       "huggingface", "pmml", "lightgbm", "paddle"])
def test_every_legacy_framework_spec_is_typed(kube: ClusterClient, framework: str) -> None:
    created = kube.create(ISVC, inference_service(
        f"legacy-{framework}", **{framework: {"storageUri": "s3://m", "storageUris": [{"uri": "s3://n"}],
                                              "runtimeVersion": "1.0", "args": ["-v"],
                                              "env": [{"name": "A", "value": "1"}]}}))
    assert created["spec"]["predictor"][framework]["storageUris"] == [{"uri": "s3://n"}]
    with pytest.raises(ApiError) as info:
        kube.create(ISVC, inference_service(f"bad-{framework}", **{framework: {"args": "not-a-list"}}))
    assert info.value.status == 422
    assert f"spec.predictor.{framework}.args: Invalid value: \"string\"" in info.value.message


@pytest.mark.parametrize(("predictor", "field"), [
    ({"model": {"runtime": "x"}}, "spec.predictor.model.modelFormat: Required value"),
    ({"model": {"modelFormat": {"version": "1"}}}, "spec.predictor.model.modelFormat.name: Required value"),
    ({"minReplicas": "one"}, 'spec.predictor.minReplicas: Invalid value: "string"'),
    ({"canaryTrafficPercent": 12.5}, "spec.predictor.canaryTrafficPercent: Invalid value: \"number\""),
    ({"scaleMetric": "gpu"}, 'spec.predictor.scaleMetric: Unsupported value: "gpu"'),
    ({"nodeSelector": {"a": 1}}, 'spec.predictor.nodeSelector.a: Invalid value: "integer"'),
])
def test_a_bad_inference_service_is_422(kube: ClusterClient, predictor: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(ISVC, inference_service("bad", **predictor))
    assert info.value.status == 422
    assert info.value.message.startswith('InferenceService.serving.kserve.io "bad" is invalid: ')
    assert field in info.value.message


def test_an_inference_service_needs_a_predictor(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(ISVC, {**inference_service("empty"), "spec": {}})
    assert info.value.status == 422 and "spec.predictor: Required value" in info.value.message


def test_unknown_predictor_fields_are_pruned_with_a_warning(kube: ClusterClient) -> None:
    created = kube.create(ISVC, inference_service("pruned", model={"modelFormat": {"name": "onnx"}, "gpus": 2}),
                          field_validation="Warn")
    assert created["spec"]["predictor"]["model"] == {"modelFormat": {"name": "onnx"}}
    assert any("spec.predictor.model.gpus" in warning for warning in kube.warnings)


def test_a_virtual_service_is_one_object_at_both_versions(kube: ClusterClient) -> None:
    created = kube.create(VS_V1, virtual_service())
    assert created["apiVersion"] == "networking.istio.io/v1"
    old = kube.get(f"{VS_V1BETA1}/iris")
    assert old["apiVersion"] == "networking.istio.io/v1beta1"
    assert {k: v for k, v in old.items() if k != "apiVersion"} == \
        {k: v for k, v in created.items() if k != "apiVersion"}
    patched = kube.patch(f"{VS_V1BETA1}/iris", [{"op": "replace", "path": "/spec/http/0/route/0/weight",
                                                 "value": 50},
                                                {"op": "replace", "path": "/spec/http/0/route/1/weight",
                                                 "value": 50}], content_type="application/json-patch+json")
    assert patched["apiVersion"] == "networking.istio.io/v1beta1"
    current = kube.get(f"{VS_V1}/iris")
    assert [r["weight"] for r in current["spec"]["http"][0]["route"]] == [50, 50]
    assert current["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    assert [o["metadata"]["name"] for o in kube.list(VS_V1BETA1)] == ["iris"]


def test_a_virtual_service_created_at_v1beta1_is_stored_once(kube: ClusterClient) -> None:
    body = virtual_service("old")
    body["apiVersion"] = "networking.istio.io/v1beta1"
    kube.create(VS_V1BETA1, body)
    assert kube.get(f"{VS_V1}/old")["metadata"]["uid"] == kube.get(f"{VS_V1BETA1}/old")["metadata"]["uid"]
    with pytest.raises(ApiError) as info:
        kube.create(VS_V1, body)  # the v1beta1 body at the v1 URL
    assert info.value.status == 400


@pytest.mark.parametrize("url", [VS_V1, VS_V1BETA1])
@pytest.mark.parametrize(("change", "field"), [
    ({"hosts": "iris"}, 'spec.hosts: Invalid value: "string"'),
    ({"http": [{"route": [{"weight": 1}]}]}, "spec.http[0].route[0].destination: Required value"),
    ({"http": [{"route": [{"destination": {"host": "a"}, "weight": "half"}]}]},
     'spec.http[0].route[0].weight: Invalid value: "string"'),
    ({"http": [{"route": [{"destination": {"host": "a", "port": {"number": -1}}}]}]},
     "spec.http[0].route[0].destination.port.number: Invalid value: -1"),
    ({"tls": [{"match": [{"port": 443}]}]}, "spec.tls[0].match[0].sniHosts: Required value"),
    ({"http": [{"redirect": {"derivePort": "ANY"}}]}, 'spec.http[0].redirect.derivePort: Unsupported value: "ANY"'),
])
def test_a_bad_virtual_service_is_422_at_every_version(kube: ClusterClient, url: str, change: dict[str, Any],
                                                       field: str) -> None:
    body = virtual_service("bad")
    body["apiVersion"] = "networking.istio.io/" + url.split("/")[3]
    body["spec"].update(change)
    with pytest.raises(ApiError) as info:
        kube.create(url, body)
    assert info.value.status == 422
    assert field in info.value.message


def test_a_virtual_service_status_is_open(kube: ClusterClient) -> None:
    kube.create(VS_V1, virtual_service())
    status = {"observedGeneration": 1, "validationMessages": [{"type": {"code": "IST0101"}}]}
    patched = kube.patch(f"{VS_V1}/iris/status", {"status": status})
    assert patched["status"] == status
