"""Istio VirtualServices through the CustomObjects API: networking.istio.io v1, else v1beta1.

Istio serves one schema at several versions; v1 arrived in Istio 1.22, so older meshes serve
only v1beta1. Writes are merge patches of `spec.http` carrying the resourceVersion read
(planning/routes/istio.py builds them).
"""

from __future__ import annotations

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.routers.route_client import VersionedRouteClient
from kserve_operator.resources.kinds import VIRTUAL_SERVICE, VIRTUAL_SERVICE_V1BETA1
from kserve_operator.resources.routes import KIND_VIRTUAL_SERVICE


class IstioRouteClient(VersionedRouteClient):
    def __init__(self, api: KubeApi) -> None:
        super().__init__(api, KIND_VIRTUAL_SERVICE, (VIRTUAL_SERVICE, VIRTUAL_SERVICE_V1BETA1))
