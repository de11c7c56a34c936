"""The mnist HTTPRoute (Gateway API v1), shaped like the ones platform teams write for KServe models
behind a Gateway: two parentRefs (a Gateway's HTTPS listener in another namespace, and the mnist
Service for mesh traffic), a hostname, and rules with names, matches on path, headers and method,
filters (header modifiers, a request mirror, a redirect, a URL rewrite, a backendRef's own filter),
timeouts, a rule shared with an audit sink in another namespace, and an unnamed catch-all. Written
as the API server stores it (the CRD's defaults spelled out: weight 1, group "", kind Service).

The canary unit tests edit it (namespace `models`); the router behaviour tests, the canary
benchmark and the demo create it (`http_route`). The Gateway API counterpart of
devstack/mnist_virtualservice.py: the same rules, so both routers are held to the same outcomes.
"""

from __future__ import annotations

import copy
from typing import Any

NAMESPACE = "models"
STABLE_SERVICE = "torch-mnist-predictor"
CANDIDATE_SERVICE = "torch-mnist-v2-predictor"


def _service(name: str, port: int, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": port, "weight": weight, **extra}


def _path(kind: str, value: str) -> dict[str, Any]:
    return {"path": {"type": kind, "value": value}}


_MNIST: dict[str, Any] = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {
        "name": "mnist", "namespace": NAMESPACE, "resourceVersion": "815", "generation": 2,
        "uid": "5c1d2e3f-aaaa-4bbb-8ccc-ddddeeeeffff",
        "labels": {"app.kubernetes.io/name": "mnist", "team": "ml-platform"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    },
    "spec": {
        "parentRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateways",
             "sectionName": "https"},
            {"group": "", "kind": "Service", "name": "mnist", "port": 80},
        ],
        "hostnames": ["mnist.example.com"],
        "rules": [
            {
                "name": "explain",
                "matches": [_path("PathPrefix", "/v1/models/mnist:explain")],
                "backendRefs": [_service("torch-mnist-explainer", 80)],
                "timeouts": {"request": "60s"},
            },
            {
                "name": "predict",
                "matches": [
                    {**_path("PathPrefix", "/v1/models/mnist:predict"),
                     "headers": [{"type": "Exact", "name": "x-tenant", "value": "acme"}]},
                    {**_path("RegularExpression", "^/v2/models/mnist/(infer|ready)$"), "method": "POST"},
                ],
                "filters": [
                    {"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"set": [{"name": "x-model", "value": "mnist"}],
                                               "add": [{"name": "x-trace", "value": "on"}]}},
                    {"type": "ResponseHeaderModifier",
                     "responseHeaderModifier": {"remove": ["x-envoy-upstream-service-time"]}},
                    {"type": "RequestMirror",
                     "requestMirror": {"backendRef": {"group": "", "kind": "Service", "name": "mnist-shadow",
                                                      "port": 80}}},
                ],
                "backendRefs": [_service(STABLE_SERVICE, 80, filters=[
                    {"type": "ResponseHeaderModifier",
                     "responseHeaderModifier": {"set": [{"name": "x-served-by", "value": "stable"}]}}])],
                "timeouts": {"request": "10s", "backendRequest": "2s"},
            },
            {
                "name": "audited",
                "matches": [{**_path("PathPrefix", "/"),
                             "headers": [{"type": "Exact", "name": "x-audit", "value": "1"}]}],
                "backendRefs": [_service("audit-sink", 8080, 20, namespace="observability"),
                                _service(STABLE_SERVICE, 80, 80)],
            },
            {
                "name": "docs",
                "matches": [_path("Exact", "/")],
                "filters": [{"type": "RequestRedirect",
                             "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/docs"},
                                                 "statusCode": 301}}],
            },
            {
                "matches": [_path("PathPrefix", "/")],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "mnist.models.svc.cluster.local"}}],
                "backendRefs": [_service(STABLE_SERVICE, 80)],
                "timeouts": {"request": "30s"},
            },
        ],
    },
}


def mnist_route() -> dict[str, Any]:
    """A fresh copy as read back from the API in namespace `models` (resourceVersion and all)."""
    return copy.deepcopy(_MNIST)


def http_route(name: str = "mnist", namespace: str = "default") -> dict[str, Any]:
    """The mnist HTTPRoute to create in `namespace`, as `name`."""
    route = mnist_route()
    route["metadata"] = {"name": name, "namespace": namespace, "labels": dict(route["metadata"]["labels"]),
                         "annotations": dict(route["metadata"]["annotations"])}
    for rule in route["spec"]["rules"]:
        for item in rule.get("filters") or []:
            if item["type"] == "URLRewrite":
                item["urlRewrite"]["hostname"] = f"mnist.{namespace}.svc.cluster.local"
    return route
