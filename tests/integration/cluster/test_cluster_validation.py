"""Custom resources are validated against the CRD's openAPIV3Schema, like the API server does."""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import ApiError, ClusterClient
from devcluster.errors import ApiStatusError
from devcluster.validation import CustomResourceSchema, admit_custom

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"


def memcached(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize(("spec", "field", "message"), [
    ({"size": 101}, "spec.size",
     "Invalid value: 101: spec.size in body should be less than or equal to 100"),
    ({"size": -1}, "spec.size", "Invalid value: -1: spec.size in body should be greater than or equal to 0"),
    ({"size": "3"}, "spec.size", 'Invalid value: "string": spec.size in body must be of type integer: "string"'),
    ({"size": 1, "scalingWindow": "five minutes"}, "spec.scalingWindow",
     "Invalid value: \"five minutes\": spec.scalingWindow in body should match '^([0-9]+(s|m|h))+$'"),
    ({"size": 1, "coldStartBuffer": -2}, "spec.coldStartBuffer",
     "Invalid value: -2: spec.coldStartBuffer in body should be greater than or equal to 0"),
    ({}, "spec.size", "Required value"),
    ({"size": 1, "metricsQuery": ""}, "spec.metricsQuery",
     'Invalid value: "": spec.metricsQuery in body should be at least 1 chars long'),
])
def test_bad_specs_are_422_invalid(kube: ClusterClient, spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(MC, memcached(**spec))
    assert info.value.status == 422
    assert info.value.reason == "Invalid"
    assert info.value.message == f'Memcached.cache.serverless.xyz "x" is invalid: {field}: {message}'
    assert info.value.body["details"]["causes"] == [
        {"reason": info.value.body["details"]["causes"][0]["reason"], "message": message, "field": field}]


def test_updates_and_patches_are_validated_too(kube: ClusterClient) -> None:
    created = kube.create(MC, memcached(size=1))
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/x", {"spec": {"size": 101}})
    assert info.value.status == 422
    created["spec"]["size"] = 200
    with pytest.raises(ApiError) as info:
        kube.put(f"{MC}/x", created)
    assert info.value.status == 422


def test_defaults_are_applied(kube: ClusterClient) -> None:
    created = kube.create(MC, memcached(size=2))
    assert created["spec"] == {"size": 2, "scalingWindow": "5m", "coldStartBuffer": 0}


def test_unknown_fields_follow_field_validation(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(MC, memcached(size=1, foo=1), field_validation="Strict")
    assert info.value.status == 400
    assert info.value.reason == "BadRequest"
    assert info.value.message == ('Memcached in version "v1alpha1" cannot be handled as a Memcached: '
                                  'strict decoding error: unknown field "spec.foo"')
    created = kube.create(MC, memcached(size=1))
    with pytest.raises(ApiError) as info:
        kube.put(f"{MC}/x", {**created, "spec": {"size": 1, "foo": 1}}, field_validation="Strict")
    assert info.value.status == 400 and info.value.message.startswith('Memcached in version "v1alpha1" cannot')
    with pytest.raises(ApiError) as info:  # a patch's unknown fields are a 422 on the field "patch"
        kube.request("PATCH", f"{MC}/x", {"spec": {"foo": 1}}, content_type="application/merge-patch+json",
                     params={"fieldValidation": "Strict"})
    assert info.value.status == 422 and info.value.reason == "Invalid"
    assert info.value.body["details"]["causes"][0]["field"] == "patch"
    assert info.value.message.endswith('strict decoding error: unknown field "spec.foo"')
    kube.delete(f"{MC}/x")

    warned = kube.create(MC, memcached(size=1, foo=1), field_validation="Warn")
    assert "foo" not in warned["spec"]
    assert kube.warnings == ['299 - "unknown field \\"spec.foo\\""']

    kube.delete(f"{MC}/x")
    ignored = kube.create(MC, memcached(size=1, foo=1), field_validation="Ignore")
    assert "foo" not in ignored["spec"] and kube.warnings == []

    kube.patch(f"{MC}/x", {"spec": {"bar": 1}})  # the server default is Warn: pruned
    assert "bar" not in kube.get(f"{MC}/x")["spec"]


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {"type": "object", "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "note": {"type": "string", "nullable": True},
            "count": {"type": "integer", "default": 3},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                         "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string", "enum": ["a", "b"]}}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
            "when": {"type": "string", "format": "date-time"},
        }},
    },
}


def admit(spec: dict[str, Any], field_validation: str = "Strict") -> dict[str, Any]:
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    obj, _ = admit_custom(CustomResourceSchema(SCHEMA), body,
                          field_validation=field_validation, kind="Widget", group="example.com", name="w")
    return obj["spec"]  # type: ignore[no-any-return]


def test_openapi_extensions() -> None:
    assert admit({"port": 80})["port"] == 80
    assert admit({"port": "http"})["port"] == "http"
    assert admit({"note": None})["note"] is None
    assert admit({})["count"] == 3
    assert admit({"free": {"any": {"thing": 1}}})["free"] == {"any": {"thing": 1}}
    embedded = admit({"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                   "spec": {"containers": []}}})["template"]
    assert embedded["kind"] == "Pod" and embedded["metadata"] == {"name": "p"}
    assert admit({"labels": {"a": "xyz"}})["labels"] == {"a": "xyz"}
    assert admit({"when": "2024-01-01T00:00:00Z"})["when"]
    assert "count" not in admit({"count": None}, "Ignore") or admit({"count": None}, "Ignore")["count"] == 3


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"port": True}, 'spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string'),
    ({"items": [{"name": "c"}]}, 'spec.items[0].name: Unsupported value: "c": supported values: "a", "b"'),
    ({"labels": {"a": "toolong"}}, "spec.labels.a: Too long: may not be more than 3 bytes"),
    ({"when": "not a date"}, 'spec.when in body must be of type date-time: "not a date"'),
])
def test_openapi_violations(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ApiStatusError) as info:
        admit(spec)
    assert fragment in (info.value.message or "")


def test_strict_reports_nested_unknown_fields() -> None:
    with pytest.raises(ApiStatusError) as info:
        admit({"items": [{"name": "a", "extra": 1}]})
    assert info.value.message == ('Widget in version "v1" cannot be handled as a Widget: '
                                  'strict decoding error: unknown field "spec.items[0].extra"')
