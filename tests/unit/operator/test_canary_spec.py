"""The ModelCanary spec: what the CRD schema rejects, and what `parse_spec` rejects beyond it."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from devcluster.errors import ApiStatusError
from devcluster.validation import CustomResourceSchema, admit_custom
from kserve_operator.errors import InvalidSpec
from kserve_operator.resources.canary import canonical_host, parse_spec, predictor_host
from kserve_operator.resources.kinds import MODEL_CANARY
from kserve_operator.resources.routes import RouteTarget
from tests.unit.operator.canary_shapes import CANDIDATE_HOST, NAMESPACE, STABLE_HOST, raw_spec

CRD = pathlib.Path(__file__).resolve().parents[3] / "manifests" / "crds" / "modelcanary.yaml"


def admit(spec: dict[str, Any]) -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema = CustomResourceSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    body = {"apiVersion": MODEL_CANARY.api_version, "kind": MODEL_CANARY.kind,
            "metadata": {"name": "mnist", "namespace": NAMESPACE}, "spec": spec}
    admitted, _ = admit_custom(schema, body, field_validation="Strict", kind=MODEL_CANARY.kind,
                               group=MODEL_CANARY.group, name="mnist")
    return admitted


def test_the_crd_names_match_the_kind_descriptor() -> None:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == MODEL_CANARY.group
    assert crd["spec"]["names"]["plural"] == MODEL_CANARY.plural
    assert crd["spec"]["names"]["kind"] == MODEL_CANARY.kind
    assert crd["spec"]["names"]["shortNames"] == ["mcanary"]  # `canary` stays Flagger's
    assert [v["name"] for v in crd["spec"]["versions"]] == [MODEL_CANARY.version]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Stable", "Candidate", "Wanted", "In-Force", "Phase", "Ready", "Route", "Age"]
    wide = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if c.get("priority")]
    assert wide == ["Route"]  # kubectl get -o wide only: the default table stays as it was


def test_a_good_spec_is_admitted_with_defaults() -> None:
    admitted = admit(raw_spec(steps={"weights": [10, 50], "interval": "30s",
                                     "analysis": {"query": "q", "max": 0.05}}))
    assert admitted["spec"]["requireWarm"] is False
    assert admitted["spec"]["steps"]["analysis"]["failureLimit"] == 1


def http_route_spec(**route: Any) -> dict[str, Any]:
    spec = raw_spec(route={"kind": "HTTPRoute", "name": "mnist", **route})
    del spec["virtualService"]
    return spec


def test_route_names_the_kind_and_the_older_form_reads_as_a_virtual_service() -> None:
    admitted = admit(http_route_spec(namespace="gateways", rules=["predict"]))
    assert parse_spec(admitted["spec"], NAMESPACE).route == RouteTarget("HTTPRoute", "mnist", "gateways", ("predict",))
    assert parse_spec(http_route_spec(), NAMESPACE).route == RouteTarget("HTTPRoute", "mnist", NAMESPACE)
    older = parse_spec(admit(raw_spec(routes=["predict"]))["spec"], NAMESPACE)
    assert older.route == RouteTarget("VirtualService", "mnist", NAMESPACE, ("predict",))


@pytest.mark.parametrize(("spec", "words"), [
    (raw_spec(route={"kind": "HTTPRoute", "name": "mnist"}), "set one of route and virtualService"),
    ({k: v for k, v in raw_spec().items() if k != "virtualService"}, "set one of route and virtualService"),
    ({**http_route_spec(), "routes": ["predict"]}, "with route, name the rules in route.rules"),
    (http_route_spec(kind="Ingress"), "supported values"),
    (http_route_spec(rules=[]), "should have at least 1 items"),
])
def test_the_schema_rejects_a_route_it_cannot_use(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiStatusError) as caught:
        admit(spec)
    assert words in str(caught.value.status_body())


@pytest.mark.parametrize(("spec", "words"), [
    (raw_spec(route={"kind": "HTTPRoute", "name": "mnist"}), "set one of route and virtualService"),
    ({k: v for k, v in raw_spec().items() if k != "virtualService"}, "route is required"),
    ({**http_route_spec(), "routes": ["predict"]}, "with route, name the rules in route.rules"),
    (http_route_spec(kind="Ingress"), "route.kind must be one of VirtualService, HTTPRoute"),
    (http_route_spec(rules=["a", "a"]), "names a route twice"),
    (http_route_spec(name=""), "route.name must be a non-empty string"),
])
def test_parse_spec_rechecks_the_route(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        parse_spec(spec, NAMESPACE)


@pytest.mark.parametrize(("changes", "words"), [
    ({"percent": -5}, "greater than or equal to 0"),
    ({"percent": 150}, "less than or equal to 100"),
    ({"percent": "20"}, "must be of type integer"),
    ({"steps": {"weights": [10, 101], "interval": "1m"}}, "less than or equal to 100"),
    ({"steps": {"weights": [-1, 10], "interval": "1m"}}, "greater than or equal to 0"),
    ({"steps": {"weights": [10], "interval": "soon"}}, "should match"),
    ({"canary": True}, 'unknown field "spec.canary"'),
    ({"stable": {"inferenceService": "a", "weight": 5}}, 'unknown field "spec.stable.weight"'),
])
def test_the_schema_rejects(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiStatusError) as caught:
        admit(raw_spec(**changes))
    assert words in str(caught.value.status_body())


def test_backends_resolve_to_kserve_predictor_hosts() -> None:
    spec = parse_spec(raw_spec(), NAMESPACE)
    assert spec.stable.host == STABLE_HOST == predictor_host("torch-mnist", NAMESPACE)
    assert spec.candidate.host == CANDIDATE_HOST
    assert spec.route == RouteTarget("VirtualService", "mnist", NAMESPACE)
    assert spec.model_prewarm == "torch-mnist-v2"
    assert spec.inference_services == ("torch-mnist", "torch-mnist-v2")
    other = parse_spec(raw_spec(virtualService={"name": "vs", "namespace": "gateways"},
                                candidate={"host": "reviews.other", "modelPrewarm": "warm-v2"},
                                requireWarm=True), NAMESPACE)
    assert other.route.namespace == "gateways"
    assert other.candidate.host == "reviews.other.svc.cluster.local"
    assert other.model_prewarm == "warm-v2" and other.inference_services == ("torch-mnist",)


@pytest.mark.parametrize(("host", "canonical"), [
    ("reviews", "reviews.models.svc.cluster.local"),
    ("reviews.prod", "reviews.prod.svc.cluster.local"),
    ("reviews.prod.svc", "reviews.prod.svc.cluster.local"),
    ("reviews.prod.svc.cluster.local", "reviews.prod.svc.cluster.local"),
    ("api.example.com", "api.example.com"),
])
def test_short_hosts_are_read_relative_to_the_namespace(host: str, canonical: str) -> None:
    assert canonical_host(host, NAMESPACE) == canonical


@pytest.mark.parametrize(("changes", "words"), [
    ({"stable": {}}, "stable needs exactly one of inferenceService and host"),
    ({"candidate": {"inferenceService": "a", "host": "b"}}, "candidate needs exactly one"),
    ({"candidate": {"inferenceService": "torch-mnist"}}, "the same backend"),
    ({"steps": {"weights": [50, 10], "interval": "1m"}}, "must increase"),
    ({"steps": {"weights": [10, 10], "interval": "1m"}}, "must increase"),
    ({"steps": {"weights": [10], "interval": "0s"}}, "longer than 0s"),
    ({"steps": {"weights": [10], "interval": "1m", "analysis": {"query": "q"}}}, "max or a min"),
    ({"steps": {"weights": [10], "interval": "1m", "analysis": {"query": "q", "min": 2, "max": 1}}}, "above max"),
    ({"candidate": {"host": "reviews"}, "requireWarm": True}, "requireWarm needs candidate.modelPrewarm"),
    ({"routes": ["a", "a"]}, "names a route twice"),
    ({"percent": True}, "percent must be an integer"),
])
def test_what_the_schema_cannot_say_is_an_invalid_spec(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        parse_spec(raw_spec(**changes), NAMESPACE)
