"""CRD admission: non-structural schemas refused, and for custom resources: schema defaults,
pruning and fieldValidation, value validations, CEL rules (x-kubernetes-validations)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster import ApiError, ClusterClient
from tests.conformance.harness import Server, attempt, compare, normalise, pick

GROUP = "conformance.devcluster.test"
WIDGETS_GV = f"{GROUP}/v1"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CANARY_GV = "serving.serverless.xyz/v1alpha1"

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                 "message": "min must not exceed max"},
                {"rule": "self.mode != 'slow' || self.size <= 5", "message": "a slow widget has at most 5",
                 "fieldPath": ".size"},
            ],
            "properties": {
                "size": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast",
                         "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "mode is immutable"}]},
                "min": {"type": "integer"},
                "max": {"type": "integer"},
                "name": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
                "quantity": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                             "pattern": "^[0-9]+[a-z]*$"},
                "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 64},
                         "x-kubernetes-validations": [{"rule": "self.all(t, t.startsWith('t-'))",
                                                       "message": "tags start with t-"}]},
                "nested": {"type": "object", "default": {},
                           "properties": {"inner": {"type": "string", "default": "x"}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "ratio": {"type": "number"},
                "when": {"type": "string", "format": "date-time"},
                "replicas": {"type": "integer",
                             "x-kubernetes-validations": [{"rule": "self % 2 == 0", "message": "must be even"}]},
                "hosts": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 64},
                          "x-kubernetes-validations": [{"rule": "size(self) == size(self.map(h, h.lowerAscii()))",
                                                        "message": "never fails"}]},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def crd_body(plural: str, kind: str, schema: dict[str, Any], group: str = GROUP) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": schema}}]}}


def install(kube: ClusterClient, body: dict[str, Any], served_path: str) -> None:
    kube.create(CRDS, body)
    deadline = time.monotonic() + 30
    while True:  # Established, and its handler serving (the real server takes a moment)
        try:
            kube.request("GET", served_path)
            return
        except ApiError as exc:
            if exc.status not in (404, 429) or time.monotonic() > deadline:  # 429: storage initializing
                raise
        time.sleep(0.1)


@pytest.fixture(scope="module", autouse=True)
def widgets(emulator: ClusterClient, real: ClusterClient) -> Iterator[None]:
    for kube in (emulator, real):
        install(kube, crd_body("widgets", "Widget", WIDGET_SCHEMA), f"/apis/{WIDGETS_GV}/widgets")
    yield
    for kube in (emulator, real):
        kube.delete(f"{CRDS}/widgets.{GROUP}")


def widget(name: str, /, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": WIDGETS_GV, "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def create_widget(s: Server, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return attempt(lambda: s.client.create(s.path(WIDGETS_GV, "widgets"), body, **kwargs), message=True)


# ---- defaults, pruning, fieldValidation -------------------------------------------------------------

def test_defaults_applied_on_create(servers: dict[str, Server]) -> None:
    compare("schema defaults applied on create (nested default object too)",
            lambda s: create_widget(s, widget("w")), servers)


def test_defaults_applied_on_update(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(WIDGETS_GV, "widgets"), widget("w", size=2))
        return attempt(lambda: s.client.patch(s.path(WIDGETS_GV, "widgets", "w"), {"spec": {"nested": None}}))
    compare("schema defaults applied again when a patch removes a defaulted field", operation, servers)


@pytest.mark.parametrize("mode", ["Strict", "Warn", "Ignore"])
def test_unknown_fields(servers: dict[str, Server], mode: str) -> None:
    def operation(s: Server) -> Any:
        body = widget("w", size=1, bogus=1, nested={"inner": "y", "other": 2}, free={"any": {"thing": 1}})
        body["extra"] = True
        body["metadata"]["bogusMeta"] = "x"
        answer = create_widget(s, body, field_validation=mode)
        return answer, sorted(s.client.warnings)
    compare(f"unknown fields with fieldValidation={mode}", operation, servers)


def test_unknown_fields_on_update(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path(WIDGETS_GV, "widgets"), widget("w"))
        body = {**created, "spec": {**created["spec"], "bogus": 1}}
        return attempt(lambda: s.client.put(s.path(WIDGETS_GV, "widgets", "w"), body), message=True)
    compare("unknown field in a PUT with fieldValidation=Strict: 400", operation, servers)


def test_unknown_fields_in_a_patch(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(WIDGETS_GV, "widgets"), widget("w"))
        return attempt(lambda: s.client.request("PATCH", s.path(WIDGETS_GV, "widgets", "w"), {"spec": {"bogus": 1}},
                                                content_type="application/merge-patch+json",
                                                params={"fieldValidation": "Strict"}))
    compare("unknown field in a merge patch with fieldValidation=Strict: 422 on the field patch", operation,
            servers)


def test_null_fields(servers: dict[str, Server]) -> None:
    compare("nulls of non-nullable fields are dropped",
            lambda s: create_widget(s, widget("w", size=None, name=None, labels={"a": "b"})), servers)


def test_builtin_unknown_field_strict(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}, "bogus": 1}
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body), message=True)
    compare("unknown field of a built-in kind with fieldValidation=Strict: 400", operation, servers)


# ---- value validations ----------------------------------------------------------------------------

INVALID_SPECS: dict[str, dict[str, Any]] = {
    "type": {"size": "big"},
    "maximum": {"size": 11},
    "minimum": {"size": -1},
    "enum": {"mode": "medium"},
    "maxLength": {"name": "abcdefghij"},
    "pattern": {"name": "ABC"},
    "maxItems": {"tags": ["t-1", "t-2", "t-3", "t-4"]},
    "int-or-string pattern": {"quantity": "-1"},
    "int-or-string type": {"quantity": 1.5},
    "date-time": {"when": "yesterday"},
    "additionalProperties type": {"labels": {"a": 1}},
    "two errors": {"size": 11, "mode": "medium"},
}


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_value(servers: dict[str, Server], case: str) -> None:
    compare(f"schema violation ({case}): 422 Invalid",
            lambda s: create_widget(s, widget("w", **INVALID_SPECS[case])), servers)


def test_valid_values(servers: dict[str, Server]) -> None:
    compare("valid values of every type", lambda s: create_widget(s, widget(
        "w", size=4, mode="slow", min=1, max=2, name="abc", quantity="10Gi", tags=["t-a"], ratio=0.5,
        when="2026-01-02T03:04:05Z", replicas=4, labels={"a": "b"}, hosts=["A"])), servers)


def test_int_or_string_integer(servers: dict[str, Server]) -> None:
    compare("int-or-string: an integer is accepted", lambda s: create_widget(s, widget("w", quantity=3)), servers)


# ---- CEL rules ----------------------------------------------------------------------------------------

CEL_VIOLATIONS: dict[str, dict[str, Any]] = {
    "object rule": {"min": 5, "max": 1},
    "rule with fieldPath": {"mode": "slow", "size": 6},
    "field rule": {"replicas": 3},
    "list rule with a macro": {"tags": ["t-1", "x"]},
    "two rules": {"min": 5, "max": 1, "replicas": 3},
}


@pytest.mark.parametrize("case", sorted(CEL_VIOLATIONS))
def test_cel_violation(servers: dict[str, Server], case: str) -> None:
    compare(f"CEL x-kubernetes-validations ({case}): 422 Invalid",
            lambda s: create_widget(s, widget("w", **CEL_VIOLATIONS[case])), servers)


def test_cel_transition_rule(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(WIDGETS_GV, "widgets"), widget("w", mode="fast"))
        path = s.path(WIDGETS_GV, "widgets", "w")
        changed = attempt(lambda: s.client.patch(path, {"spec": {"mode": "slow"}}), message=True)
        same = attempt(lambda: s.client.patch(path, {"spec": {"mode": "fast", "size": 3}}),
                       shape=lambda obj: pick(obj, "spec"))
        return changed, same
    compare("CEL transition rule (self == oldSelf) on update: 422 when changed", operation, servers)


def canary(stable: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": CANARY_GV, "kind": "ModelCanary", "metadata": {"name": "c"},
            "spec": {"virtualService": {"name": "vs"}, "stable": stable, "candidate": {"host": "new"},
                     "percent": 10, **extra}}


@pytest.mark.parametrize("stable", [{"inferenceService": "a", "host": "b"}, {}, {"host": "b"}],
                         ids=["both", "neither", "one"])
def test_modelcanary_cel_rule(servers: dict[str, Server], stable: dict[str, Any]) -> None:
    compare(f"ModelCanary's CEL rule (exactly one of inferenceService and host): {sorted(stable)}",
            lambda s: attempt(lambda: s.client.create(s.path(CANARY_GV, "modelcanaries"), canary(stable)),
                              message=True), servers)


def test_modelcanary_analysis_rule(servers: dict[str, Server]) -> None:
    compare("ModelCanary's CEL rule (an analysis needs max or min)",
            lambda s: attempt(lambda: s.client.create(s.path(CANARY_GV, "modelcanaries"), canary(
                {"host": "old"}, steps={"weights": [10], "interval": "1m", "analysis": {"query": "up"}})),
                message=True), servers)


# ---- CRD admission ---------------------------------------------------------------------------------

def spec_schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": properties}}}


NON_STRUCTURAL: dict[str, dict[str, Any]] = {
    # manifests/crds/modelprewarm.yaml before it was fixed: a value validation inside an anyOf branch.
    "int-or-string with pattern in a branch": spec_schema(quantity={
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}),
    "type inside allOf": spec_schema(size={"type": "integer", "allOf": [{"type": "integer", "minimum": 1}]}),
    "field without a type": spec_schema(size={"minimum": 1}),
    "description inside oneOf": spec_schema(size={"type": "integer", "oneOf": [
        {"minimum": 1, "description": "positive"}, {"maximum": -1}]}),
    "property only inside anyOf": spec_schema(a={"type": "object", "anyOf": [
        {"properties": {"b": {"type": "string"}}}]}),
    "array without items": spec_schema(list={"type": "array"}),
    "root not an object": {"type": "string"},
    "metadata restricted beyond name": {"type": "object", "properties": {"metadata": {
        "type": "object", "properties": {"labels": {"type": "object"}}}}},
    "nullable inside anyOf": spec_schema(size={"type": "integer", "anyOf": [{"nullable": True}]}),
    "preserve-unknown-fields with int-or-string": spec_schema(v={
        "x-kubernetes-int-or-string": True, "x-kubernetes-preserve-unknown-fields": True}),
    "additionalProperties inside not": spec_schema(m={"type": "object", "additionalProperties": {"type": "string"},
                                                    "not": {"additionalProperties": {"type": "integer"}}}),
}


@pytest.mark.parametrize("case", sorted(NON_STRUCTURAL))
def test_non_structural_crd_rejected(servers: dict[str, Server], case: str) -> None:
    def operation(s: Server) -> Any:
        plural = f"nonstructural{sorted(NON_STRUCTURAL).index(case)}x{s.namespace[-4:]}"
        body = crd_body(plural, "Thing", copy.deepcopy(NON_STRUCTURAL[case]))
        answer = attempt(lambda: s.client.create(CRDS, body), message=True)
        if "ok" in answer:
            s.client.delete(f"{CRDS}/{plural}.{GROUP}")
        return answer
    compare(f"non-structural CRD ({case}): 422 Invalid", operation, servers)


STRUCTURAL: dict[str, dict[str, Any]] = {
    "int-or-string with the pattern beside anyOf": spec_schema(quantity={
        "x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": "^[0-9]+$"}),
    "int-or-string in allOf": spec_schema(quantity={
        "x-kubernetes-int-or-string": True, "allOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]},
                                                      {"minimum": 1}]}),
    "value validations in anyOf": spec_schema(size={"type": "integer", "anyOf": [{"minimum": 5}, {"maximum": 1}]}),
    "metadata restricting the name": {"type": "object", "properties": {"metadata": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}}}},
}


@pytest.mark.parametrize("case", sorted(STRUCTURAL))
def test_structural_crd_accepted(servers: dict[str, Server], case: str) -> None:
    def operation(s: Server) -> Any:
        plural = f"structural{sorted(STRUCTURAL).index(case)}x{s.namespace[-4:]}"
        body = crd_body(plural, "Thing", copy.deepcopy(STRUCTURAL[case]))
        answer = attempt(lambda: s.client.create(CRDS, body), message=True,
                         shape=lambda obj: pick(obj, "spec.names.kind", "spec.scope", "spec.group"))
        if "ok" in answer:
            s.client.delete(f"{CRDS}/{plural}.{GROUP}")
        return answer
    compare(f"structural CRD ({case}): accepted", operation, servers)


def test_crd_with_invalid_cel_rule(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = f"celbad{s.namespace[-4:]}s"
        schema = spec_schema(size={"type": "integer", "x-kubernetes-validations": [{"rule": "self >"}]})
        answer = attempt(lambda: s.client.create(CRDS, crd_body(plural, "Thing", schema)))
        if "ok" in answer:
            s.client.delete(f"{CRDS}/{plural}.{GROUP}")
        return answer
    compare("CRD with a CEL rule that does not compile: 422 Invalid", operation, servers)


def test_metadata_name_restriction(servers: dict[str, Server]) -> None:
    """A schema may restrict metadata.name: the real server checks it on create."""
    def operation(s: Server) -> Any:
        plural = f"named{s.namespace[-4:]}s"
        schema = {"type": "object", "properties": {"metadata": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5}}}}}
        install(s.client, crd_body(plural, "Named", schema), f"/apis/{WIDGETS_GV}/{plural}")
        try:
            path = s.path(WIDGETS_GV, plural)
            named = {"apiVersion": WIDGETS_GV, "kind": "Named"}
            long = attempt(lambda: s.client.create(path, {**named, "metadata": {"name": "toolong"}}), message=True)
            short = attempt(lambda: s.client.create(path, {**named, "metadata": {"name": "ok"}}),
                            shape=lambda obj: normalise(obj)["metadata"]["name"])
        finally:
            s.client.delete(f"{CRDS}/{plural}.{GROUP}")
        return long, short
    compare("a CRD schema restricting metadata.name", operation, servers)
