"""How the conformance tier compares the emulated API server with the real one.

Each operation is a plain function ``operation(server) -> answer`` written once; ``compare``
runs it against the emulator and the real control plane (the same namespace name on both),
records both answers in ``RESULTS`` and fails the test when they differ, unless the operation
is listed in ``KNOWN_DIFFERENCES`` (then it fails when they no longer differ, so the list stays
true). An answer is built from what a client can observe, normalised with ``normalise`` where a
value legitimately differs between two servers (uids, timestamps, resourceVersions, the fields
the real server defaults on built-in kinds) and with ``failure`` for errors (code, reason, the
causes' fields and reasons; the message only where its wording is the point).
"""

from __future__ import annotations

import difflib
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from devcluster import ApiError, ClusterClient

#: Operations where the emulator is known to answer differently and that were not fixed, with why.
#: The test of each checks that it still differs: a fixed difference must leave this list (and a
#: full run of the tier fails when one of them was not compared at all).
KNOWN_DIFFERENCES: dict[str, str] = {
    "ModelCanary analysis refused: a check named twice": (
        "the emulator does not enforce x-kubernetes-list-type map keys on custom resources (the real server "
        "answers 422 FieldValueDuplicate); the operator's parse_spec refuses it too (InvalidSpec)"),
}


@dataclass
class Result:
    same: bool
    emulator: Any
    real: Any


#: Every operation compared in this session, by name, in the order they ran.
RESULTS: dict[str, Result] = {}


@dataclass
class Server:
    """One API server as an operation sees it: a client and this test's namespace on it."""

    name: str  # "emulator" | "real"
    client: ClusterClient
    namespace: str
    #: Set for the real server: how long to wait for what its controllers do asynchronously.
    settle_timeout: float = 0.0

    @property
    def real(self) -> bool:
        return self.name == "real"

    def path(self, group_version: str, plural: str, name: str = "", *, namespaced: bool = True) -> str:
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        where = f"/namespaces/{self.namespace}" if namespaced else ""
        return f"{prefix}{where}/{plural}" + (f"/{name}" if name else "")

    def wait(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Poll ``predicate`` until truthy or ``timeout``; its last value (the emulator answers at
        once, with ``settle_timeout`` 0; the real garbage collector takes seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def watch(self, path: str, *, timeout: float = 10.0, **params: str) -> tuple[int, list[dict[str, Any]]]:
        """A whole watch stream: it must end by itself (pass ``timeoutSeconds``); (status, events)."""
        query = urllib.parse.urlencode({"watch": "true", **params})
        client = self.client
        connection: http.client.HTTPConnection
        if client.https:
            connection = http.client.HTTPSConnection(client.host, client.port, timeout=timeout,
                                                     context=client.ssl_context)
        else:
            connection = http.client.HTTPConnection(client.host, client.port, timeout=timeout)
        try:
            connection.request("GET", f"{path}?{query}", headers={"Accept": "application/json"})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status >= 400:
            return response.status, [json.loads(raw)] if raw.strip() else []
        return response.status, [json.loads(line) for line in raw.splitlines() if line.strip()]


# ---- normalising answers ------------------------------------------------------------------------------

_VOLATILE_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink")


def normalise(obj: Any, *, keep_meta: Iterable[str] = ()) -> Any:
    """An object with what legitimately differs between two servers replaced by markers."""
    if isinstance(obj, list | tuple):
        return [normalise(item, keep_meta=keep_meta) for item in obj]
    if not isinstance(obj, dict):
        return obj
    result = {key: normalise(value, keep_meta=keep_meta) for key, value in obj.items()}
    meta = result.get("metadata")
    if isinstance(meta, dict):
        meta = dict(meta)
        for key in _VOLATILE_META:
            if key in meta and key not in keep_meta:
                meta[key] = "<set>" if key != "managedFields" else None
        meta.pop("managedFields", None)
        if "deletionTimestamp" in meta:
            meta["deletionTimestamp"] = "<set>"
        for ref in meta.get("ownerReferences") or []:
            if isinstance(ref, dict) and "uid" in ref:
                ref["uid"] = "<uid>"
        result["metadata"] = meta
    details = result.get("details")
    if result.get("kind") == "Status" and isinstance(details, dict) and "uid" in details:
        result["details"] = {**details, "uid": "<uid>"}  # a DELETE's Status names the deleted object's uid
    return result


def failure(exc: ApiError, *, message: bool = False) -> dict[str, Any]:
    """An error as compared: code, reason and the causes' fields and reasons; with ``message``, the
    causes' messages too and the whole message when there is at most one cause (with several, the
    message joins them in an order the real server does not keep stable)."""
    body = exc.body if isinstance(exc.body, dict) else {}
    causes = (body.get("details") or {}).get("causes") or []
    answer: dict[str, Any] = {"code": exc.status, "reason": exc.reason}
    if causes:
        answer["causes"] = sorted({(c.get("field", ""), c.get("reason", ""), c.get("message", "") if message else "")
                                   for c in causes})
    if message and len(causes) <= 1:
        answer["message"] = exc.message
    return answer


def attempt(call: Callable[[], Any], *, message: bool = False,
            shape: Callable[[Any], Any] = normalise) -> dict[str, Any]:
    """Run one API call: ``{"ok": shape(answer)}`` or ``{"error": failure(...)}``."""
    try:
        return {"ok": shape(call())}
    except ApiError as exc:
        return {"error": failure(exc, message=message)}


def pick(obj: Mapping[str, Any], *paths: str) -> dict[str, Any]:
    """Only the named dotted paths of an object (for built-in kinds the real server defaults)."""
    picked: dict[str, Any] = {}
    for dotted in paths:
        value: Any = obj
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if dotted.endswith(("Timestamp", "Time")) and value:
            value = "<set>"  # the two servers stamp different seconds
        picked[dotted] = normalise(value)
    return picked


# ---- comparing ---------------------------------------------------------------------------------------

def _diff(emulator: Any, real: Any) -> str:
    left = json.dumps(emulator, indent=1, sort_keys=True, default=str).splitlines()
    right = json.dumps(real, indent=1, sort_keys=True, default=str).splitlines()
    return "\n".join(difflib.unified_diff(left, right, "emulator", "real", lineterm="", n=2))


def _run(operation: Callable[[Server], Any], server: Server) -> Any:
    """The operation's answer; an error it did not expect is an answer too (so it is compared)."""
    try:
        return operation(server)
    except ApiError as exc:
        return {"unexpected error": failure(exc, message=True)}
    except AssertionError as exc:
        return {"assertion failed": str(exc).splitlines()[0]}


def compare(name: str, operation: Callable[[Server], Any], servers: Mapping[str, Server]) -> Any:
    """Run ``operation`` on both servers, record the answers, and check them (see the module docstring)."""
    assert name not in RESULTS, f"operation {name!r} compared twice"
    emulator = _run(operation, servers["emulator"])
    real = _run(operation, servers["real"])
    same = emulator == real
    RESULTS[name] = Result(same, emulator, real)
    if name in KNOWN_DIFFERENCES:
        assert not same, (f"{name} no longer differs (both answered {real!r}): remove it from "
                          "KNOWN_DIFFERENCES in tests/conformance/harness.py")
    else:
        assert same, f"{name}: the emulator differs from the real server:\n{_diff(emulator, real)}"
    return real


def summary_line() -> str:
    differing = [name for name, result in RESULTS.items() if not result.same]
    line = f"conformance: {len(RESULTS)} operations compared, {len(differing)} differ"
    if differing:
        known = [name for name in differing if name in KNOWN_DIFFERENCES]
        unknown = [name for name in differing if name not in KNOWN_DIFFERENCES]
        parts = []
        if known:
            parts.append("known: " + ", ".join(known))
        if unknown:
            parts.append("NEW: " + ", ".join(unknown))
        line += ": " + "; ".join(parts)
    return line
