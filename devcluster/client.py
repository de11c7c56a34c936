"""A small synchronous JSON client for tests and the demo (standard library only).

It talks to the emulated API server (plain HTTP, no auth) and to a real one (HTTPS with an
``ssl_context`` that trusts its CA and carries a client certificate, or a bearer ``token``),
so the same test or conformance check runs against both; it is not a general Kubernetes
client. ``apply_yaml`` resolves URLs through the server's discovery.
"""

from __future__ import annotations

import builtins
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml


class ApiError(Exception):
    """An HTTP >= 400 answer, with the Kubernetes ``Status`` fields when there is one."""

    def __init__(self, status: int, reason: str, message: str, body: Any) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


class ClusterClient:
    """Synchronous JSON calls against the API server at ``base_url``."""

    def __init__(self, base_url: str, user_agent: str = "devcluster-client", *,
                 ssl_context: ssl.SSLContext | None = None, token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host = parsed.hostname or "127.0.0.1"
        self.https = parsed.scheme == "https"
        self.port = parsed.port or (443 if self.https else 80)
        self.ssl_context = ssl_context
        self.token = token
        self.user_agent = user_agent
        self.last_headers: list[tuple[str, str]] = []
        self.last_status = 0
        self._discovery: dict[tuple[str, str], tuple[str, bool]] | None = None

    # ---- raw calls ---------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                params: dict[str, str] | None = None) -> Any:
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(params)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": self.user_agent, "Accept": "application/json", **self._auth()}
        if payload is not None:
            headers["Content-Type"] = content_type
        connection = self._connection()
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            self.last_headers = response.getheaders()
            self.last_status = response.status
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if response.status >= 400:
            if isinstance(data, dict) and data.get("kind") == "Status":
                raise ApiError(response.status, data.get("reason", ""), data.get("message", ""), data)
            raise ApiError(response.status, response.reason, str(data), data)
        return data

    def text(self, path: str, params: dict[str, str] | None = None) -> str:
        """GET a plain-text resource (e.g. ``/api/v1/namespaces/NS/pods/NAME/log``)."""
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        connection = self._connection()
        try:
            connection.request("GET", path, headers={"User-Agent": self.user_agent, "Accept": "*/*", **self._auth()})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw.decode(errors="replace")
            if isinstance(data, dict):
                raise ApiError(response.status, data.get("reason", ""), data.get("message", ""), data)
            raise ApiError(response.status, response.reason, str(data), data)
        return raw.decode(errors="replace")

    def request_with_status(self, method: str, path: str, body: Any = None, *,
                            content_type: str = "application/json") -> tuple[int, Any]:
        """Like ``request``, but also returns the HTTP status (e.g. to tell 201 from 200)."""
        data = self.request(method, path, body, content_type=content_type)
        return self.last_status, data

    @property
    def warnings(self) -> list[str]:
        """The ``Warning`` headers of the last response."""
        return [value for name, value in self.last_headers if name.lower() == "warning"]

    def get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", path)
        return result

    def list(self, path: str, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = self.request("GET", path, params=params)["items"]
        return items

    def create(self, path: str, body: dict[str, Any], field_validation: str = "Strict") -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", path, body, params={"fieldValidation": field_validation})
        return result

    def patch(self, path: str, body: Any, content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        result: dict[str, Any] = self.request("PATCH", path, body, content_type=content_type)
        return result

    def put(self, path: str, body: dict[str, Any], field_validation: str = "Strict") -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", path, body, params={"fieldValidation": field_validation})
        return result

    def delete(self, path: str, propagation_policy: str | None = None) -> dict[str, Any]:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy} \
            if propagation_policy else None
        result: dict[str, Any] = self.request("DELETE", path, body)
        return result

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_for(self, path: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                 interval: float = 0.05) -> dict[str, Any]:
        """Poll ``path`` until ``predicate(obj)``; a 404 counts as "not yet"."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "<never fetched>"
        while True:
            try:
                obj = self.get(path)
                last = obj
                if predicate(obj):
                    return obj
            except ApiError as exc:
                if exc.status != 404:
                    raise
                last = f"<404: {exc.message}>"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not satisfy the condition within {timeout}s; last seen: {last}")
            time.sleep(interval)

    def wait_gone(self, path: str, timeout: float = 10.0, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while self.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} still exists after {timeout}s")
            time.sleep(interval)

    # ---- manifests -----------------------------------------------------------------------------------

    def _resolve(self, api_version: str, kind: str) -> tuple[str, bool]:
        """The URL prefix (``/apis/g/v/plural``) and scope of a kind, from discovery."""
        key = (api_version, kind)
        if self._discovery is None or key not in self._discovery:
            self._discovery = self._discovery or {}
            base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            listing = self.get(base)
            for entry in listing.get("resources", []):
                if "/" not in entry["name"]:
                    self._discovery[(api_version, entry["kind"])] = (f"{base}/{entry['name']}",
                                                                    bool(entry.get("namespaced")))
        if key not in self._discovery:
            raise ApiError(404, "NotFound", f"no resource for {kind} in {api_version}", None)
        return self._discovery[key]

    def path_for(self, obj: dict[str, Any], *, named: bool = True, namespace: str = "default") -> str:
        """The URL of an object (or of its collection with ``named=False``)."""
        prefix, namespaced = self._resolve(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}
        if namespaced:
            base, _, plural = prefix.rpartition("/")
            prefix = f"{base}/namespaces/{meta.get('namespace') or namespace}/{plural}"
        return f"{prefix}/{meta['name']}" if named else prefix

    def apply_yaml(self, source: str | Path, namespace: str = "default") -> builtins.list[dict[str, Any]]:
        """Create each YAML document, or merge-patch it when it exists already."""
        text = source.read_text() if isinstance(source, Path) else source
        if isinstance(source, str) and "\n" not in source and Path(source).is_file():
            text = Path(source).read_text()
        results: builtins.list[dict[str, Any]] = []
        documents: Iterable[Any] = yaml.safe_load_all(text)
        for document in documents:
            if not isinstance(document, dict):
                continue
            collection = self.path_for(document, named=False, namespace=namespace)
            try:
                results.append(self.create(collection, document))
            except ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
                results.append(self.patch(self.path_for(document, namespace=namespace), document))
            if document.get("kind") == "CustomResourceDefinition":
                self._discovery = None
        return results
