"""Reading and writing one kind of routing object through `KubeApi`, at whichever of its versions
the cluster serves: the I/O half of a router (the decisions are planning/routes/, the two are put
together in controllers/canary_routing.py; clients never import planning).

A 404 at one version means "try the next" (a missing version and a missing object both answer
404); the version that answered is remembered and tried first next time. Writes are the patch
planning built, conditional on the resourceVersion read: a concurrent edit answers 409, and the
caller re-reads and plans again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from kserve_operator.clients.kube import KubeApi, PatchType
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import Kind
from kserve_operator.resources.routes import PATCH_JSON, PATCH_MERGE, RoutePatch

_PATCH_TYPES = {PATCH_MERGE: PatchType.MERGE, PATCH_JSON: PatchType.JSON}


@dataclasses.dataclass(frozen=True)
class RouteTable:
    """A routing object as read, and the API version that served it."""

    obj: dict[str, Any]
    version: str


class RouteClient(Protocol):
    kind: str  # resources.routes.KIND_*

    async def read(self, namespace: str, name: str) -> RouteTable | None: ...

    async def write(self, table: RouteTable, patch: RoutePatch) -> RouteTable: ...

    async def served(self, namespace: str) -> bool: ...


class VersionedRouteClient:
    """`RouteClient` for a kind served at one or more versions (first preferred); one per operator
    and kind, since the served version is a cluster fact."""

    def __init__(self, api: KubeApi, kind: str, versions: tuple[Kind, ...]) -> None:
        self._api = api
        self.kind = kind
        self._kinds = versions

    async def read(self, namespace: str, name: str) -> RouteTable | None:
        """The object, or None when no served version has it."""
        for kind in self._kinds:
            obj = await self._api.get(kind, name, namespace)
            if obj is not None:
                if kind != self._kinds[0]:
                    self._kinds = (kind, *(k for k in self._kinds if k != kind))
                return RouteTable(obj, kind.version)
        return None

    async def write(self, table: RouteTable, patch: RoutePatch) -> RouteTable:
        """Apply the patch planning built (ApiError 409 when the object changed since the read)."""
        meta = table.obj["metadata"]
        patched = await self._api.patch(self._kinds[0].at_version(table.version), meta["name"], patch.body,
                                        namespace=meta["namespace"], patch_type=_PATCH_TYPES[patch.type])
        return RouteTable(patched, table.version)

    async def served(self, namespace: str) -> bool:
        """Whether the cluster serves the kind at any version (its CRD is installed): a listing of the
        namespace (from an informer's store once it has listed) answers, a 404 at every version does not."""
        for kind in self._kinds:
            try:
                await self._api.list(kind, namespace)
            except ApiError as exc:
                if exc.not_found:
                    continue
                raise
            return True
        return False
