"""Leader election's I/O: one Lease read, created and replaced through kubernetes.aio.

`controllers/leader_election.py` runs the loop and `planning.leader_election` decides; this
module only talks to the API server. It keeps an API client of its own (aiohttp sessions belong
to one event loop, and the controllers run in another thread's loop), so a reconcile storm
saturating the controllers' connection pool cannot delay a renewal. Every write is a replace
pinned to the resourceVersion read (a 409 if anyone wrote in between) or a create (a 409 if
anyone created first): two candidates can never both believe they won.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s

from kserve_operator import observability
from kserve_operator.clients.connection import new_api_client
from kserve_operator.clients.kube import api_error
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import LEASE

Lease = dict[str, Any]


class LeaseStore:
    """GET, POST and PUT of one Lease, each bounded by the timeout the caller gives."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str, name: str) -> None:
        self._client = api_client
        self._api = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name

    @classmethod
    async def connect(cls, namespace: str, name: str, *, user_agent: str) -> LeaseStore:
        api_client = await new_api_client()
        api_client.user_agent = user_agent
        return cls(api_client, namespace, name)

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, method: str, within: float, invoke: Callable[[dict[str, Any]], Any]) -> Lease:
        where = f"{LEASE.plural}/{self.namespace}/{self.name}"
        if within <= 0:
            raise ApiError(0, "Timeout", "no time left", method=method, path=where)
        code = "error"
        try:
            async with asyncio.timeout(within):
                response = await invoke({"_preload_content": False, "_request_timeout": within})
                try:
                    code = str(response.status)
                    headers = response.headers
                    text = await response.text()
                finally:
                    response.release()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc) or "no response", method=method, path=where) from exc
        finally:
            observability.API_REQUESTS.labels(method=method, code=code).inc()
        if int(code) >= 400:
            raise api_error(int(code), text, headers, method, where)
        lease: Lease = json.loads(text)
        return lease

    async def get(self, within: float) -> Lease | None:
        try:
            return await self._call("GET", within, lambda opts: self._api.read_namespaced_lease(
                self.name, self.namespace, **opts))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, spec: dict[str, Any], within: float) -> Lease:
        body = {"apiVersion": LEASE.api_version, "kind": LEASE.kind,
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        return await self._call("POST", within, lambda opts: self._api.create_namespaced_lease(
            self.namespace, body, **opts))

    async def replace(self, lease: Lease, spec: dict[str, Any], within: float) -> Lease:
        """PUT `lease` (as read, so its resourceVersion pins the write) with `spec`."""
        body = {**lease, "spec": {**(lease.get("spec") or {}), **spec}}
        return await self._call("PUT", within, lambda opts: self._api.replace_namespaced_lease(
            self.name, self.namespace, body, **opts))
