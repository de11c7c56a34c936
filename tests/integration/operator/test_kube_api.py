"""The operator's API façade (`KubernetesApi`, the official `kubernetes.aio` client underneath).

Against the emulated API server: every patch type with its content type as sent on the wire,
custom and built-in kinds, cluster-scoped kinds, conditional writes. Against a small real HTTP
server that answers as told (the emulator does not fail on demand): 409, 429 with Retry-After,
500, 403 and a dropped connection, each mapped to the right error class; and authentication
through a kubeconfig exec plugin, renewed after a 401, with kopf told the same credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from kserve_operator.clients.connection import kopf_connection_info
from kserve_operator.clients.kube import KubernetesApi, PatchType
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import DEPLOYMENT, MEMCACHED, NAMESPACE

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = await KubernetesApi.connect(user_agent="kserve-operator-test")
    yield client
    await client.close()


def memcached(name: str) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"size": 1}}


def deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "a:1"},
                                                          {"name": "d", "image": "b:1"}]}}}}


def sent_content_types(cluster: Any, plural: str) -> list[str]:
    return [r.content_type for r in cluster.request_log.snapshot()
            if r.method == "PATCH" and r.resource == plural and r.user_agent.startswith("kserve-operator-test")]


async def test_custom_resource_round_trip_with_every_patch_type(api: KubernetesApi, cluster: Any) -> None:
    assert await api.get(MEMCACHED, "m", "default") is None
    created = await api.create(MEMCACHED, memcached("m"))
    assert created["metadata"]["uid"]
    merged = await api.patch(MEMCACHED, "m", {"spec": {"size": 2}}, namespace="default")
    assert merged["spec"]["size"] == 2
    # The trap of kubernetes 36/37: a list body sent as merge-patch. Ours says JSON patch on the wire.
    patched = await api.patch(MEMCACHED, "m", [{"op": "replace", "path": "/spec/size", "value": 3}],
                              namespace="default", patch_type=PatchType.JSON)
    assert patched["spec"]["size"] == 3
    status = await api.patch(MEMCACHED, "m", {"status": {"phase": "Running"}}, namespace="default", status=True)
    assert status["status"] == {"phase": "Running"} and status["spec"]["size"] == 3
    assert sent_content_types(cluster, "memcacheds") == [
        PatchType.MERGE.value, PatchType.JSON.value, PatchType.MERGE.value]
    assert [o["metadata"]["name"] for o in await api.list(MEMCACHED, "default")] == ["m"]
    assert [o["metadata"]["name"] for o in await api.list(MEMCACHED)] == ["m"]  # every namespace
    assert await api.delete(MEMCACHED, "m", namespace="default") is True
    assert await api.delete(MEMCACHED, "m", namespace="default") is False


async def test_builtin_kind_with_strategic_merge_json_and_merge(api: KubernetesApi, cluster: Any) -> None:
    await api.create(DEPLOYMENT, deployment("d"))
    def image_patch(image: str) -> dict[str, Any]:
        return {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}}

    smp = await api.patch(DEPLOYMENT, "d", image_patch("a:2"), namespace="default", patch_type=PatchType.STRATEGIC)
    containers = smp["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("c", "a:2"), ("d", "b:1")]
    merged = await api.patch(DEPLOYMENT, "d", image_patch("a:3"), namespace="default")
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["c"], "merge patch replaces lists"
    jp = await api.patch(DEPLOYMENT, "d", [{"op": "replace", "path": "/spec/replicas", "value": 4}],
                         namespace="default", patch_type=PatchType.JSON)
    assert jp["spec"]["replicas"] == 4
    assert sent_content_types(cluster, "deployments") == [
        PatchType.STRATEGIC.value, PatchType.MERGE.value, PatchType.JSON.value]
    labelled = await api.list(DEPLOYMENT, "default", label_selector="missing-label")
    assert labelled == []
    with pytest.raises(ValueError, match="strategic"):
        await api.patch(MEMCACHED, "x", {}, namespace="default", patch_type=PatchType.STRATEGIC)


async def test_cluster_scoped_kind(api: KubernetesApi) -> None:
    names = {ns["metadata"]["name"] for ns in await api.list(NAMESPACE)}
    assert "default" in names
    assert (await api.get(NAMESPACE, "default") or {})["metadata"]["name"] == "default"


async def test_writes_conditional_on_what_was_read(api: KubernetesApi) -> None:
    created = await api.create(MEMCACHED, memcached("c"))
    stale = created["metadata"]["resourceVersion"]
    await api.patch(MEMCACHED, "c", {"spec": {"size": 2}}, namespace="default")
    with pytest.raises(ApiError) as merge_conflict:
        await api.patch(MEMCACHED, "c", {"metadata": {"resourceVersion": stale}, "spec": {"size": 5}},
                        namespace="default")
    with pytest.raises(ApiError) as json_conflict:
        await api.patch(MEMCACHED, "c", [{"op": "replace", "path": "/metadata/resourceVersion", "value": stale},
                                         {"op": "replace", "path": "/spec/size", "value": 5}],
                        namespace="default", patch_type=PatchType.JSON)
    for info in (merge_conflict, json_conflict):
        assert info.value.status == 409 and info.value.conflict and info.value.temporary
    assert (await api.get(MEMCACHED, "c", "default") or {})["spec"]["size"] == 2
    with pytest.raises(ApiError) as replaced:  # a delete meant for an object that has since been replaced
        await api.delete(MEMCACHED, "c", namespace="default", uid="the-uid-of-an-older-object")
    assert replaced.value.status == 409
    assert await api.get(MEMCACHED, "c", "default") is not None


class Scripted:
    """A real HTTP server on loopback that answers each request as the test scripted it."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], dict[str, Any]] | str] = []
        self.authorizations: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization", ""))
        answer = self.answers.pop(0) if self.answers else (200, {}, {"kind": "Namespace", "metadata": {"name": "x"}})
        if answer == "drop":
            assert request.transport is not None
            request.transport.close()  # no status line at all
            return web.Response()
        assert not isinstance(answer, str)
        status, headers, payload = answer
        return web.json_response(payload, status=status, headers=headers)


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scripted]:
    server = Scripted()
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.port = sock.getsockname()[1]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    # An exec credential plugin, as EKS/GKE kubeconfigs use: each run hands out a new token.
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, pathlib
        counter = pathlib.Path({str(tmp_path / "runs")!r})
        runs = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(runs))
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                          "status": {{"token": f"token-{{runs}}"}}}}))
    """))
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
              "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
              "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
              "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                       "command": str(plugin), "interactiveMode": "Never"}}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def status_body(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": f"scripted {reason}"}


@pytest.mark.parametrize(("answer", "status", "temporary", "retry_after"), [
    ((409, {}, status_body(409, "Conflict")), 409, True, None),
    ((429, {"Retry-After": "7"}, status_body(429, "TooManyRequests")), 429, True, 7.0),
    ((500, {}, status_body(500, "InternalError")), 500, True, None),
    ((403, {}, status_body(403, "Forbidden")), 403, False, None),
    ("drop", 0, True, None),
])
async def test_failures_map_to_error_classes(scripted: Scripted, answer: Any, status: int, temporary: bool,
                                             retry_after: float | None) -> None:
    scripted.answers = [answer]
    client = await KubernetesApi.connect()
    try:
        with pytest.raises(ApiError) as info:
            await client.patch(MEMCACHED, "m", {"spec": {}}, namespace="default")
    finally:
        await client.close()
    assert (info.value.status, info.value.temporary, info.value.retry_after) == (status, temporary, retry_after)


async def test_exec_plugin_credentials_renewed_after_a_401_and_shared_with_kopf(scripted: Scripted) -> None:
    info = await kopf_connection_info()
    assert info.server == f"http://127.0.0.1:{scripted.port}" and info.token == "token-1"
    client = await KubernetesApi.connect()
    try:
        scripted.answers = [(401, {}, status_body(401, "Unauthorized"))]
        assert await client.get(NAMESPACE, "x") == {"kind": "Namespace", "metadata": {"name": "x"}}
    finally:
        await client.close()
    assert scripted.authorizations == ["Bearer token-2", "Bearer token-3"], "the expired token is replaced once"


def test_kubeconfig_is_preferred_over_the_in_cluster_account(tmp_path: Path, kubeconfig: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """kubectl's order. An in-cluster environment (service host, token file) is present but loses."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = asyncio.run(kopf_connection_info())
    assert info.server == yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    assert json.loads(json.dumps(info.token)) == "devcluster"
    assert os.environ["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"


async def test_the_proxy_from_the_environment_is_used_and_no_proxy_honoured(
    scripted: Scripted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY is read once when connecting (not per request, see connection.new_api_client):
    a request for a server behind the proxy reaches the proxy; NO_PROXY sends it direct."""
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["clusters"][0]["cluster"]["server"] = "http://api.cluster.invalid:6443"
    behind_proxy = tmp_path / "behind-proxy"
    behind_proxy.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(behind_proxy))
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{scripted.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = await KubernetesApi.connect()
    try:
        assert await client.get(NAMESPACE, "x") == {"kind": "Namespace", "metadata": {"name": "x"}}
    finally:
        await client.close()
    assert scripted.authorizations, "the request went through the proxy (the scripted server)"

    from kserve_operator.clients.connection import _proxy_for

    monkeypatch.setenv("NO_PROXY", ".cluster.invalid")
    assert _proxy_for("http://api.cluster.invalid:6443") is None
    assert _proxy_for("http://elsewhere.example:6443") == f"http://127.0.0.1:{scripted.port}"
