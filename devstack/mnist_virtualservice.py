"""The mnist VirtualService, shaped like the ones platform teams write for KServe models: several
HTTP routes with matches, retries, timeouts, header rules, a mirror and a fault, a route shared
with another destination, a delegate, a redirect, an unnamed catch-all using a short host, a TCP
and a TLS route. The canary unit tests edit it (namespace `models`), the integration tests,
the canary benchmark and `make demo` create it on the emulated cluster (`virtual_service`).
"""

from __future__ import annotations

import copy
from typing import Any

NAMESPACE = "models"
STABLE_HOST = "torch-mnist-predictor.models.svc.cluster.local"
CANDIDATE_HOST = "torch-mnist-v2-predictor.models.svc.cluster.local"

_MNIST: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {
        "name": "mnist", "namespace": NAMESPACE, "resourceVersion": "4711", "generation": 3,
        "uid": "0b8f7c9e-1111-4222-8333-444455556666",
        "labels": {"app.kubernetes.io/name": "mnist", "team": "ml-platform"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    },
    "spec": {
        "hosts": ["mnist.example.com", "mnist.models.svc.cluster.local"],
        "gateways": ["istio-system/public-gateway", "mesh"],
        "exportTo": ["."],
        "http": [
            {
                "name": "explain",
                "match": [{"uri": {"prefix": "/v1/models/mnist:explain"}}],
                "route": [{"destination": {"host": "torch-mnist-explainer.models.svc.cluster.local",
                                           "port": {"number": 80}}}],
                "timeout": "60s",
            },
            {
                "name": "predict",
                "match": [
                    {"name": "v1", "uri": {"prefix": "/v1/models/mnist:predict"},
                     "headers": {"x-tenant": {"exact": "acme"}}, "ignoreUriCase": True},
                    {"name": "v2", "uri": {"regex": "^/v2/models/mnist/(infer|ready)$"}, "method": {"exact": "POST"}},
                ],
                "route": [{
                    "destination": {"host": STABLE_HOST, "port": {"number": 80}},
                    "weight": 100,
                    "headers": {"response": {"set": {"x-served-by": "stable"}}},
                }],
                "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset,connect-failure"},
                "timeout": "10s",
                "headers": {"request": {"set": {"x-model": "mnist"}, "add": {"x-trace": "on"}},
                            "response": {"remove": ["x-envoy-upstream-service-time"]}},
                "mirror": {"host": "mnist-shadow.models.svc.cluster.local", "port": {"number": 80}},
                "mirrorPercentage": {"value": 5.0},
                "fault": {"delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"}},
                "corsPolicy": {"allowOrigins": [{"exact": "https://mnist.example.com"}], "allowMethods": ["POST"]},
            },
            {
                "name": "audited",
                "match": [{"headers": {"x-audit": {"exact": "1"}}}],
                "route": [
                    {"destination": {"host": "audit-sink.observability.svc.cluster.local", "port": {"number": 8080}},
                     "weight": 20},
                    {"destination": {"host": STABLE_HOST, "port": {"number": 80}}, "weight": 80},
                ],
            },
            {"name": "legacy", "match": [{"uri": {"prefix": "/legacy"}}],
             "delegate": {"name": "legacy-routes", "namespace": "legacy"}},
            {"name": "docs", "match": [{"uri": {"exact": "/"}}], "redirect": {"uri": "/docs", "redirectCode": 301}},
            {"route": [{"destination": {"host": "torch-mnist-predictor", "port": {"number": 80}}}],
             "timeout": "30s"},
        ],
        "tcp": [{"match": [{"port": 9000}],
                 "route": [{"destination": {"host": STABLE_HOST, "port": {"number": 9000}}}]}],
        "tls": [{"match": [{"port": 443, "sniHosts": ["mnist.example.com"]}],
                 "route": [{"destination": {"host": STABLE_HOST, "port": {"number": 8443}}}]}],
    },
}


def mnist_vs() -> dict[str, Any]:
    """A fresh copy as read back from the API in namespace `models` (resourceVersion and all)."""
    return copy.deepcopy(_MNIST)


def virtual_service(name: str = "mnist", version: str = "v1", namespace: str = "default") -> dict[str, Any]:
    """The mnist VirtualService to create in `namespace` (its hosts moved there), as `name`."""
    vs = mnist_vs()
    vs["apiVersion"] = f"networking.istio.io/{version}"
    vs["metadata"] = {"name": name, "namespace": namespace, "labels": dict(vs["metadata"]["labels"]),
                      "annotations": dict(vs["metadata"]["annotations"])}
    for section in ("http", "tcp", "tls"):
        for route in vs["spec"].get(section) or []:
            for destination in route.get("route") or []:
                host = destination["destination"]["host"]
                destination["destination"]["host"] = host.replace(f".{NAMESPACE}.", f".{namespace}.")
            if "mirror" in route:
                route["mirror"]["host"] = route["mirror"]["host"].replace(f".{NAMESPACE}.", f".{namespace}.")
    vs["spec"]["hosts"] = ["mnist.example.com", f"mnist.{namespace}.svc.cluster.local"]
    return vs
