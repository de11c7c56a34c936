"""Informers (clients/informer.py) and the cached read path (clients/cached_kube.py) against the
emulated API server: list then watch with a server-side label selector, resuming after a cut
without relisting, exactly one relist after 410 Gone with synthetic events for the gap, and
reads answered from memory while writes go through and land in the cache at once.

The emulated server serves ConfigMaps like any namespaced kind and has no controller acting on
them, so every change here is the test's own.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.emulator import EmulatedCluster
from devcluster.store import ObjectStore
from kserve_operator.clients.cached_kube import CachedKubeApi
from kserve_operator.clients.informer import Informer, InformerEvent, label_index, label_index_name
from kserve_operator.clients.kube import KubernetesApi, PatchType
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.resources.kinds import Kind
from kserve_operator.resources.label_selectors import LabelSelector

pytestmark = pytest.mark.integration

CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap")
OURS = "app.kubernetes.io/managed-by=kserve-operator"
AGENT = "kserve-operator-informer-test"


def config_map(name: str, *, ours: bool = True, data: str = "1", namespace: str = "default") -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "kserve-operator", "owner": name[:3]} if ours else {"other": "x"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
                                                                  "labels": labels}, "data": {"k": data}}


@pytest.fixture
async def api(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubernetesApi]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    client = await KubernetesApi.connect(user_agent=AGENT)
    yield client
    await client.close()


class Recorder:
    """A subscriber that keeps every event."""

    def __init__(self) -> None:
        self.events: list[InformerEvent] = []

    async def __call__(self, event: InformerEvent) -> None:
        self.events.append(event)

    def names(self, kind: str | None) -> list[str]:
        return sorted(e.obj["metadata"]["name"] for e in self.events if e.type == kind)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def requests(cluster: EmulatedCluster, *, watch: bool | None = None, method: str = "GET") -> list[Any]:
    return [r for r in cluster.request_log.snapshot() if r.user_agent.startswith(AGENT)
            and r.resource == "configmaps" and r.method == method and (watch is None or r.watch == watch)]


def store_writes(create: list[dict[str, Any]], patch: dict[str, str], delete: list[str]) -> Callable[
        [ObjectStore], None]:
    """Writes straight into the emulated store (in the server's loop), for compact_watch_history."""

    def write(store: ObjectStore) -> None:
        resource = store.find("", "v1", "configmaps")
        assert resource is not None
        for body in create:
            store.create(resource, "default", body)
        for name, value in patch.items():
            store.patch(resource, "default", name, {"data": {"k": value}}, "application/merge-patch+json")
        for name in delete:
            store.delete(resource, "default", name)
    return write


async def test_lists_then_watches_only_what_the_selector_names(cluster: EmulatedCluster, kube: Any,
                                                               api: KubernetesApi) -> None:
    kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1"))
    kube.create("/api/v1/namespaces/default/configmaps", config_map("foreign", ours=False))
    informer = Informer(api, [CONFIG_MAP], backoff=backoff_delay, label_selector=OURS,
                        indexes={"owner": label_index("owner")})
    recorder = Recorder()
    informer.subscribe(recorder)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        assert recorder.names(None) == ["aaa-1"]  # the listing, reported as kopf reports one
        assert informer.get("default", "foreign") is None

        kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-2"))
        kube.create("/api/v1/namespaces/default/configmaps", config_map("bbb-1"))
        kube.create("/api/v1/namespaces/default/configmaps", config_map("foreign-2", ours=False))
        kube.patch("/api/v1/namespaces/default/configmaps/aaa-1", {"data": {"k": "2"}})
        await eventually(lambda: recorder.names("ADDED") == ["aaa-2", "bbb-1"] and bool(recorder.names("MODIFIED")))
        assert recorder.names("MODIFIED") == ["aaa-1"]
        assert sorted(o["metadata"]["name"] for o in informer.by_index("owner", "aaa")) == ["aaa-1", "aaa-2"]

        # Dropping the label takes it out of the scope: the server reports it as deleted.
        kube.patch("/api/v1/namespaces/default/configmaps/aaa-2",
                   {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}})
        await eventually(lambda: recorder.names("DELETED") == ["aaa-2"])
        assert informer.get("default", "aaa-2") is None
        assert [o["metadata"]["name"] for o in informer.by_index("owner", "aaa")] == ["aaa-1"]
        assert not any("foreign" in name for e in recorder.events for name in [e.obj["metadata"]["name"]])
    finally:
        await informer.stop()
    lists, watches = requests(cluster, watch=False), requests(cluster, watch=True)
    assert len(lists) == 1 and len(watches) == 1
    for record in lists + watches:  # the selector is the server's to apply
        assert f"labelSelector={OURS}" in urllib.parse.unquote(record.query)
    assert "allowwatchbookmarks=true" in watches[0].query.lower()


async def test_a_cut_stream_resumes_from_the_last_version_without_relisting(cluster: EmulatedCluster, kube: Any,
                                                                             api: KubernetesApi) -> None:
    informer = Informer(api, [CONFIG_MAP], backoff=backoff_delay, namespace="default", label_selector=OURS,
                        watch_timeout=1)
    recorder = Recorder()
    informer.subscribe(recorder)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        await eventually(lambda: len(requests(cluster, watch=True)) >= 3, timeout=15)  # streams ended twice
        kube.create("/api/v1/namespaces/default/configmaps", config_map("late"))
        await eventually(lambda: recorder.names("ADDED") == ["late"])
    finally:
        await informer.stop()
    assert len(requests(cluster, watch=False)) == 1, "a stream that ended must resume, not relist"
    assert informer.relists == 0


async def test_410_gone_relists_once_and_reports_only_the_gap(cluster: EmulatedCluster, kube: Any,
                                                              api: KubernetesApi) -> None:
    for name in ("keep", "change", "drop"):
        kube.create("/api/v1/namespaces/default/configmaps", config_map(name))
    informer = Informer(api, [CONFIG_MAP], backoff=backoff_delay, label_selector=OURS)
    recorder = Recorder()
    informer.subscribe(recorder)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        await eventually(lambda: len(requests(cluster, watch=True)) == 1)
        recorder.events.clear()
        cluster.compact_watch_history(store_writes([config_map("new")], {"change": "2"}, ["drop"]))
        await eventually(lambda: informer.relists == 1 and informer.synced.is_set() and len(recorder.events) == 3)
        await asyncio.sleep(0.5)  # nothing more arrives: one relist, one new watch
        assert (recorder.names("ADDED"), recorder.names("MODIFIED"), recorder.names("DELETED")) == \
            (["new"], ["change"], ["drop"])
        assert recorder.names(None) == []  # "keep" did not change: not reported again
        modified = next(e for e in recorder.events if e.type == "MODIFIED")
        assert modified.old is not None and modified.old["data"] == {"k": "1"} and modified.obj["data"] == {"k": "2"}
        assert sorted(o["metadata"]["name"] for o in informer.items()) == ["change", "keep", "new"]
        kube.create("/api/v1/namespaces/default/configmaps", config_map("after"))
        await eventually(lambda: recorder.names("ADDED") == ["after", "new"])
    finally:
        await informer.stop()
    assert informer.relists == 1
    assert len(requests(cluster, watch=False)) == 2  # the first listing and the one relist


async def test_cached_reads_cost_no_request_and_writes_are_seen_at_once(cluster: EmulatedCluster, kube: Any,
                                                                       api: KubernetesApi) -> None:
    kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1"))
    kube.create("/api/v1/namespaces/default/configmaps", config_map("foreign", ours=False))
    cached = CachedKubeApi(api, backoff=backoff_delay)
    informer = cached.inform(CONFIG_MAP, label_selector=OURS,
                             indexes={label_index_name("owner"): label_index("owner")})
    await cached.start(wait=10)
    try:
        before = len(requests(cluster, watch=False))
        assert (await cached.get(CONFIG_MAP, "aaa-1", "default") or {})["data"] == {"k": "1"}
        listed = await cached.list(CONFIG_MAP, "default", label_selector=f"{OURS},owner=aaa")
        assert [o["metadata"]["name"] for o in listed] == ["aaa-1"]
        assert await cached.list(CONFIG_MAP, "other", label_selector=OURS) == []
        assert len(requests(cluster, watch=False)) == before, "reads in scope must not reach the server"

        # Outside the informer's selector: the server answers (a same-named object someone else owns).
        assert (await cached.get(CONFIG_MAP, "foreign", "default") or {})["data"] == {"k": "1"}
        assert [o["metadata"]["name"] for o in await cached.list(CONFIG_MAP, "default", label_selector="other=x")] \
            == ["foreign"]
        assert len(requests(cluster, watch=False)) == before + 2

        # Copies: a caller changing what it got does not change the cache.
        got = await cached.get(CONFIG_MAP, "aaa-1", "default")
        assert got is not None
        got["data"]["k"] = "mutated"
        assert informer.get("default", "aaa-1")["data"] == {"k": "1"}  # type: ignore[index]

        # A write's response is in the cache before the watch brings it back.
        patched = await cached.patch(CONFIG_MAP, "aaa-1", {"data": {"k": "3"}}, namespace="default",
                                     patch_type=PatchType.MERGE)
        assert (await cached.get(CONFIG_MAP, "aaa-1", "default") or {})["metadata"]["resourceVersion"] == \
            patched["metadata"]["resourceVersion"]
        created = await cached.create(CONFIG_MAP, config_map("aaa-2"))
        assert informer.get("default", "aaa-2") is not None
        assert await cached.delete(CONFIG_MAP, "aaa-2", namespace="default") is True
        assert informer.get("default", "aaa-2") is None
        assert created["metadata"]["name"] == "aaa-2"
        await asyncio.sleep(0.3)  # the watch's own events for those writes change nothing
        assert informer.get("default", "aaa-2") is None
        assert (await cached.get(CONFIG_MAP, "aaa-1", "default") or {})["data"] == {"k": "3"}
        # A field selector is the server's to evaluate.
        await cached.list(CONFIG_MAP, "default", label_selector=OURS, field_selector="metadata.name=aaa-1")
        assert len(requests(cluster, watch=False)) == before + 3
    finally:
        await cached.stop()


async def test_unlisted_informer_passes_reads_through(cluster: EmulatedCluster, kube: Any,
                                                      api: KubernetesApi) -> None:
    """Before its listing (or while relisting) an informer answers nothing: the server does."""
    kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1"))
    cached = CachedKubeApi(api, backoff=backoff_delay)
    informer = cached.inform(CONFIG_MAP, label_selector=OURS)
    assert not informer.covers(CONFIG_MAP, "default", LabelSelector.parse(OURS))
    assert [o["metadata"]["name"] for o in await cached.list(CONFIG_MAP, "default", label_selector=OURS)] == ["aaa-1"]
    assert len(requests(cluster, watch=False)) == 1


async def test_a_late_copy_of_a_deleted_object_does_not_come_back(cluster: EmulatedCluster, kube: Any,
                                                                  api: KubernetesApi) -> None:
    """kopf's body of an event behind the DELETED one, offered to the cache (core.remember), is older
    than the deletion: the object stays gone; a newer object of the same name is taken."""
    old = kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1"))
    informer = Informer(api, [CONFIG_MAP], backoff=backoff_delay, label_selector=OURS)
    informer.start()
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        kube.delete("/api/v1/namespaces/default/configmaps/aaa-1")
        await eventually(lambda: informer.get("default", "aaa-1") is None)
        informer.offer(old)
        assert informer.get("default", "aaa-1") is None
        again = kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1", data="2"))
        informer.offer(again)
        assert (informer.get("default", "aaa-1") or {}).get("data") == {"k": "2"}
    finally:
        await informer.stop()


async def test_an_authoritative_informer_answers_misses_and_a_relist_keeps_serving(
        cluster: EmulatedCluster, kube: Any, api: KubernetesApi) -> None:
    """An informer of every object (no selector) registered as authoritative: a name it does not hold
    is not there (no GET; the operator needs no `get` on that kind). While a 410 relist runs, the
    previous listing keeps answering (no pass-through)."""
    kube.create("/api/v1/namespaces/default/configmaps", config_map("aaa-1"))
    cached = CachedKubeApi(api, backoff=backoff_delay)
    informer = cached.inform(CONFIG_MAP, namespace="default", authoritative=True)
    await cached.start(wait=10)
    try:
        before = len(requests(cluster, watch=False))
        assert await cached.get(CONFIG_MAP, "missing", "default") is None
        assert (await cached.get(CONFIG_MAP, "aaa-1", "default") or {})["data"] == {"k": "1"}
        assert len(requests(cluster, watch=False)) == before
        cluster.compact_watch_history(store_writes([], {"aaa-1": "2"}, []))
        await eventually(lambda: informer.relists == 1)
        assert informer.synced.is_set()
        await eventually(lambda: (informer.get("default", "aaa-1") or {}).get("data") == {"k": "2"})
        assert len(requests(cluster, watch=False)) == before + 1  # the relist, and no read passed through
    finally:
        await cached.stop()
