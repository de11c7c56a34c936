"""Conditional VirtualService writes against concurrent writers, on the emulated API server.

The deterministic race runs the controller's reconcile in this process through the real API
façade, with a concurrent writer that edits the VirtualService through a second client right
before each of our writes: the API server answers 409 for real, and the reconcile must
re-read, plan again and keep the other writer's edit. The second test does the same with the
real operator process and a writer thread editing another route while the percent moves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
import pytest

from kserve_operator.clients.kube import KubeApi, KubernetesApi, PatchType
from kserve_operator.controllers import canary
from kserve_operator.controllers.core import Outcome
from kserve_operator.resources.kinds import VIRTUAL_SERVICE, Kind
from kserve_operator.settings import FINALIZER, OperatorSettings
from tests.integration.operator.canary_world import (
    MCANARY,
    NS,
    install_world,
    model_canary,
    vs_path,
    wait_phase,
    weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration
AGENT = "kserve-operator-race-test"


class RacingApi:
    """The real `KubeApi`, except that before each of our next `races` VirtualService writes a
    concurrent writer (another client) edits the object first, so ours carries a stale version."""

    def __init__(self, inner: KubeApi, kube: Any, races: int) -> None:
        self.inner, self.kube, self.races = inner, kube, races
        self.edits = 0

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return await self.inner.get(kind, name, namespace)

    async def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        return await self.inner.list(kind, namespace, label_selector=label_selector, field_selector=field_selector)

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.inner.create(kind, body)

    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                    namespace: str | None = None, patch_type: PatchType = PatchType.MERGE,
                    status: bool = False) -> dict[str, Any]:
        if kind.plural == VIRTUAL_SERVICE.plural and self.races > 0:
            self.races -= 1
            self.edits += 1
            await asyncio.to_thread(self.kube.patch, vs_path(), [
                {"op": "replace", "path": "/spec/http/0/timeout", "value": f"{60 + self.edits}s"}],
                "application/json-patch+json")
        return await self.inner.patch(kind, name, patch, namespace=namespace, patch_type=patch_type, status=status)

    async def delete(self, kind: Kind, name: str, *, namespace: str | None = None, propagation: str = "Background",
                     uid: str | None = None) -> bool:
        return await self.inner.delete(kind, name, namespace=namespace, propagation=propagation, uid=uid)


@pytest.fixture
async def api(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = await KubernetesApi.connect(user_agent=AGENT)
    yield client
    await client.close()


def finalized(body: dict[str, Any]) -> dict[str, Any]:
    """The canary as kopf leaves it before the first write (no route is written without it)."""
    body["metadata"]["finalizers"] = [FINALIZER]
    return body


async def reconcile_once(api: KubeApi) -> Outcome:
    ctx = canary.new_context(OperatorSettings(), api, None)
    return await ctx.core.run(NS, "mnist", lambda: canary.reconcile(
        ctx, NS, "mnist", logging.getLogger("test")))


def conflicts(cluster: Any) -> list[Any]:
    return [r for r in cluster.requests if r.method == "PATCH" and "virtualservices" in r.path
            and r.status == 409 and r.user_agent.startswith(AGENT)]


async def test_a_409_is_re_read_and_retried_keeping_the_other_writers_edit(
    cluster: Any, kube: Any, api: KubernetesApi,
) -> None:
    install_world(kube)
    kube.create(MCANARY, finalized(model_canary(percent=20, routes=["predict"])))
    racing = RacingApi(api, kube, races=2)
    assert await reconcile_once(racing) is Outcome.OK
    assert len(conflicts(cluster)) == 2
    vs = kube.get(vs_path())
    assert weights(vs) == [80, 20]
    assert vs["spec"]["http"][0]["timeout"] == "62s"  # the other writer's last edit survived
    assert kube.get(MCANARY + "/mnist")["status"]["percent"] == 20


async def test_a_writer_that_never_stops_leaves_the_retry_to_the_backoff(
    cluster: Any, kube: Any, api: KubernetesApi,
) -> None:
    install_world(kube)
    kube.create(MCANARY, finalized(model_canary(percent=20, routes=["predict"])))
    racing = RacingApi(api, kube, races=canary.CONFLICT_ATTEMPTS)
    with pytest.raises(kopf.TemporaryError):
        await reconcile_once(racing)
    assert len(conflicts(cluster)) == canary.CONFLICT_ATTEMPTS
    vs = kube.get(vs_path())
    assert weights(vs) == [100]  # never written over the other writer
    assert vs["spec"]["http"][0]["timeout"] == f"{60 + canary.CONFLICT_ATTEMPTS}s"


def test_the_operator_and_a_concurrent_writer_both_win(kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=30)
    kube.create(MCANARY, model_canary(percent=10, routes=["predict"]))
    kube.wait_for(vs_path(), lambda o: weights(o) == [90, 10])
    stop = threading.Event()
    edits = [0]

    def writer() -> None:
        while not stop.is_set():
            edits[0] += 1
            kube.patch(vs_path(), [{"op": "replace", "path": "/spec/http/0/timeout", "value": f"{edits[0]}s"}],
                       "application/json-patch+json")
            time.sleep(0.005)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for percent in (25, 40, 55, 70, 85):
            kube.patch(f"{MCANARY}/mnist", {"spec": {"percent": percent}})
            kube.wait_for(vs_path(), lambda o, p=percent: weights(o) == [100 - p, p], timeout=10)
    finally:
        stop.set()
        thread.join(timeout=5)
    vs = kube.get(vs_path())
    assert vs["spec"]["http"][0]["timeout"] == f"{edits[0]}s"  # every edit of the writer landed
    assert weights(vs) == [15, 85]
    wait_phase(kube, "mnist", "Active")
