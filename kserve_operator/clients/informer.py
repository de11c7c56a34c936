"""Informers: one kind, one scope (a namespace or all, a server-side label selector), kept in memory.

An informer LISTs (keeping the list's resourceVersion), then WATCHes from it with bookmarks,
resuming from the last resourceVersion seen whenever the server ends the stream or the
connection breaks (backoff with jitter on failures: `planning.backoff`, handed in by the caller,
as clients never import planning). A 410 Gone (the
version was compacted away) costs ONE relist, and subscribers get synthetic ADDED / MODIFIED /
DELETED events for what changed in the gap, nothing for what did not. The store is keyed by
(namespace, name), with optional index functions (by a label value, by node...). Every object
passes the informer's transform before it is stored or reported (clients/stored_objects.py: the
API server's managedFields and kubectl's last-applied copy never stay in memory). What is kept is
the object's compact JSON text beside its resourceVersion, not the parsed dict: a parsed object
takes five to six times the memory of its text (a Deployment: about 14 KiB against 2.4 KiB), and
decoding on read (`json.loads`, about 60 us for a Deployment) is no dearer than the deep copy a
read handed out before; every read returns a fresh object the caller may change. Indexes keep
the values each key was filed under, so nothing is decoded to re-index or to count.

Subscribers are async callbacks; the initial listing reaches them with `type=None` (as kopf
reports a listing), so a handler can set its baseline. Writes of our own are `offer`ed by
the cached client (clients/cached_kube.py): a newer resourceVersion replaces the stored copy
at once, and the watch event of that very version is then not reported again.

Requests go through `KubernetesApi` (same connection, same re-login, same metrics:
`kserve_operator_api_requests_total{method="LIST"|"WATCH"}`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import Kind
from kserve_operator.resources.label_selectors import LabelSelector

log = logging.getLogger(__name__)
Object = dict[str, Any]
ObjectKey = tuple[str, str]
IndexFunction = Callable[[Mapping[str, Any]], Iterable[str]]
Transform = Callable[[Mapping[str, Any]], Object]  # what of an object is kept: clients/stored_objects.py
Backoff = Callable[[int], float]  # the delay before the n-th retry (0-based): planning.backoff.backoff_delay
TOMBSTONES = 10_000  # deleted keys remembered, oldest forgotten first
WATCH_TIMEOUT_SECONDS = 290  # the server ends each stream about this often; the informer resumes
NOT_SERVED_RETRY_SECONDS = 300.0  # a kind not served yet (Istio installed later): looked for again this often
# No answer at all (the API server restarting, the connection cut): look again at least this often,
# so the caches are current within seconds of its return, not after a backoff grown during the outage.
UNREACHABLE_RETRY_SECONDS = 4.0


class WatchSource(Protocol):
    """What an informer needs of the client (KubernetesApi has it; tests use the emulated server)."""

    async def list_with_version(
        self, kind: Kind, namespace: str | None = None, *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> tuple[list[Object], str]: ...

    def watch(
        self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
        resource_version: str, timeout_seconds: int,
    ) -> AsyncIterator[Object]: ...


@dataclasses.dataclass(frozen=True)
class InformerEvent:
    """`type` is ADDED, MODIFIED or DELETED, or None for an object of the initial listing. `old` is the
    stored copy it replaces (decoded only when read)."""

    type: str | None
    obj: Mapping[str, Any]
    stored: StoredObject | None = None

    @property
    def old(self) -> Object | None:
        return None if self.stored is None else self.stored.decode()


@dataclasses.dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as an informer keeps it: its resourceVersion and its compact JSON text."""

    version: str
    text: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> StoredObject:
        return cls(_version(obj), json.dumps(obj, separators=(",", ":")))

    def decode(self) -> Object:
        decoded: Object = json.loads(self.text)
        return decoded


Subscriber = Callable[[InformerEvent], Awaitable[None]]


def label_index(key: str) -> IndexFunction:
    """An index by the value of one label (objects without it are not indexed)."""

    def values(obj: Mapping[str, Any]) -> Iterable[str]:
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(key)
        return (str(value),) if value is not None else ()

    return values


def label_index_name(key: str) -> str:
    return f"label:{key}"


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _version(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def newer(candidate: str, stored: str) -> bool:
    """resourceVersions are opaque, but both servers count up with integers: compare them so when
    both are integers (an older watch event never overwrites a newer write response)."""
    if candidate.isdigit() and stored.isdigit():
        return int(candidate) > int(stored)
    return candidate != stored


class GoneError(Exception):
    """The watch's resourceVersion was compacted away (410): relist."""


class Informer:
    """The objects of one kind in one scope, kept current by a watch."""

    def __init__(
        self, source: WatchSource, kinds: Sequence[Kind], *, backoff: Backoff, namespace: str | None = None,
        label_selector: str | None = None, indexes: Mapping[str, IndexFunction] | None = None,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS, transform: Transform = dict,
    ) -> None:
        """`kinds`: the kind, then versions to fall back to where the first is not served (Istio's
        VirtualService: v1, else v1beta1); the one that lists is `kind`. `transform`: what of each
        object is kept (a new dict; the object handed in is never changed)."""
        if not kinds:
            raise ValueError("an informer needs a kind")
        self._source = source
        self._backoff = backoff
        self.candidates = tuple(kinds)
        self.kind = self.candidates[0]
        self.namespace = namespace if self.kind.namespaced else None
        self.label_selector = label_selector or None
        self.selector = LabelSelector.parse(label_selector)
        self.transform = transform
        self._index_functions = dict(indexes or {})
        self._indexes: dict[str, dict[str, set[ObjectKey]]] = {name: {} for name in self._index_functions}
        self._filed: dict[ObjectKey, tuple[tuple[str, str], ...]] = {}  # (index, value) each key is filed under
        self._store: dict[ObjectKey, StoredObject] = {}
        # The resourceVersion each recently deleted object was deleted at: an older copy offered late
        # (kopf's body of a MODIFIED event behind the DELETED one) must not bring it back.
        self._tombstones: collections.OrderedDict[ObjectKey, str] = collections.OrderedDict()
        self._subscribers: list[Subscriber] = []
        self._watch_timeout = watch_timeout
        self._version = ""
        self.synced = asyncio.Event()  # the store holds a complete listing (kept while a relist runs)
        self._stale = False  # a 410 Gone: relist at the next turn, serving the old listing meanwhile
        self.tried = asyncio.Event()  # the first listing was attempted (start-up need not wait longer)
        self.relists = 0  # listings after the first one (410 Gone, or a failed first listing)
        self._task: asyncio.Task[None] | None = None
        self._listed_once = False

    def __repr__(self) -> str:
        scope = self.namespace or "all namespaces"
        return f"Informer({self.kind.plural}.{self.kind.group or 'core'}, {scope}, {self.label_selector or '-'})"

    # --- reading --------------------------------------------------------------------------------

    def get(self, namespace: str | None, name: str) -> Object | None:
        """A fresh copy of the stored object (None when not stored)."""
        stored = self._store.get((namespace or "", name))
        return None if stored is None else stored.decode()

    def items(self) -> list[Object]:
        """Fresh copies of every stored object (decodes them all: prefer an index)."""
        return [stored.decode() for stored in self._store.values()]

    def __len__(self) -> int:
        return len(self._store)

    def object_keys(self) -> list[ObjectKey]:
        """(namespace, name) of every stored object, without copying any."""
        return list(self._store)

    def by_index(self, index: str, value: str) -> list[Object]:
        """Fresh copies of the objects filed under `value`, by key."""
        return [self._store[key].decode() for key in self.keys_by_index(index, value)]

    def keys_by_index(self, index: str, value: str) -> list[ObjectKey]:
        """The keys filed under `value` (nothing decoded)."""
        return sorted(key for key in self._indexes[index].get(value, ()) if key in self._store)

    def count_by_index(self, index: str, value: str) -> int:
        return len(self._indexes[index].get(value, ()))

    def has_index(self, index: str) -> bool:
        return index in self._index_functions

    def add_indexes(self, indexes: Mapping[str, IndexFunction]) -> None:
        """More indexes, before the first listing (two controllers asking for one informer, in any order)."""
        if self._store or self._task is not None:
            raise ValueError(f"{self} has started: indexes are added before it lists")
        for name, function in indexes.items():
            if self._index_functions.get(name, function) is not function:
                raise ValueError(f"{self} has another index named {name}")
            self._index_functions[name] = function
            self._indexes.setdefault(name, {})

    def covers(self, kind: Kind, namespace: str | None, selector: LabelSelector | None = None) -> bool:
        """Whether every object a request for (kind, namespace, selector) can see is in this store."""
        if kind != self.kind or not self.synced.is_set():
            return False
        if self.namespace is not None and (not kind.namespaced or namespace != self.namespace):
            return False
        return (selector is None and not self.selector.requirements) or \
            (selector or LabelSelector()).implies(self.selector)

    def admits(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` belongs in this store (its namespace and labels are in scope)."""
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.selector.matches(meta.get("labels"))

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    # --- writes of our own --------------------------------------------------------------------------

    def offer(self, obj: Mapping[str, Any]) -> None:
        """A write's response (or an object the caller holds): kept when newer than the stored copy.
        An object that left the scope (a label removed) leaves the store."""
        key = key_of(obj)
        stored = self._store.get(key)
        if stored is not None and not newer(_version(obj), stored.version):
            return
        if stored is None and key in self._tombstones and not newer(_version(obj), self._tombstones[key]):
            return
        if self.admits(obj):
            self._put(key, self.transform(obj))
        elif stored is not None:
            self._remove(key)

    def discard(self, namespace: str | None, name: str) -> None:
        """Deleted by us: gone from reads at once (the watch's DELETED event then changes nothing)."""
        self._remove((namespace or "", name))

    # --- the loop ---------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=repr(self))
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        """List, then watch for ever; relist only after a 410 (or when no listing succeeded yet)."""
        failures = 0
        while True:
            try:
                if not self.synced.is_set() or self._stale:
                    await self._list()
                    self._stale = False
                started = asyncio.get_running_loop().time()
                await self._watch()
                if asyncio.get_running_loop().time() - started < 1.0:  # ended at once: do not spin
                    failures += 1
                    await asyncio.sleep(self._backoff(failures - 1))
                else:
                    failures = 0
            except GoneError:
                log.info("%s: resourceVersion %s expired (410 Gone); relisting once", self, self._version)
                self._stale = True
                failures = 0
            except ApiError as exc:
                self.tried.set()
                failures += 1
                delay = self._backoff(failures - 1)
                if exc.status == 0:  # unreachable: cheap to try, and every second counts once it is back
                    delay = min(delay, UNREACHABLE_RETRY_SECONDS * random.uniform(0.5, 1.0))
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if exc.not_found and not self._listed_once:  # the kind is not served (its CRD not installed)
                    delay = max(delay, NOT_SERVED_RETRY_SECONDS)
                log.warning("%s: %s; again in %.1fs", self, exc, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        listed: list[Object] | None = None
        last: ApiError | None = None
        for kind in self.candidates:
            try:
                listed, version = await self._source.list_with_version(
                    kind, self.namespace, label_selector=self.label_selector)
            except ApiError as exc:
                if exc.not_found and kind != self.candidates[-1]:  # this version is not served: the next
                    last = exc
                    continue
                raise
            self.kind = kind
            break
        if listed is None:
            raise last or ApiError(404, "NotFound", "no served version", method="LIST", path=self.kind.plural)
        initial = not self._listed_once
        if not initial:
            self.relists += 1
        self._listed_once = True
        self._version = version
        events = self._replace([self.transform(obj) for obj in listed], initial=initial, version=version)
        self.synced.set()
        self.tried.set()
        for event in events:
            await self._notify(event)

    def _replace(self, listed: list[Object], *, initial: bool, version: str = "") -> list[InformerEvent]:
        """The new listing becomes the store; the events that tell subscribers what changed."""
        fresh = {key_of(obj): obj for obj in listed}
        events: list[InformerEvent] = []
        for key, obj in fresh.items():
            old = self._store.get(key)
            if initial:
                events.append(InformerEvent(None, obj))
            elif old is None:
                events.append(InformerEvent("ADDED", obj))
            elif old.version != _version(obj):
                events.append(InformerEvent("MODIFIED", obj, old))
        for key in [key for key in self._store if key not in fresh]:
            events.append(InformerEvent("DELETED", self._store[key].decode()))
            self._remove(key)
            self._bury(key, version)
        for key, obj in fresh.items():
            self._put(key, obj)
        return events

    async def _watch(self) -> None:
        stream = self._source.watch(self.kind, self.namespace, label_selector=self.label_selector,
                                    resource_version=self._version, timeout_seconds=self._watch_timeout)
        try:
            async for event in stream:
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise GoneError(obj.get("message"))
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("reason") or ""),
                                   str(obj.get("message") or ""), method="WATCH", path=self.kind.plural)
                version = _version(obj)
                if version:
                    self._version = version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    await self._apply(str(kind), self.transform(obj))
        except ApiError as exc:
            if exc.status == 410:
                raise GoneError(exc.message) from exc
            raise

    async def _apply(self, kind: str, obj: Object) -> None:
        key = key_of(obj)
        stored = self._store.get(key)
        if kind == "DELETED":
            self._remove(key)
            self._bury(key, _version(obj))
            await self._notify(InformerEvent("DELETED", obj, stored))
            return
        if stored is not None and not newer(_version(obj), stored.version):
            if _version(obj) == stored.version:
                # Stored already (a write's answer, or kopf's copy from its own watch, offered first),
                # but the subscribers have not heard of this version: tell them, once, as the watch does.
                await self._notify(InformerEvent("MODIFIED", obj, stored))
            return  # an older event behind a newer copy
        self._put(key, obj)
        await self._notify(InformerEvent("ADDED" if stored is None else "MODIFIED", obj, stored))

    async def _notify(self, event: InformerEvent) -> None:
        for subscriber in self._subscribers:
            try:
                await subscriber(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # one failing subscriber must not stop the watch or the others
                log.exception("%s: a subscriber failed on %s %s", self, event.type, key_of(event.obj))

    def _bury(self, key: ObjectKey, version: str) -> None:
        self._tombstones[key] = version
        self._tombstones.move_to_end(key)
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _put(self, key: ObjectKey, obj: Object) -> None:
        self._unindex(key)
        self._store[key] = StoredObject.of(obj)
        filed = tuple((name, value) for name, function in self._index_functions.items() for value in function(obj))
        for name, value in filed:
            self._indexes[name].setdefault(value, set()).add(key)
        if filed:
            self._filed[key] = filed

    def _remove(self, key: ObjectKey) -> None:
        self._unindex(key)
        self._store.pop(key, None)

    def _unindex(self, key: ObjectKey) -> None:
        for name, value in self._filed.pop(key, ()):
            keys = self._indexes[name].get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._indexes[name][value]
