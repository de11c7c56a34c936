"""The operator's Kubernetes API façade over the official client (`kubernetes.aio`, asynchronous).

Controllers talk to the cluster only through `KubeApi`: get / list / create / patch / delete by
a `Kind` descriptor, plain dicts in and out, `ApiError` out. `KubernetesApi` implements it with
the official client: `CustomObjectsApi` for custom resources (ours, KServe's, Istio's), the typed
APIs (`CoreV1Api`, `AppsV1Api`, `BatchV1Api`) for built-in kinds. Responses are read as JSON
(`_preload_content=False`), never turned into model classes: the controllers want dicts, and
the models of the 36.x line mangle unknown fields. Tests put a fake behind the Protocol.

Patch content types are always passed explicitly (`_content_type`): the client would otherwise
guess from the body's Python type, and its guesses differ between releases (kubernetes 36/37
send merge-patch for a JSON-patch list on custom objects).

The cluster is found the way kubectl finds it (connection.py); kopf logs in through the same
function, so both always talk to the same server as the same user. Every call is counted in
/metrics with its method and status code, and first takes a token of the client's `TokenBucket`
(clients/rate_limiter.py: KUBE_API_QPS, KUBE_API_BURST), its wait observed in
`kserve_operator_api_rate_limiter_wait_seconds`.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from kubernetes.aio import client as k8s

from kserve_operator import observability
from kserve_operator.clients.rate_limiter import TokenBucket
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import Kind

Object = dict[str, Any]
Objects = list[Object]  # spelled apart: inside KubernetesApi, `list` is the method


class PatchType(enum.StrEnum):
    MERGE = "application/merge-patch+json"  # RFC 7386
    JSON = "application/json-patch+json"  # RFC 6902
    STRATEGIC = "application/strategic-merge-patch+json"  # built-in kinds only


class KubeApi(Protocol):
    """What controllers may do to the cluster. 404 on get is `None`; everything else raises ApiError."""

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> Object | None: ...

    async def list(
        self, kind: Kind, namespace: str | None = None, *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> list[Object]: ...

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> Object: ...

    async def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
        namespace: str | None = None, patch_type: PatchType = PatchType.MERGE, status: bool = False,
    ) -> Object: ...

    async def delete(
        self, kind: Kind, name: str, *, namespace: str | None = None,
        propagation: str = "Background", uid: str | None = None,
    ) -> bool: ...


# Built-in API groups served by typed APIs; anything else goes through CustomObjectsApi.
_TYPED_APIS: dict[tuple[str, str], Callable[[k8s.ApiClient], Any]] = {
    ("", "v1"): k8s.CoreV1Api,
    ("apps", "v1"): k8s.AppsV1Api,
    ("batch", "v1"): k8s.BatchV1Api,
}


def _snake(kind: str) -> str:
    out = []
    for index, char in enumerate(kind):
        if char.isupper() and index:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


class KubernetesApi:
    """`KubeApi` on the official asynchronous client. Create with `await KubernetesApi.connect()`."""

    def __init__(
        self, api_client: k8s.ApiClient, *,
        reconnect: Callable[[], Awaitable[k8s.ApiClient]] | None = None, timeout: float = 30.0,
        limiter: TokenBucket | None = None,
    ) -> None:
        """`limiter`: every request takes a token first (None: no client-side limit)."""
        self._client = api_client
        self._reconnect = reconnect
        self._timeout = timeout
        self._limiter = limiter
        self._typed: dict[tuple[str, str], Any] = {}
        self._custom = k8s.CustomObjectsApi(api_client)

    @classmethod
    async def connect(
        cls, *, user_agent: str = "kserve-operator", request_timeout: float = 30.0, limiter: TokenBucket | None = None,
    ) -> KubernetesApi:
        from kserve_operator.clients.connection import new_api_client

        async def build() -> k8s.ApiClient:
            api_client = await new_api_client()
            api_client.user_agent = user_agent
            return api_client

        return cls(await build(), reconnect=build, timeout=request_timeout, limiter=limiter)

    async def close(self) -> None:
        await self._client.close()

    def _typed_api(self, kind: Kind) -> Any:
        key = (kind.group, kind.version)
        if key not in self._typed:
            self._typed[key] = _TYPED_APIS[key](self._client)
        return self._typed[key]

    def _is_typed(self, kind: Kind) -> bool:
        return (kind.group, kind.version) in _TYPED_APIS

    async def _throttle(self, method: str) -> None:
        """Take a token (arrival order: a write never waits behind reads that came after it)."""
        if self._limiter is not None:
            observability.API_THROTTLE_SECONDS.labels(method=method).observe(await self._limiter.wait())

    async def _call(self, method: str, kind: Kind, name: str | None, invoke: Callable[[], Any]) -> Any:
        """One API call: count it, read the JSON, turn failures into ApiError; re-login once on 401."""
        where = f"{kind.plural}/{name}" if name else kind.plural
        for attempt in (0, 1):
            await self._throttle(method)
            started = time.perf_counter()
            code = "error"
            try:
                response = await invoke()
                try:
                    code = str(response.status)
                    text = await response.text()
                    if response.status == 401 and attempt == 0 and self._reconnect is not None:
                        await self._relogin()
                        continue
                    if response.status >= 400:
                        raise api_error(response.status, text, response.headers, method, where)
                    return json.loads(text) if text else {}
                finally:
                    response.release()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise ApiError(0, type(exc).__name__, str(exc) or "no response", method=method, path=where) from exc
            finally:
                observability.API_REQUESTS.labels(method=method, code=code).inc()
                observability.API_LATENCY.labels(method=method).observe(time.perf_counter() - started)
        raise ApiError(401, "Unauthorized", "credentials refused twice", method=method, path=where)

    async def _relogin(self) -> None:
        """A rotated token or an expired exec-plugin credential: resolve the cluster again."""
        assert self._reconnect is not None
        old = self._client
        self._client = await self._reconnect()
        self._typed.clear()
        self._custom = k8s.CustomObjectsApi(self._client)
        await old.close()

    def _opts(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self._timeout}

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> Object | None:
        def invoke() -> Any:
            if self._is_typed(kind):
                api, snake = self._typed_api(kind), _snake(kind.kind)
                if kind.namespaced:
                    return getattr(api, f"read_namespaced_{snake}")(name, namespace, **self._opts())
                return getattr(api, f"read_{snake}")(name, **self._opts())
            if kind.namespaced:
                return self._custom.get_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, name, **self._opts())
            return self._custom.get_cluster_custom_object(kind.group, kind.version, kind.plural, name, **self._opts())

        try:
            result: Object = await self._call("GET", kind, name, invoke)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return result

    async def list(
        self, kind: Kind, namespace: str | None = None, *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> list[Object]:
        items, _ = await self.list_with_version(kind, namespace, label_selector=label_selector,
                                               field_selector=field_selector)
        return items

    def _lister(self, kind: Kind, namespace: str | None, params: dict[str, Any]) -> Callable[[], Any]:
        def invoke() -> Any:
            if self._is_typed(kind):
                api, snake = self._typed_api(kind), _snake(kind.kind)
                if not kind.namespaced:
                    return getattr(api, f"list_{snake}")(**params)
                if namespace:
                    return getattr(api, f"list_namespaced_{snake}")(namespace, **params)
                return getattr(api, f"list_{snake}_for_all_namespaces")(**params)
            if kind.namespaced and namespace:
                return self._custom.list_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, **params)
            return self._custom.list_cluster_custom_object(kind.group, kind.version, kind.plural, **params)
        return invoke

    async def list_with_version(
        self, kind: Kind, namespace: str | None = None, *,
        label_selector: str | None = None, field_selector: str | None = None,
    ) -> tuple[Objects, str]:
        """The items and the list's resourceVersion (where an informer's watch starts)."""
        params: dict[str, Any] = self._opts()
        if label_selector:
            params["label_selector"] = label_selector
        if field_selector:
            params["field_selector"] = field_selector
        result = await self._call("LIST", kind, None, self._lister(kind, namespace, params))
        return list(result.get("items") or []), str((result.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
        resource_version: str, timeout_seconds: int,
    ) -> AsyncIterator[Object]:
        """One watch stream from `resource_version`, with bookmarks: its decoded events until the
        server ends it (`timeout_seconds`) or the connection breaks (ApiError). An ERROR event (410
        Gone: the version was compacted) is yielded as the server sent it; the caller relists."""
        params: dict[str, Any] = {
            "_preload_content": False, "_request_timeout": timeout_seconds + 30, "watch": True,
            "allow_watch_bookmarks": True, "resource_version": resource_version, "timeout_seconds": timeout_seconds,
        }
        if label_selector:
            params["label_selector"] = label_selector
        where = kind.plural
        code = "error"
        await self._throttle("WATCH")
        try:
            response = await self._lister(kind, namespace, params)()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            observability.API_REQUESTS.labels(method="WATCH", code=code).inc()
            raise ApiError(0, type(exc).__name__, str(exc) or "no response", method="WATCH", path=where) from exc
        code = str(response.status)
        observability.API_REQUESTS.labels(method="WATCH", code=code).inc()
        try:
            if response.status >= 400:
                text = await response.text()
                if response.status == 401 and self._reconnect is not None:
                    await self._relogin()
                raise api_error(response.status, text, response.headers, "WATCH", where)
            try:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise ApiError(0, type(exc).__name__, str(exc) or "watch cut", method="WATCH", path=where) from exc
        finally:
            response.release()

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> Object:
        namespace = (body.get("metadata") or {}).get("namespace")
        payload = dict(body)

        def invoke() -> Any:
            if self._is_typed(kind):
                api, snake = self._typed_api(kind), _snake(kind.kind)
                if kind.namespaced:
                    return getattr(api, f"create_namespaced_{snake}")(namespace, payload, **self._opts())
                return getattr(api, f"create_{snake}")(payload, **self._opts())
            if kind.namespaced:
                return self._custom.create_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, payload, **self._opts())
            return self._custom.create_cluster_custom_object(
                kind.group, kind.version, kind.plural, payload, **self._opts())

        created: Object = await self._call("POST", kind, (body.get("metadata") or {}).get("name"), invoke)
        return created

    async def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
        namespace: str | None = None, patch_type: PatchType = PatchType.MERGE, status: bool = False,
    ) -> Object:
        if patch_type is PatchType.STRATEGIC and not self._is_typed(kind):
            raise ValueError("custom resources take merge or JSON patches, not strategic merge")
        body: Any = [dict(op) for op in patch] if patch_type is PatchType.JSON else dict(patch)  # type: ignore[arg-type]
        opts = {**self._opts(), "_content_type": patch_type.value}

        def invoke() -> Any:
            suffix = "_status" if status else ""
            if self._is_typed(kind):
                api, snake = self._typed_api(kind), _snake(kind.kind)
                if kind.namespaced:
                    return getattr(api, f"patch_namespaced_{snake}{suffix}")(name, namespace, body, **opts)
                return getattr(api, f"patch_{snake}{suffix}")(name, body, **opts)
            if kind.namespaced:
                return getattr(self._custom, f"patch_namespaced_custom_object{suffix}")(
                    kind.group, kind.version, namespace, kind.plural, name, body, **opts)
            return getattr(self._custom, f"patch_cluster_custom_object{suffix}")(
                kind.group, kind.version, kind.plural, name, body, **opts)

        patched: Object = await self._call("PATCH", kind, name, invoke)
        return patched

    async def delete(
        self, kind: Kind, name: str, *, namespace: str | None = None,
        propagation: str = "Background", uid: str | None = None,
    ) -> bool:
        """True when the object was there to delete; `uid` makes it conditional (a replaced object stays)."""
        options: dict[str, Any] = {"propagationPolicy": propagation}
        if uid is not None:
            options["preconditions"] = {"uid": uid}

        def invoke() -> Any:
            if self._is_typed(kind):
                api, snake = self._typed_api(kind), _snake(kind.kind)
                if kind.namespaced:
                    return getattr(api, f"delete_namespaced_{snake}")(
                        name, namespace, body=options, **self._opts())
                return getattr(api, f"delete_{snake}")(name, body=options, **self._opts())
            if kind.namespaced:
                return self._custom.delete_namespaced_custom_object(
                    kind.group, kind.version, namespace, kind.plural, name, body=options, **self._opts())
            return self._custom.delete_cluster_custom_object(
                kind.group, kind.version, kind.plural, name, body=options, **self._opts())

        try:
            await self._call("DELETE", kind, name, invoke)
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True


def api_error(status: int, text: str, headers: Mapping[str, str], method: str, where: str) -> ApiError:
    """An error answer as ApiError: the Status body's reason and message, and any Retry-After."""
    try:
        payload = json.loads(text)
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or "")
    except (ValueError, AttributeError):
        reason, message = "", text[:500]
    return ApiError(status, reason, message, method=method, path=where, retry_after=_retry_after(headers))
