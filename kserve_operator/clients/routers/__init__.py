"""Routing objects of the meshes a ModelCanary moves traffic in (Flagger's routers, I/O half):
`IstioRouteClient` (VirtualService) and `HTTPRouteClient` (Gateway API HTTPRoute), both a
`RouteClient`. They read and write; what to write comes from planning/routes/, and
controllers/canary_routing.py puts the two halves together as the canary's traffic router.
"""

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.routers.gateway_api import HTTPRouteClient
from kserve_operator.clients.routers.istio import IstioRouteClient
from kserve_operator.clients.routers.route_client import RouteClient, RouteTable


def route_clients(api: KubeApi) -> dict[str, RouteClient]:
    """One client per routing kind (resources.routes.KIND_*)."""
    clients: list[RouteClient] = [IstioRouteClient(api), HTTPRouteClient(api)]
    return {client.kind: client for client in clients}


__all__ = ["HTTPRouteClient", "IstioRouteClient", "RouteClient", "RouteTable", "route_clients"]
