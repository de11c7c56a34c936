"""Create / read / namespaces / events / discovery semantics of the emulated API server."""

from __future__ import annotations

import re

import pytest

from devcluster import ApiError, ClusterClient

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
CMS = "/api/v1/namespaces/default/configmaps"


def memcached(name: str = "cache", size: int = 1, **spec: object) -> dict[str, object]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name}, "spec": {"size": size, **spec}}


def test_create_answers_201_with_system_metadata(kube: ClusterClient) -> None:
    status, obj = kube.request_with_status("POST", MC, memcached())
    assert status == 201
    meta = obj["metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert meta["generation"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["namespace"] == "default"  # filled from the URL
    assert int(meta["resourceVersion"]) > 0


def test_generate_name_adds_a_random_suffix(kube: ClusterClient) -> None:
    obj = kube.create(CMS, {"metadata": {"generateName": "cfg-"}, "data": {}})
    assert re.fullmatch(r"cfg-[a-z0-9]{5}", obj["metadata"]["name"])


def test_duplicate_name_is_409_already_exists(kube: ClusterClient) -> None:
    kube.create(MC, memcached())
    with pytest.raises(ApiError) as info:
        kube.create(MC, memcached())
    assert info.value.status == 409
    assert info.value.reason == "AlreadyExists"
    assert info.value.message == 'memcacheds.cache.serverless.xyz "cache" already exists'


def test_missing_object_is_404_with_a_status_body(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.get(f"{MC}/nope")
    assert info.value.status == 404
    assert info.value.body["kind"] == "Status"
    assert info.value.body["reason"] == "NotFound"
    assert info.value.body["details"] == {"name": "nope", "group": "cache.serverless.xyz", "kind": "memcacheds"}
    assert info.value.message == 'memcacheds.cache.serverless.xyz "nope" not found'


def test_namespace_in_body_must_match_the_url(kube: ClusterClient) -> None:
    body = memcached()
    body["metadata"]["namespace"] = "kube-system"  # type: ignore[index]
    with pytest.raises(ApiError) as info:
        kube.create(MC, body)
    assert info.value.status == 400


def test_create_in_a_missing_namespace_is_404(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.create("/api/v1/namespaces/ghost/configmaps", {"metadata": {"name": "x"}})
    assert info.value.status == 404
    assert info.value.message == 'namespaces "ghost" not found'


def test_unknown_resource_is_404_and_wrong_method_is_405(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.get("/apis/example.com/v1/namespaces/default/widgets")
    assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        kube.request("POST", f"{CMS}/some-name", {"metadata": {"name": "x"}})
    assert info.value.status == 405


def test_invalid_name_is_422(kube: ClusterClient) -> None:
    with pytest.raises(ApiError) as info:
        kube.create(CMS, {"metadata": {"name": "Bad_Name"}})
    assert info.value.status == 422
    assert info.value.body["details"]["causes"][0]["field"] == "metadata.name"


def test_namespaces_are_served_and_precreated(kube: ClusterClient) -> None:
    names = {ns["metadata"]["name"] for ns in kube.list("/api/v1/namespaces")}
    assert {"default", "kube-system"} <= names
    created = kube.create("/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    assert created["status"]["phase"] == "Active"
    assert kube.get("/api/v1/namespaces/team-a")["metadata"]["name"] == "team-a"
    kube.create("/api/v1/namespaces/team-a/configmaps", {"metadata": {"name": "c"}})
    kube.delete("/api/v1/namespaces/team-a")
    kube.wait_gone("/api/v1/namespaces/team-a", timeout=2)
    assert not kube.exists("/api/v1/namespaces/team-a/configmaps/c")


def test_events_are_stored_in_both_apis(kube: ClusterClient) -> None:
    kube.create("/api/v1/namespaces/default/events", {
        "metadata": {"generateName": "kopf-event-"}, "type": "Warning", "reason": "InvalidSpec",
        "message": "bad", "involvedObject": {"kind": "Memcached", "name": "cache", "namespace": "default"}})
    kube.create("/apis/events.k8s.io/v1/namespaces/default/events", {
        "metadata": {"name": "e2"}, "type": "Normal", "reason": "Scaled", "note": "to 3",
        "regarding": {"kind": "Memcached", "name": "cache"}})
    core = kube.list("/api/v1/namespaces/default/events", field_selector="reason=InvalidSpec")
    assert [(e["type"], e["reason"]) for e in core] == [("Warning", "InvalidSpec")]
    new = kube.list("/apis/events.k8s.io/v1/namespaces/default/events")
    assert [e["reason"] for e in new] == ["Scaled"]


def test_discovery_lists_crds_with_their_names_and_status_subresource(kube: ClusterClient) -> None:
    groups = {g["name"]: g for g in kube.get("/apis")["groups"]}
    assert groups["cache.serverless.xyz"]["preferredVersion"]["version"] == "v1alpha1"
    resources = {r["name"]: r for r in kube.get("/apis/cache.serverless.xyz/v1alpha1")["resources"]}
    assert resources["memcacheds"]["kind"] == "Memcached"
    assert resources["memcacheds"]["namespaced"] is True
    assert resources["memcacheds"]["shortNames"] == ["mc"]
    assert "memcacheds/status" in resources
    core = {r["name"] for r in kube.get("/api/v1")["resources"]}
    assert {"namespaces", "pods", "services", "events", "configmaps", "secrets"} <= core
    assert kube.get("/version")["major"] == "1"


def test_crd_created_through_the_api_is_served(kube: ClusterClient) -> None:
    kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {"n": {"type": "integer"}}}}}}}]}})
    widgets = "/apis/example.com/v1/namespaces/default/widgets"
    kube.create(widgets, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                          "spec": {"n": 1}})
    assert kube.get(f"{widgets}/w")["kind"] == "Widget"
    with pytest.raises(ApiError) as info:
        kube.create(widgets, {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "v"},
                              "spec": {"n": "one"}})
    assert info.value.status == 422


def test_a_custom_resource_must_name_its_kind(kube: ClusterClient) -> None:
    """Unlike a built-in kind's (taken from the URL), a custom resource's body must carry its kind
    and apiVersion: the real server cannot decode it otherwise (400 before any other check)."""
    with pytest.raises(ApiError) as info:
        kube.create(MC, {"metadata": {"name": "m"}, "spec": {"size": 1}})
    assert info.value.status == 400
    assert info.value.message == (
        "the object provided is unrecognized (must be of type Memcached): Object 'Kind' is missing in "
        """'{"metadata": {"name": "m"}, "spec": {"size": 1}}' ({"metadata": {"name": "m"}, "s ...)""")
    with pytest.raises(ApiError) as info:
        kube.create(MC, {"kind": "Memcached", "metadata": {"name": "m"}, "spec": {"size": 1}})
    assert info.value.message == "the API version in the data () does not match the expected API version " \
        "(cache.serverless.xyz/v1alpha1)"
    assert kube.create(CMS, {"metadata": {"name": "c"}})["kind"] == "ConfigMap"


def test_cluster_wide_and_namespaced_lists(kube: ClusterClient) -> None:
    kube.create("/api/v1/namespaces", {"metadata": {"name": "other"}})
    kube.create(MC, memcached("a"))
    kube.create("/apis/cache.serverless.xyz/v1alpha1/namespaces/other/memcacheds", memcached("b"))
    everywhere = kube.get("/apis/cache.serverless.xyz/v1alpha1/memcacheds")
    assert [o["metadata"]["name"] for o in everywhere["items"]] == ["a", "b"]
    assert everywhere["kind"] == "MemcachedList"
    assert int(everywhere["metadata"]["resourceVersion"]) > 0
    assert [o["metadata"]["name"] for o in kube.list(MC)] == ["a"]


def test_list_pagination_with_limit_and_continue(kube: ClusterClient) -> None:
    for index in range(5):
        kube.create(CMS, {"metadata": {"name": f"c{index}"}})
    first = kube.request("GET", CMS, params={"limit": "2"})
    assert [o["metadata"]["name"] for o in first["items"]] == ["c0", "c1"]
    rest = kube.request("GET", CMS, params={"limit": "10", "continue": first["metadata"]["continue"]})
    assert [o["metadata"]["name"] for o in rest["items"]] == ["c2", "c3", "c4"]
    assert "continue" not in rest["metadata"]
