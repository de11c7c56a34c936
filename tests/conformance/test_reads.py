"""Lists with label and field selectors, and watches: event order, selectors, bookmarks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.harness import Server, attempt, compare, normalise

MC_GV = "cache.serverless.xyz/v1alpha1"


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": dict(data)}


def memcached(name: str) -> dict[str, Any]:
    return {"apiVersion": MC_GV, "kind": "Memcached", "metadata": {"name": name}, "spec": {"size": 1}}


#: What kube-controller-manager's root-ca-cert-publisher puts in every namespace of the real cluster.
ROOT_CA = "kube-root-ca.crt"


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items if item["metadata"]["name"] != ROOT_CA]


def seed_labelled(s: Server) -> None:
    for name, labels in (("web-front", {"app": "web", "tier": "front"}), ("web-back", {"app": "web", "tier": "back"}),
                         ("db", {"app": "db"}), ("plain", {})):
        s.client.create(s.path("v1", "secrets"), {"metadata": {"name": name, "labels": labels}})


LABEL_SELECTORS = ["app=web", "app==web", "app!=web", "app in (web,db)", "app notin (web)", "tier", "!tier",
                   "app=web,tier=front", "app,tier notin (back)", "app in ()", ""]


@pytest.mark.parametrize("selector", LABEL_SELECTORS)
def test_label_selector(servers: dict[str, Server], selector: str) -> None:
    def operation(s: Server) -> Any:
        seed_labelled(s)
        return attempt(lambda: s.client.list(s.path("v1", "secrets"), label_selector=selector or None),
                       shape=names)
    compare(f"list with labelSelector {selector!r}", operation, servers)


@pytest.mark.parametrize("selector", ["app=", "app in web", "a b", "app=web,", "-bad=1"])
def test_invalid_label_selector(servers: dict[str, Server], selector: str) -> None:
    compare(f"list with an invalid labelSelector {selector!r}: 400",
            lambda s: attempt(lambda: s.client.list(s.path("v1", "secrets"), label_selector=selector)), servers)


FIELD_SELECTORS = [("v1", "configmaps", "metadata.name=db"), ("v1", "configmaps", "metadata.name!=db"),
                   ("v1", "configmaps", "metadata.name==db,metadata.namespace!=x"),
                   ("v1", "secrets", "type=Opaque"), ("v1", "secrets", "type!=Opaque"),
                   (MC_GV, "memcacheds", "metadata.name=db"),
                   ("v1", "configmaps", "data.x=1"), (MC_GV, "memcacheds", "spec.size=1"),
                   ("v1", "configmaps", "metadata.name")]


@pytest.mark.parametrize(("group_version", "plural", "selector"), FIELD_SELECTORS)
def test_field_selector(servers: dict[str, Server], group_version: str, plural: str, selector: str) -> None:
    def operation(s: Server) -> Any:
        for name in ("db", "web"):
            s.client.create(s.path("v1", "configmaps"), configmap(name))
            s.client.create(s.path(MC_GV, "memcacheds"), memcached(name))
        s.client.create(s.path("v1", "secrets"), {"metadata": {"name": "opaque"}, "type": "Opaque"})
        s.client.create(s.path("v1", "secrets"), {"metadata": {"name": "tls"}, "type": "example.com/other"})
        return attempt(lambda: s.client.list(s.path(group_version, plural), field_selector=selector), shape=names)
    compare(f"list {plural} with fieldSelector {selector!r}", operation, servers)


def test_list_across_namespaces(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(MC_GV, "memcacheds"), memcached("a"))
        listed = s.client.request("GET", f"/apis/{MC_GV}/memcacheds")
        ours = [i for i in listed["items"] if i["metadata"]["namespace"] == s.namespace]
        return listed["kind"], listed["apiVersion"], sorted(listed["metadata"]), normalise(ours)
    compare("list a custom resource across namespaces: the List's kind, apiVersion, metadata, items",
            operation, servers)


def test_list_builtin_shape(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "secrets"), {"metadata": {"name": "a"}, "stringData": {"k": "v"}})
        listed = s.client.request("GET", s.path("v1", "secrets"), params={"labelSelector": "!nothing"})
        return listed["kind"], listed["apiVersion"], sorted(listed["metadata"]), normalise(listed["items"])
    compare("list Secrets: items without kind and apiVersion; stringData stored as data", operation, servers)


def test_list_pagination(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        for index in range(5):
            s.client.create(s.path("v1", "secrets"), {"metadata": {"name": f"s-{index}"}})
        pages = []
        token = ""
        while True:
            params = {"limit": "2", **({"continue": token} if token else {})}
            page = s.client.request("GET", s.path("v1", "secrets"), params=params)
            pages.append((names(page["items"]), page["metadata"].get("remainingItemCount")))
            token = page["metadata"].get("continue", "")
            if not token:
                return pages
    compare("list with limit and continue", operation, servers)


# ---- watch ------------------------------------------------------------------------------------------

def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"].get("metadata", {}).get("name", "")) for e in events]


def increasing(events: list[dict[str, Any]]) -> bool:
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    return versions == sorted(versions) and len(set(versions)) == len(versions)


def test_watch_event_order(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = s.path(MC_GV, "memcacheds")
        start = s.client.request("GET", plural)["metadata"]["resourceVersion"]
        s.client.create(plural, {**memcached("a"), "metadata": {"name": "a", "finalizers": ["example.com/hold"]}})
        s.client.patch(f"{plural}/a", {"spec": {"size": 2}})
        s.client.create(plural, memcached("b"))
        s.client.patch(f"{plural}/a/status", {"status": {"phase": "Running"}})
        s.client.delete(f"{plural}/a")
        s.client.patch(f"{plural}/a", {"metadata": {"finalizers": None}})
        s.client.delete(f"{plural}/b")
        status, events = s.watch(plural, resourceVersion=start, timeoutSeconds="1")
        last = events[-1]["object"] if events else {}
        gone = [e["object"]["metadata"].get("finalizers") for e in events
                if e["type"] == "DELETED" and e["object"]["metadata"]["name"] == "a"]
        return status, summary(events), increasing(events), normalise(last), gone
    compare("watch from a resourceVersion: ADDED/MODIFIED/DELETED in order, the last state", operation, servers)


def test_watch_selector_transitions(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = s.path("v1", "configmaps")
        start = s.client.request("GET", plural)["metadata"]["resourceVersion"]
        s.client.create(plural, configmap("in", {"app": "web"}))
        s.client.create(plural, configmap("out", {"app": "db"}))
        s.client.patch(f"{plural}/in", {"metadata": {"labels": {"app": "other"}}})
        s.client.patch(f"{plural}/out", {"metadata": {"labels": {"app": "web"}}})
        s.client.patch(f"{plural}/out", {"data": {"k": "v"}})
        s.client.delete(f"{plural}/out")
        _, by_label = s.watch(plural, resourceVersion=start, labelSelector="app=web", timeoutSeconds="1")
        _, by_field = s.watch(plural, resourceVersion=start, fieldSelector="metadata.name=in", timeoutSeconds="1")
        return summary(by_label), summary(by_field)
    compare("watch with selectors: objects entering and leaving them are ADDED and DELETED", operation, servers)


def test_watch_without_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = s.path("v1", "secrets")
        for name in ("b", "a"):
            s.client.create(plural, {"metadata": {"name": name}})
        status, events = s.watch(plural, timeoutSeconds="1")
        return status, sorted(summary(events)), [e["object"].get("kind") for e in events]
    compare("watch without a resourceVersion: the current objects as ADDED", operation, servers)


def test_watch_initial_events_end_bookmark(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = s.path(MC_GV, "memcacheds")
        s.client.create(plural, memcached("a"))
        status, events = s.watch(plural, sendInitialEvents="true", allowWatchBookmarks="true",
                                 resourceVersionMatch="NotOlderThan", timeoutSeconds="1")
        first_bookmark = next((e for e in events if e["type"] == "BOOKMARK"), None)
        return status, summary(events[:2]), normalise(first_bookmark)
    compare("watch with sendInitialEvents: ADDED, then the initial-events-end BOOKMARK", operation, servers)


def test_watch_bookmarks_allowed(servers: dict[str, Server]) -> None:
    """The real server sends periodic bookmarks about once a minute, too rare for a short test: the
    answers compared leave the periodic ones out; the emulator's (every 0.3 s here) must have the
    shape of the real server's bookmark (compared in the previous test) without the annotation."""
    def operation(s: Server) -> Any:
        plural = s.path(MC_GV, "memcacheds")
        s.client.create(plural, memcached("a"))
        rv = s.client.request("GET", plural)["metadata"]["resourceVersion"]
        status, events = s.watch(plural, resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds="1")
        bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
        for bookmark in bookmarks:
            assert normalise(bookmark) == {"type": "BOOKMARK", "object": {
                "apiVersion": MC_GV, "kind": "Memcached", "metadata": {"resourceVersion": "<set>"}}}, bookmark
            assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(rv)
        if not s.real:
            assert bookmarks, "the emulator sent no bookmark within a second (bookmark_interval=0.3)"
        return status, summary([e for e in events if e["type"] != "BOOKMARK"])
    compare("watch with allowWatchBookmarks: accepted; bookmarks carry only the resourceVersion",
            operation, servers)


def test_watch_invalid_resource_version(servers: dict[str, Server]) -> None:
    compare("watch with a resourceVersion that is not a number",
            lambda s: s.watch(s.path("v1", "configmaps"), resourceVersion="abc", timeoutSeconds="1"), servers)
