"""The HTTP face of the emulated API server: kmock's ``KubernetesEmulator``, extended.

kmock 0.8 keeps serving what it does well (the discovery endpoints ``/``, ``/version``,
``/api``, ``/api/v1``, ``/apis/<group>/<version>``, fed from ``self.resources``, and the
rendering of Kubernetes errors). Every request for a Kubernetes resource (``/api/v1/...`` and
``/apis/<group>/<version>/...`` with a plural) is served here instead, from ``ObjectStore``,
because kmock's own object handling lacks resourceVersion, conflicts, selectors, ``/status``
isolation, garbage collection, PUT and validation, and its path parser fails on
``/api/v1/namespaces``. ``/apis`` and ``/apis/<group>`` are re-implemented to report the
correct preferred version (kmock picks an arbitrary one).

Every request is recorded in ``request_log``. ``faults`` (faults.py) fails chosen requests on
demand (a 429 with Retry-After, a 409, a 5xx) before they reach the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
from kmock import KubernetesEmulator, KubernetesError, Payload, Request, ResourceInfo, resource

from devcluster import errors, validation
from devcluster.faults import FaultInjector
from devcluster.label_selectors import FieldRequirement, Selector
from devcluster.requestlog import RequestLog, RequestRecord, now
from devcluster.resources import ALL_VERBS, ResourceDef, version_priority
from devcluster.store import ObjectStore, WatchEvent

logger = logging.getLogger("devcluster.server")


@dataclass(frozen=True)
class Route:
    """A Kubernetes resource URL, split into its parts."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    """Split a resource URL; ``None`` for discovery and non-Kubernetes paths."""
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = "/".join(rest[2:]) or None
    return Route(group, version, namespace, plural, name, subresource)


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _created_name(text: str) -> str | None:
    """The name a create asks for (``generateName`` + "*"), for the request log; None when unreadable."""
    try:
        meta = json.loads(text).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    if meta.get("name"):
        return str(meta["name"])
    return f"{meta['generateName']}*" if meta.get("generateName") else None


@attrs.define(kw_only=True)
class ApiServerEmulator(KubernetesEmulator):
    """kmock's emulator with the Kubernetes semantics of ``ObjectStore`` behind resource URLs."""

    store: ObjectStore = attrs.field(factory=ObjectStore)
    request_log: RequestLog = attrs.field(factory=RequestLog)
    faults: FaultInjector = attrs.field(factory=FaultInjector)
    bookmark_interval: float = 5.0
    #: Where ``GET .../pods/NAME/log`` reads a pod's log: (namespace, name) -> text, None if none ran.
    pod_logs: Callable[[str, str], str | None] | None = None
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store.on_resources_changed.append(self.sync_discovery)
        self.sync_discovery()

    def sync_discovery(self) -> None:
        """Mirror the store's resources into kmock's discovery registry."""
        self.resources.clear()
        for definition in self.store.resources.values():
            for version in definition.versions:
                self.resources[resource(definition.group, version, definition.plural)] = ResourceInfo(
                    kind=definition.kind,
                    singular=definition.singular,
                    shortnames=definition.shortnames,
                    categories=definition.categories,
                    verbs=ALL_VERBS,
                    namespaced=definition.namespaced,
                    subresources={"status"} if definition.status_subresource else set(),
                )

    def close(self) -> None:
        """End all watch streams (on server shutdown)."""
        self._closing = True
        self.store.close_watchers()

    # ---- discovery: groups with a correct preferred version --------------------------------------

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = {}
        for definition in self.store.resources.values():
            if definition.group:
                groups.setdefault(definition.group, set()).update(definition.versions)
        return {group: sorted(versions, key=version_priority) for group, versions in sorted(groups.items())}

    @staticmethod
    def _group_body(group: str, versions: list[str]) -> dict[str, Any]:
        return {
            "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
        }

    async def _serve_apis(self, request: Request) -> Payload:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_body(g, v) for g, v in self._group_versions().items()]}

    async def _serve_group(self, request: Request) -> Payload:
        group = request.resource.group if request.resource is not None else None
        versions = self._group_versions().get(group or "")
        if not versions or not group:
            raise errors.resource_not_found()
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_body(group, versions)}

    # ---- the entry point ----------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        route = parse_route(raw_request.path)
        record = self.request_log.add(RequestRecord(
            timestamp=now(),
            method=raw_request.method,
            path=raw_request.path,
            query=raw_request.query_string,
            content_type=raw_request.headers.get("Content-Type", ""),
            user_agent=raw_request.headers.get("User-Agent", ""),
            resource=route.plural if route else None,
            subresource=route.subresource if route else None,
            name=route.name if route else None,
            watch=_is_true(raw_request.query.get("watch")),
        ))
        if route is not None and route.name is None and raw_request.method.upper() == "POST":
            record.name = _created_name(await raw_request.text())  # read once: aiohttp keeps the body
        fault = self.faults.match(raw_request.method, raw_request.path, record.user_agent)
        response: aiohttp.web.StreamResponse
        try:
            if fault is not None:
                response = self._error_response(fault.error())
            elif route is None:
                response = await super().__call__(raw_request)
            else:
                response = await self._serve(raw_request, route, record)
        except KubernetesError as exc:
            response = self._error_response(exc)
        except Exception as exc:
            logger.exception("The emulated API server failed on %s %s", raw_request.method, raw_request.path)
            response = self._error_response(errors.ApiStatusError(
                status=500, reason="InternalError", message=f"an error on the server: {exc!r}", details={}))
        if record.status is None:
            self.request_log.set_status(record, response.status)
        return response

    def _error_response(self, exc: KubernetesError) -> aiohttp.web.Response:
        if isinstance(exc, errors.ApiStatusError):
            response = aiohttp.web.json_response(exc.status_body(), status=exc.status)
            for header, value in exc.headers.items():
                response.headers[header] = value
            return response
        return aiohttp.web.json_response({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": exc.message or "", "reason": exc.reason or "", "details": exc.details or {},
            "code": exc.status}, status=exc.status)

    @staticmethod
    def _json(body: Any, status: int = 200, warnings: list[str] | None = None) -> aiohttp.web.Response:
        response = aiohttp.web.json_response(body, status=status)
        for warning in warnings or ():
            response.headers.add("Warning", '299 - ' + json.dumps(warning))
        return response

    async def _read_body(self, raw_request: aiohttp.web.BaseRequest) -> Any:
        text = await raw_request.text()
        if not text.strip():
            return None
        content_type = raw_request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if content_type == "application/apply-patch+yaml":
            raise errors.unsupported_media_type(content_type)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise errors.bad_request(f"the body of the request is not valid JSON: {exc}") from exc

    async def _read_object(self, raw_request: aiohttp.web.BaseRequest, definition: ResourceDef) -> Any:
        """The body of a POST or PUT, decoded as the real server does first: a custom resource's
        must name its ``kind`` (a built-in kind's is taken from the URL when left out)."""
        body = await self._read_body(raw_request)
        if definition.custom and isinstance(body, dict) and not body.get("kind"):
            raise errors.missing_kind(definition.kind, await raw_request.text())
        return body

    @staticmethod
    def _deleted(definition: ResourceDef, obj: dict[str, Any]) -> dict[str, Any]:
        """The answer to a DELETE that removed the object: the object for the kinds whose storage
        returns it (pods, services, namespaces, ...), else a ``Status`` naming it, as kube-apiserver
        answers (``details.kind`` is the resource's plural there)."""
        meta = obj["metadata"]
        details = {"name": meta["name"], **({"group": definition.group} if definition.group else {}),
                   "kind": definition.plural, "uid": meta["uid"]}
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    async def _serve(self, raw_request: aiohttp.web.BaseRequest, route: Route,
                     record: RequestRecord) -> aiohttp.web.StreamResponse:
        definition = self.store.find(route.group, route.version, route.plural)
        if definition is None:
            raise errors.resource_not_found()
        if route.namespace is not None and not definition.namespaced:
            raise errors.resource_not_found()
        if route.name is not None and definition.namespaced and route.namespace is None:
            raise errors.resource_not_found()
        if route.subresource == "log" and definition.key == ("", "pods") and route.name is not None \
                and route.namespace is not None and raw_request.method.upper() == "GET":
            return self._pod_log(route.namespace, route.name, raw_request.query)
        if route.subresource is not None and (route.subresource != "status" or not definition.status_subresource):
            raise errors.resource_not_found()
        params = raw_request.query
        method = raw_request.method.upper()
        field_validation = params.get("fieldValidation", "Warn")
        if method in ("POST", "PUT", "PATCH"):
            validation.check_field_validation(field_validation, {"POST": "CreateOptions", "PUT": "UpdateOptions",
                                                                 "PATCH": "PatchOptions"}[method])
        dry_run = params.get("dryRun") == "All"
        version = route.version

        if method == "GET":
            if _is_true(params.get("watch")):
                selector = Selector.parse(params.get("labelSelector"), params.get("fieldSelector"), route.plural)
                if route.name is not None:
                    selector = Selector(selector.labels,
                                        (*selector.fields, FieldRequirement("metadata.name", False, route.name)))
                return await self._watch(raw_request, definition, version, route.namespace, selector, record)
            if route.name is None:
                return self._list(definition, version, route.namespace, params)
            obj = self.store.get(definition, route.namespace, route.name)
            return self._json(self.store.render(definition, obj, version))

        if method == "POST":
            if route.name is not None:
                raise errors.method_not_allowed()
            body = await self._read_object(raw_request, definition)
            obj, warnings = self.store.create(definition, route.namespace, body, version=version,
                                              field_validation=field_validation, dry_run=dry_run)
            return self._json(self.store.render(definition, obj, version), 201, warnings)

        if method == "PUT":
            if route.name is None:
                raise errors.method_not_allowed()
            body = await self._read_object(raw_request, definition)
            obj, warnings = self.store.replace(definition, route.namespace, route.name, body, version=version,
                                               subresource=route.subresource, field_validation=field_validation,
                                               dry_run=dry_run)
            return self._json(self.store.render(definition, obj, version), 200, warnings)

        if method == "PATCH":
            if route.name is None:
                raise errors.method_not_allowed()
            body = await self._read_body(raw_request)
            content_type = raw_request.headers.get("Content-Type", "")
            obj, warnings = self.store.patch(definition, route.namespace, route.name, body, content_type,
                                             version=version, subresource=route.subresource,
                                             field_validation=field_validation, dry_run=dry_run)
            return self._json(self.store.render(definition, obj, version), 200, warnings)

        if method == "DELETE":
            body = await self._read_body(raw_request)
            options: Mapping[str, Any] = body if isinstance(body, dict) else {}
            propagation = options.get("propagationPolicy") or params.get("propagationPolicy")
            orphan = options.get("orphanDependents", params.get("orphanDependents"))
            if propagation is None and orphan is not None:
                propagation = "Orphan" if _is_true(str(orphan)) else "Background"
            if route.name is None:
                selector = Selector.parse(params.get("labelSelector"), params.get("fieldSelector"), route.plural)
                deleted = self.store.delete_collection(definition, route.namespace, selector,
                                                       propagation=propagation)
                return self._json({"kind": f"{definition.kind}List", "apiVersion": definition.api_version(version),
                                   "metadata": {"resourceVersion": str(self.store.rv)},
                                   "items": [self.store.render(definition, o, version) for o in deleted]})
            obj = self.store.delete(definition, route.namespace, route.name, propagation=propagation,
                                    preconditions=options.get("preconditions"), dry_run=dry_run)
            # Removed at once (no deletionTimestamp: no finalizer held it): a Status for most kinds.
            # Orphan and Foreground deletions add a finalizer on the real server, so it answers the
            # object there even when the emulator's garbage collector finished at once.
            removed = not obj["metadata"].get("deletionTimestamp")
            if removed and not definition.returns_deleted_object and \
                    (propagation or definition.default_propagation) == "Background":
                return self._json(self._deleted(definition, obj))
            return self._json(self.store.render(definition, obj, version))

        raise errors.method_not_allowed()

    def _pod_log(self, namespace: str, name: str, params: Mapping[str, str]) -> aiohttp.web.Response:
        """The log of a pod's local process (kubelet.py); ``tailLines`` and ``limitBytes`` are honoured."""
        pods = self.store.resources[("", "pods")]
        pod = self.store.get(pods, namespace, name)
        text = self.pod_logs(namespace, name) if self.pod_logs is not None else None
        if text is None:
            container = (((pod.get("spec") or {}).get("containers") or [{}])[0]).get("name", "")
            raise errors.bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                                     "no local process ran for it in the simulation")
        try:
            if params.get("tailLines"):
                text = "".join(text.splitlines(keepends=True)[-int(params["tailLines"]):])
            if params.get("limitBytes"):
                text = text.encode()[:int(params["limitBytes"])].decode(errors="ignore")
        except ValueError as exc:
            raise errors.bad_request(f"invalid log parameter: {exc}") from exc
        return aiohttp.web.Response(text=text, content_type="text/plain")

    # ---- list ---------------------------------------------------------------------------------------------

    def _list(self, definition: ResourceDef, version: str, namespace: str | None,
              params: Mapping[str, str]) -> aiohttp.web.Response:
        selector = Selector.parse(params.get("labelSelector"), params.get("fieldSelector"), definition.plural)
        items = self.store.list_objects(definition, namespace, selector)
        list_rv = str(self.store.rv)
        continue_token = ""
        if params.get("continue"):
            try:
                state = json.loads(base64.urlsafe_b64decode(params["continue"].encode()))
                start, list_rv = tuple(state["start"]), state["rv"]
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.bad_request(f"continue key is not valid: {exc}") from exc
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start]
        limit = int(params.get("limit") or 0)
        remaining = 0
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            continue_token = base64.urlsafe_b64encode(json.dumps(
                {"rv": list_rv, "start": [last.get("namespace", ""), last["name"]]}).encode()).decode()
        rendered = []
        for obj in items:
            if definition.custom:
                rendered.append(self.store.render(definition, obj, version))
            else:  # like the real server, typed lists carry no kind/apiVersion per item
                rendered.append({k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
        metadata: dict[str, Any] = {"resourceVersion": list_rv}
        if definition.custom:
            metadata["continue"] = ""  # as the real server's lists of custom resources
        if continue_token:
            metadata["continue"] = continue_token
            if not params.get("labelSelector") and not params.get("fieldSelector"):
                metadata["remainingItemCount"] = remaining  # as the real server: only without selectors
        return self._json({"kind": f"{definition.kind}List", "apiVersion": definition.api_version(version),
                           "metadata": metadata, "items": rendered})

    # ---- watch --------------------------------------------------------------------------------------------

    async def _watch(self, raw_request: aiohttp.web.BaseRequest, definition: ResourceDef, version: str,
                     namespace: str | None, selector: Selector,
                     record: RequestRecord) -> aiohttp.web.StreamResponse:
        params = raw_request.query
        rv_param = params.get("resourceVersion") or ""
        if rv_param and not rv_param.isdigit():  # the real server's answer, 500 included
            raise errors.ApiStatusError(status=500, reason="", details={}, message=(
                f'resourceVersion: Invalid value: "{rv_param}": strconv.ParseUint: parsing "{rv_param}": '
                "invalid syntax"))
        try:
            since = None if rv_param in ("", "0") else int(rv_param)
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as exc:
            raise errors.bad_request(f"invalid watch parameter: {exc}") from exc
        bookmarks = _is_true(params.get("allowWatchBookmarks"))
        initial_events = _is_true(params.get("sendInitialEvents"))

        def visible(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and definition.namespaced and \
                    obj.get("metadata", {}).get("namespace") != namespace:
                return False
            return selector.matches(obj)

        def translate(event: WatchEvent) -> dict[str, Any] | None:
            new_match = visible(event.obj)
            if event.type == "MODIFIED":
                old_match = visible(event.old)
                kind = "MODIFIED" if new_match and old_match else "ADDED" if new_match else \
                    "DELETED" if old_match else None
            else:
                kind = event.type if new_match else None
            if kind is None:
                return None
            return {"type": kind, "object": self.store.render(definition, event.obj, version)}

        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            queue, backlog = self.store.subscribe(definition, since)
        except errors.ApiStatusError as exc:
            await response.prepare(raw_request)
            self.request_log.set_status(record, 200)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status_body()}).encode() + b"\n")
            await response.write_eof()
            return response

        lines: list[dict[str, Any]] = []
        if since is None:
            for obj in self.store.list_objects(definition, namespace, selector):
                lines.append({"type": "ADDED", "object": self.store.render(definition, obj, version)})
            if initial_events and bookmarks:
                lines.append(self._bookmark(definition, version, initial_end=True))
        else:
            lines.extend(line for event in backlog if (line := translate(event)) is not None)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            await response.prepare(raw_request)
            self.request_log.set_status(record, 200)
            for line in lines:
                await response.write(json.dumps(line).encode() + b"\n")
            while not self._closing:
                transport = raw_request.transport
                if transport is None or transport.is_closing():
                    break
                current = loop.time()
                if deadline is not None and current >= deadline:
                    break
                wait = min(1.0, next_bookmark - current, *(() if deadline is None else (deadline - current,)))
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=max(wait, 0.0))
                except TimeoutError:
                    # The timer always moves on (with or without bookmarks, and when events are waiting): a
                    # deadline left in the past made every later wait 0 s, which cancels the get before it
                    # runs, so such a watch spun and delivered nothing more.
                    if loop.time() >= next_bookmark:
                        if bookmarks and queue.empty():
                            await response.write(json.dumps(self._bookmark(definition, version)).encode() + b"\n")
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if event is None:
                    break
                line = translate(event)
                if line is not None:
                    await response.write(json.dumps(line).encode() + b"\n")
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            self.store.unsubscribe(definition, queue)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def _bookmark(self, definition: ResourceDef, version: str, *, initial_end: bool = False) -> dict[str, Any]:
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": definition.kind,
                                               "apiVersion": definition.api_version(version),
                                               "metadata": metadata}}
