"""Istio VirtualServices through the CustomObjects API: networking.istio.io v1, else v1beta1.

Istio serves one schema at several versions; v1 arrived in Istio 1.22, so older meshes serve
only v1beta1. A 404 at one version means "try the other" (a missing version and a missing
object both answer 404); the version that answered is remembered and tried first next time.
Writes are merge patches of `spec.http` that carry the resourceVersion read: a concurrent
edit answers 409, and the caller re-reads and plans again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from kserve_operator.clients.kube import KubeApi, PatchType
from kserve_operator.resources.kinds import VIRTUAL_SERVICE, VIRTUAL_SERVICE_V1BETA1, Kind


@dataclasses.dataclass(frozen=True)
class RouteTable:
    """A VirtualService as read, and the API version that served it."""

    obj: dict[str, Any]
    version: str


class TrafficRouter(Protocol):
    async def get_routes(self, namespace: str, name: str) -> RouteTable | None: ...

    async def set_routes(self, table: RouteTable, patch: dict[str, Any]) -> RouteTable: ...


class IstioRouter:
    """`TrafficRouter` for Istio; one per operator (the served version is a cluster fact)."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self._kinds: tuple[Kind, ...] = (VIRTUAL_SERVICE, VIRTUAL_SERVICE_V1BETA1)

    def _kind(self, version: str) -> Kind:
        return VIRTUAL_SERVICE.at_version(version)

    async def get_routes(self, namespace: str, name: str) -> RouteTable | None:
        """The VirtualService, or None when no served version has it."""
        for kind in self._kinds:
            obj = await self._api.get(kind, name, namespace)
            if obj is not None:
                if kind != self._kinds[0]:
                    self._kinds = (kind, *(k for k in self._kinds if k != kind))
                return RouteTable(obj, kind.version)
        return None

    async def set_routes(self, table: RouteTable, patch: dict[str, Any]) -> RouteTable:
        """Apply a merge patch (planning.virtualservice.weights_patch: conditional on the
        resourceVersion read, so ApiError 409 when the object changed since)."""
        meta = table.obj["metadata"]
        patched = await self._api.patch(
            self._kind(table.version), meta["name"], patch, namespace=meta["namespace"], patch_type=PatchType.MERGE,
        )
        return RouteTable(patched, table.version)
