"""Gateway API HTTPRoutes (gateway.networking.k8s.io/v1, Gateway API v1.0 and later) through the
CustomObjects API. Writes are JSON patches replacing the backendRefs of the changed rules, the
resourceVersion read replaced first (planning/routes/httproute.py builds them).
"""

from __future__ import annotations

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.routers.route_client import VersionedRouteClient
from kserve_operator.resources.kinds import HTTP_ROUTE
from kserve_operator.resources.routes import KIND_HTTP_ROUTE


class HTTPRouteClient(VersionedRouteClient):
    def __init__(self, api: KubeApi) -> None:
        super().__init__(api, KIND_HTTP_ROUTE, (HTTP_ROUTE,))
