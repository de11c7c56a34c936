"""VirtualServices shaped like real Istio ones, and ModelCanary specs, for the canary unit tests.

The mnist VirtualService (devstack/mnist_virtualservice.py, shared with the integration tests and
the demo) has what platform teams put in theirs: several HTTP routes with matches, retries,
timeouts, header rules, a mirror and a fault, a route shared with another destination, a
delegate, a redirect, an unnamed catch-all using a short host, a TCP and a TLS route. The mnist
HTTPRoute (devstack/mnist_httproute.py) is its Gateway API counterpart.
"""

from __future__ import annotations

from typing import Any

from devstack.mnist_virtualservice import CANDIDATE_HOST as CANDIDATE_HOST
from devstack.mnist_virtualservice import NAMESPACE as NAMESPACE
from devstack.mnist_virtualservice import STABLE_HOST as STABLE_HOST
from devstack.mnist_virtualservice import mnist_vs as mnist_vs
from kserve_operator.resources.canary import CanarySpec, parse_spec


def raw_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "virtualService": {"name": "mnist"},
        "stable": {"inferenceService": "torch-mnist"},
        "candidate": {"inferenceService": "torch-mnist-v2"},
        "percent": 20,
    }
    spec.update(changes)
    return spec


def canary_spec(**changes: Any) -> CanarySpec:
    return parse_spec(raw_spec(**changes), NAMESPACE)


def route_spec(rules: list[str] | None = None, **changes: Any) -> CanarySpec:
    """A canary on the mnist HTTPRoute (devstack/mnist_httproute.py) instead of the VirtualService."""
    route: dict[str, Any] = {"kind": "HTTPRoute", "name": "mnist"}
    if rules is not None:
        route["rules"] = rules
    return canary_spec(virtualService=None, route=route, **changes)
