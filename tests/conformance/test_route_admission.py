"""What the canary's routers rely on, as the real API server admits it (and the emulator alike):
the trimmed Gateway API HTTPRoute CRD (tests/fixtures/crds) fills in the defaults the HTTPRoute
planner reads (a backendRef's group "", kind Service and weight 1) and its CEL rule refuses a
Service backendRef without a port; a JSON patch of one rule's backendRefs pinned to a stale
resourceVersion answers 409; and the ModelCanary's `spec.route` rules (one of route and
virtualService; routes only with virtualService; the kinds it knows)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from devstack.mnist_httproute import http_route
from tests.conformance.harness import Server, attempt, compare, pick
from tests.conformance.test_crd_admission import CANARY_GV

ROUTES_GV = "gateway.networking.k8s.io/v1"


def bare_route(name: str) -> dict[str, Any]:
    """The mnist HTTPRoute as a person writes it: no weights, no group or kind on the backendRefs."""
    route = http_route(name=name)
    del route["metadata"]["namespace"]
    for rule in route["spec"]["rules"]:
        for ref in rule.get("backendRefs") or []:
            for key in ("group", "kind", "weight"):
                ref.pop(key, None)
    return route


def test_the_http_route_defaults_are_filled_in(servers: dict[str, Server]) -> None:
    compare("HTTPRoute: the CRD's defaults (backendRef group, kind, weight; parentRef group, kind)",
            lambda s: attempt(lambda: s.client.create(s.path(ROUTES_GV, "httproutes"), bare_route("defaults")),
                              shape=lambda obj: pick(obj, "spec")), servers)


def test_a_service_backend_ref_needs_a_port(servers: dict[str, Server]) -> None:
    route = bare_route("no-port")
    del route["spec"]["rules"][1]["backendRefs"][0]["port"]
    answer = compare("HTTPRoute: CEL refuses a Service backendRef without a port",
                     lambda s: attempt(lambda: s.client.create(s.path(ROUTES_GV, "httproutes"), copy.deepcopy(route)),
                                       message=True), servers)
    assert answer["error"]["code"] == 422, answer


def test_a_pinned_json_patch_of_backend_refs_answers_409_when_stale(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path(ROUTES_GV, "httproutes"), bare_route("pinned"))
        path = s.path(ROUTES_GV, "httproutes", "pinned")
        s.client.patch(path, [{"op": "replace", "path": "/spec/rules/0/timeouts/request", "value": "61s"}],
                       "application/json-patch+json")  # someone else, after our read
        refs = created["spec"]["rules"][1]["backendRefs"]
        return attempt(lambda: s.client.patch(path, [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": created["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/spec/rules/1/backendRefs", "value": [{**refs[0], "weight": 90}]}],
            "application/json-patch+json"), message=True)
    answer = compare("HTTPRoute: a JSON patch pinned to a stale resourceVersion", operation, servers)
    assert answer["error"]["code"] == 409, answer


def canary(**target: Any) -> dict[str, Any]:
    return {"apiVersion": CANARY_GV, "kind": "ModelCanary", "metadata": {"name": "routed"},
            "spec": {**target, "stable": {"inferenceService": "old"}, "candidate": {"inferenceService": "new"},
                     "percent": 10}}


TARGETS = {
    "route": ({"route": {"kind": "HTTPRoute", "name": "mnist", "rules": ["predict"]}}, None),
    "virtualService and routes": ({"virtualService": {"name": "mnist"}, "routes": ["predict"]}, None),
    "route and virtualService": ({"route": {"kind": "HTTPRoute", "name": "mnist"},
                                  "virtualService": {"name": "mnist"}}, 422),
    "neither": ({}, 422),
    "route with routes": ({"route": {"kind": "VirtualService", "name": "mnist"}, "routes": ["predict"]}, 422),
    "an unknown kind": ({"route": {"kind": "Ingress", "name": "mnist"}}, 422),
}


@pytest.mark.parametrize("case", sorted(TARGETS))
def test_the_modelcanary_route_rules(servers: dict[str, Server], case: str) -> None:
    target, code = TARGETS[case]
    answer = compare(f"ModelCanary spec.route: {case}",
                     lambda s: attempt(lambda: s.client.create(s.path(CANARY_GV, "modelcanaries"), canary(**target)),
                                       message=True, shape=lambda obj: pick(obj, "spec")), servers)
    assert (answer["error"]["code"] if "error" in answer else None) == code, answer
