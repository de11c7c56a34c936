"""A small async Kubernetes API client: JSON in, JSON out, one call per method.

It resolves the cluster like kubectl (KUBECONFIG or ~/.kube/config, then the in-cluster
service account) through kopf's own login functions, so kopf and this client always talk
to the same server with the same credentials. Every call is counted in /metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from kserve_operator import observability
from kserve_operator.errors import ApiError

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")


def resolve_connection() -> kopf.ConnectionInfo:
    """kubectl's order: a kubeconfig (KUBECONFIG, ~/.kube/config), then the in-cluster account."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_kubeconfig(settings=settings) or kopf.login_with_service_account(settings=settings)
    if info is None:
        raise kopf.LoginError("No kubeconfig and no in-cluster service account: cannot reach a cluster.")
    return info


class KubeClient:
    """The operator's own API calls (kopf keeps its watches and bookkeeping to itself)."""

    def __init__(self, *, user_agent: str = "kserve-operator", timeout: float = 30.0) -> None:
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()

    async def _ensure_session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                info = resolve_connection()
                self._server = info.server.rstrip("/")
                headers = {**info.as_http_headers(), "User-Agent": self._user_agent}
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=64),
                    headers=headers,
                    timeout=self._timeout,
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = await self._ensure_session()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        started = time.perf_counter()
        code = "error"
        try:
            async with session.request(
                method, self._server + path, data=data, params=params, headers=headers
            ) as response:
                code = str(response.status)
                text = await response.text()
                if response.status == 401:
                    await self.close()  # a rotated token: log in again on the next call
                if response.status >= 400:
                    raise _api_error(response.status, text, method, path)
                return json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc) or "no response", method=method, path=path) from exc
        finally:
            observability.API_REQUESTS.labels(method=method, code=code).inc()
            observability.API_LATENCY.labels(method=method).observe(time.perf_counter() - started)

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", res.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", res.path(namespace), params=params)
        return list(result.get("items") or [])

    async def create(self, res: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body.get("metadata", {}).get("namespace")
        return await self.request("POST", res.path(namespace), body=dict(body))

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", res.path(namespace, name, subresource), body=patch, content_type=content_type
        )

    async def delete(self, res: Resource, namespace: str | None, name: str) -> None:
        try:
            await self.request("DELETE", res.path(namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise


def _api_error(status: int, text: str, method: str, path: str) -> ApiError:
    try:
        payload = json.loads(text)
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or "")
    except (ValueError, AttributeError):
        reason, message = "", text[:500]
    return ApiError(status, reason, message, method=method, path=path)
