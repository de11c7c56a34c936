"""Watch streams: replay from a resourceVersion, 410 Gone, selectors, timeouts, bookmarks."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from typing import Any

from devcluster import ClusterClient, EmulatedCluster

MC_ALL = "/apis/cache.serverless.xyz/v1alpha1/memcacheds"
MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
CMS = "/api/v1/namespaces/default/configmaps"


def memcached(name: str, *finalizers: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"finalizers": list(finalizers)} if finalizers else {})}
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "metadata": meta,
            "spec": {"size": 1}}


def watch(cluster: EmulatedCluster, path: str, **params: str) -> list[dict[str, Any]]:
    """Read a whole watch stream (it must end by itself: pass timeoutSeconds)."""
    query = urllib.parse.urlencode({"watch": "true", **params})
    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    connection.request("GET", f"{path}?{query}")
    response = connection.getresponse()
    assert response.status == 200
    events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    connection.close()
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"].get("metadata", {}).get("name", "")) for e in events]


def test_watch_without_version_lists_current_objects_then_ends_on_timeout(
        cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(MC, memcached("a"))
    started = time.monotonic()
    events = watch(cluster, MC, timeoutSeconds="1")
    assert time.monotonic() - started >= 0.9
    assert summary(events) == [("ADDED", "a")]
    assert events[0]["object"]["kind"] == "Memcached"


def test_watch_from_a_version_replays_later_events(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    created = kube.create(MC, memcached("a", "x/y"))
    rv = created["metadata"]["resourceVersion"]
    kube.patch(f"{MC}/a", {"spec": {"size": 2}})
    kube.create(MC, memcached("b"))
    kube.delete(f"{MC}/a")
    released = kube.patch(f"{MC}/a", {"metadata": {"finalizers": []}})
    events = watch(cluster, MC, resourceVersion=rv, timeoutSeconds="0.3")
    # Removing the last finalizer of a deleting object deletes it: one DELETED event, no MODIFIED.
    assert summary(events) == [("MODIFIED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "a")]
    deleted = events[-1]["object"]
    assert deleted["spec"]["size"] == 2  # the last state stored: still with its finalizer, as etcd had it
    assert deleted["metadata"]["finalizers"] == ["x/y"] and deleted["metadata"]["deletionTimestamp"]
    assert "finalizers" not in released["metadata"]  # the PATCH answers the object as it made it
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_too_old_version_is_an_error_event_410(kube: ClusterClient) -> None:
    with EmulatedCluster(watch_history=3) as small:
        client = small.client()
        first = client.create(CMS, {"metadata": {"name": "c"}, "data": {"n": "0"}})
        for index in range(5):
            client.patch(f"{CMS}/c", {"data": {"n": str(index + 1)}})
        events = watch(small, CMS, resourceVersion=first["metadata"]["resourceVersion"], timeoutSeconds="1")
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410


def test_watch_honours_selectors_and_label_transitions(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    start = kube.get(CMS)["metadata"]["resourceVersion"]
    kube.create(CMS, {"metadata": {"name": "in", "labels": {"app": "web"}}})
    kube.create(CMS, {"metadata": {"name": "out", "labels": {"app": "db"}}})
    kube.patch(f"{CMS}/in", {"metadata": {"labels": {"app": "other"}}})
    kube.patch(f"{CMS}/out", {"metadata": {"labels": {"app": "web"}}})
    events = watch(cluster, CMS, resourceVersion=start, labelSelector="app=web", timeoutSeconds="0.3")
    assert summary(events) == [("ADDED", "in"), ("DELETED", "in"), ("ADDED", "out")]
    named = watch(cluster, CMS, resourceVersion=start, fieldSelector="metadata.name=out", timeoutSeconds="0.3")
    assert summary(named) == [("ADDED", "out"), ("MODIFIED", "out")]


def test_live_events_reach_namespaced_and_cluster_wide_watchers(
        cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create("/api/v1/namespaces", {"metadata": {"name": "other"}})
    rv = kube.get(MC_ALL)["metadata"]["resourceVersion"]
    results: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, path: str) -> None:
        results[name] = watch(cluster, path, resourceVersion=rv, timeoutSeconds="1")

    threads = [threading.Thread(target=run, args=("ns", MC)), threading.Thread(target=run, args=("all", MC_ALL))]
    for thread in threads:
        thread.start()
    cluster.wait_for(lambda: sum(r.watch for r in cluster.requests) >= 2, timeout=5)  # both streams are open
    kube.create(MC, memcached("here"))
    kube.create("/apis/cache.serverless.xyz/v1alpha1/namespaces/other/memcacheds", memcached("there"))
    for thread in threads:
        thread.join()
    assert summary(results["ns"]) == [("ADDED", "here")]
    assert summary(results["all"]) == [("ADDED", "here"), ("ADDED", "there")]


def test_bookmarks_carry_the_current_version() -> None:
    with EmulatedCluster(bookmark_interval=0.2) as fast:
        client = fast.client()
        client.create(CMS, {"metadata": {"name": "c"}})
        rv = client.get(CMS)["metadata"]["resourceVersion"]
        events = watch(fast, CMS, resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="0.7")
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and all(b["object"]["metadata"]["resourceVersion"] == rv for b in bookmarks)


def test_initial_events_end_with_a_bookmark(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(CMS, {"metadata": {"name": "c"}})
    events = watch(cluster, CMS, sendInitialEvents="true", allowWatchBookmarks="true",
                   resourceVersionMatch="NotOlderThan", timeoutSeconds="0.3")
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_a_watch_without_bookmarks_keeps_delivering_past_the_bookmark_interval() -> None:
    """It used to stop: once the bookmark time passed without bookmarks asked for, every later wait
    was 0 s, which cancelled the queue read before it ran (the loop spun and delivered nothing)."""
    with EmulatedCluster(bookmark_interval=0.2) as fast:
        client = fast.client()
        rv = client.request("GET", CMS)["metadata"]["resourceVersion"]

        def late_write() -> None:
            time.sleep(0.6)  # three bookmark intervals later
            client.create(CMS, {"metadata": {"name": "late"}})

        writer = threading.Thread(target=late_write)
        writer.start()
        events = watch(fast, CMS, resourceVersion=rv, timeoutSeconds="1.5")
        writer.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "late")]
