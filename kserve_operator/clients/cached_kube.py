"""`KubeApi` served from informers: reads from memory, writes to the API server and into the cache.

Controllers keep calling `KubeApi`; this class answers

- a GET of an informed kind whose informer's scope covers the namespace from the store (a miss
  goes to the API server: the object may exist outside the informer's label selector, or be
  newer than the watch, e.g. just created, and what comes back is offered to the store), except
  for an informer registered as `authoritative` (no label selector; a newer object's event wakes
  its reader): there a miss is the answer, and the operator needs no `get` on that kind; nor
  for a version of a kind that an informer found not served (its fallback version answers);
- `get_labelled`: a GET of an object of ours, which carries a label selector's labels, from an
  informer of exactly that selector: there a miss is the answer too (no object of ours has the
  name) and costs no request; someone else's object of that name shows itself as a create's 409
  AlreadyExists (controllers.core.apply_child);
- a LIST whose namespace and label selector are within an informer's scope from the store, the
  selector evaluated in memory (`resources.label_selectors`), through a label index when the
  request names one label value; a field selector always goes to the server;
- everything else from the API server, as before.

Each informer keeps objects through its kind's transform (clients/stored_objects.py: no
managedFields, no kubectl last-applied copy; Nodes without their image list, Pods with only
`spec.nodeName` of their spec), so reads answered from memory carry what the reconciles read and a
conditional write needs (resourceVersion, uid), not the rest.

Writes go to the server; the object they return is offered to the matching informers (a newer
resourceVersion wins), so a reconcile sees its own writes at once; a successful delete leaves
the store at once. Objects handed out are copies: a caller may change them freely.

Until an informer has listed (start-up, or relisting after a 410 Gone) its requests go to the
server, so reads are never answered from a partial store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kserve_operator.clients.informer import Backoff, IndexFunction, Informer, label_index_name
from kserve_operator.clients.kube import KubernetesApi, Object, PatchType
from kserve_operator.clients.stored_objects import transform_for
from kserve_operator.resources.kinds import Kind
from kserve_operator.resources.label_selectors import LabelSelector

log = logging.getLogger(__name__)
FIRST_LISTING_WAIT_SECONDS = 10.0


class CachedKubeApi:
    """`KubeApi` over `KubernetesApi` and the informers registered with `inform`."""

    def __init__(self, api: KubernetesApi, *, backoff: Backoff) -> None:
        self.api = api
        self._backoff = backoff
        self.informers: list[Informer] = []
        self._authoritative: set[int] = set()  # id() of the informers whose misses are answers

    def inform(
        self, kinds: Kind | Sequence[Kind], *, namespace: str | None = None, label_selector: str | None = None,
        indexes: Mapping[str, IndexFunction] | None = None, authoritative: bool = False,
    ) -> Informer:
        """Register (not start) an informer; the same scope asked for twice is one informer."""
        candidates = (kinds,) if isinstance(kinds, Kind) else tuple(kinds)
        if authoritative and label_selector:
            raise ValueError("only an informer of every object in its namespace can answer a miss")
        for informer in self.informers:
            if informer.kind == candidates[0] and informer.namespace == namespace \
                    and informer.label_selector == (label_selector or None):
                informer.add_indexes({name: f for name, f in (indexes or {}).items() if not informer.has_index(name)})
                if authoritative:
                    self._authoritative.add(id(informer))
                return informer
        informer = Informer(self.api, candidates, backoff=self._backoff, namespace=namespace,
                            label_selector=label_selector, indexes=indexes, transform=transform_for(candidates[0]))
        self.informers.append(informer)
        if authoritative:
            self._authoritative.add(id(informer))
        return informer

    def inform_namespaces(
        self, kinds: Kind | Sequence[Kind], namespaces: Iterable[str], *, label_selector: str | None = None,
        indexes: Mapping[str, IndexFunction] | None = None, authoritative: bool = False,
    ) -> list[Informer]:
        """One informer per namespace, or one for all when `namespaces` is empty (the operator's scope)."""
        scopes: list[str | None] = list(namespaces) or [None]
        return [self.inform(kinds, namespace=scope, label_selector=label_selector, indexes=indexes,
                            authoritative=authoritative) for scope in scopes]

    async def start(self, *, wait: float = 30.0) -> None:
        """Start every informer; wait (bounded) until each has tried its first listing."""
        for informer in self.informers:
            informer.start()
        pending = [asyncio.ensure_future(informer.tried.wait()) for informer in self.informers]
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=wait)
            for future in not_done:
                future.cancel()
        unsynced = [repr(i) for i in self.informers if not i.synced.is_set()]
        if unsynced:
            log.warning("not yet listed (reads go to the API server meanwhile): %s", ", ".join(unsynced))

    async def stop(self) -> None:
        await asyncio.gather(*(informer.stop() for informer in self.informers))

    async def close(self) -> None:
        await self.stop()
        await self.api.close()

    # --- reads --------------------------------------------------------------------------------------

    def _scoped(self, kind: Kind, namespace: str | None) -> list[Informer]:
        """Listed informers of `kind` whose namespace includes `namespace` (whatever their selector)."""
        return [i for i in self.informers
                if i.kind == kind and i.synced.is_set() and (i.namespace is None or i.namespace == namespace)]

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> Object | None:
        answering = [i for i in self.informers if id(i) in self._authoritative and i.kind == kind
                     and (i.namespace is None or i.namespace == namespace)]
        for informer in answering:  # start-up: wait (bounded) for its first listing rather than ask
            if not informer.synced.is_set() and not informer.tried.is_set():  # not once a listing failed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(informer.tried.wait(), FIRST_LISTING_WAIT_SECONDS)
        for informer in self._scoped(kind, namespace):
            found = informer.get(namespace if kind.namespaced else None, name)  # a fresh copy
            if found is not None:
                return found
            if id(informer) in self._authoritative:
                return None
        for other in self.informers:  # an informer of another version of the same kind
            if kind not in other.candidates or other.kind == kind or not other.synced.is_set() or \
                    (other.namespace is not None and other.namespace != namespace):
                continue
            if other.candidates.index(kind) < other.candidates.index(other.kind):
                return None  # this version is not served: the informer fell back to another
            if id(other) in self._authoritative and other.get(namespace if kind.namespaced else None, name) is None:
                return None  # not there at any version
        fetched = await self.api.get(kind, name, namespace)
        if fetched is not None:
            self._offer(kind, fetched)
        return fetched

    async def get_labelled(self, kind: Kind, name: str, namespace: str | None, selector: str) -> Object | None:
        """`get` of an object of ours, which carries `selector`'s labels: answered by a listed informer
        of exactly that selector over the namespace, a miss included (no request); elsewhere `get`."""
        for informer in self._scoped(kind, namespace):
            if informer.label_selector == selector:
                return informer.get(namespace if kind.namespaced else None, name)  # a fresh copy
        return await self.get(kind, name, namespace)

    async def list(
        self, kind: Kind, namespace: str | None = None, *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> list[Object]:
        if not field_selector:
            selector = LabelSelector.parse(label_selector)
            for informer in self.informers:
                if informer.covers(kind, namespace, selector):
                    return [obj for obj in _candidates(informer, selector)  # fresh copies
                            if _in_namespace(obj, kind, namespace) and
                            selector.matches((obj.get("metadata") or {}).get("labels"))]
        return await self.api.list(kind, namespace, label_selector=label_selector, field_selector=field_selector)

    # --- writes ---------------------------------------------------------------------------------------

    def _offer(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        for informer in self.informers:
            if informer.kind == kind:
                informer.offer(obj)

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> Object:
        created = await self.api.create(kind, body)
        self._offer(kind, created)
        return created

    async def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
        namespace: str | None = None, patch_type: PatchType = PatchType.MERGE, status: bool = False,
    ) -> Object:
        patched = await self.api.patch(kind, name, patch, namespace=namespace, patch_type=patch_type, status=status)
        self._offer(kind, patched)
        return patched

    async def delete(
        self, kind: Kind, name: str, *, namespace: str | None = None,
        propagation: str = "Background", uid: str | None = None,
    ) -> bool:
        deleted = await self.api.delete(kind, name, namespace=namespace, propagation=propagation, uid=uid)
        if deleted:
            for informer in self.informers:
                if informer.kind == kind:
                    informer.discard(namespace if kind.namespaced else None, name)
        return deleted

    def remember(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        """An object the caller got elsewhere (kopf's watch): kept where newer than the cache's copy."""
        self._offer(kind, dict(obj))  # stored as text (clients/informer.py): never shared with the caller


def _candidates(informer: Informer, selector: LabelSelector) -> list[Object]:
    """The store's objects, narrowed through a label index when the selector names values of one."""
    for requirement in selector.requirements:
        index = label_index_name(requirement.key)
        values = selector.equal_values(requirement.key)
        if values is not None and informer.has_index(index):
            return [obj for value in sorted(values) for obj in informer.by_index(index, value)]
    return informer.items()


def _in_namespace(obj: Mapping[str, Any], kind: Kind, namespace: str | None) -> bool:
    return not kind.namespaced or namespace is None or (obj.get("metadata") or {}).get("namespace") == namespace
