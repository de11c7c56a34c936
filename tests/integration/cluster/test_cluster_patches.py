"""PATCH flavours: JSON merge (RFC 7386), JSON patch (RFC 6902) and strategic merge (approximated)."""

from __future__ import annotations

import pytest

from devcluster import ApiError, ClusterClient
from devcluster.patches import json_patch, merge_patch, strategic_merge_patch

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
MEMCACHED = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "metadata": {"name": "c"},
             "spec": {"size": 1}}


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None, "d": 3}, "l": [3]}) == \
        {"a": {"c": 2, "d": 3}, "l": [3]}
    assert merge_patch({"a": 1}, {"a": {"b": None}}) == {"a": {}}


def test_json_patch_rfc6902() -> None:
    doc = {"metadata": {"finalizers": ["a"]}, "spec": {"x": 1}}
    result = json_patch(doc, [
        {"op": "test", "path": "/spec/x", "value": 1},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
        {"op": "replace", "path": "/spec/x", "value": 2},
        {"op": "copy", "from": "/spec/x", "path": "/spec/y"},
        {"op": "move", "from": "/spec/y", "path": "/spec/z"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "1"}},
        {"op": "remove", "path": "/metadata/annotations/a~0b~1c"},
    ])
    assert result == {"metadata": {"finalizers": ["b"], "annotations": {}}, "spec": {"x": 2, "z": 2}}
    assert doc == {"metadata": {"finalizers": ["a"]}, "spec": {"x": 1}}  # untouched


def test_strategic_merge_by_keys() -> None:
    original = {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "a", "env": [{"name": "X", "value": "1"}],
         "ports": [{"containerPort": 80, "name": "http"}]},
        {"name": "sidecar", "image": "s"}]}}},
        "metadata": {"finalizers": ["a"]}}
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "b", "env": [{"name": "Y", "value": "2"}],
         "ports": [{"containerPort": 80, "protocol": "TCP"}]},
        {"name": "sidecar", "$patch": "delete"}]}}},
        "metadata": {"finalizers": ["b"]}}
    result = strategic_merge_patch(original, patch)
    containers = result["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main"]
    assert containers[0]["image"] == "b"
    # Merged lists in apimachinery's order: the patch's new items before the live ones they follow.
    assert containers[0]["env"] == [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}]
    assert containers[0]["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}]
    assert result["metadata"]["finalizers"] == ["b", "a"]
    conditions = strategic_merge_patch({"status": {"conditions": [{"type": "A", "status": "False"}]}},
                                       {"status": {"conditions": [{"type": "A", "status": "True"},
                                                                  {"type": "B", "status": "True"}]}})
    assert conditions["status"]["conditions"] == [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]
    # A live item stays before a patched one it preceded; a new one goes before the live ones after it.
    containers = strategic_merge_patch({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
                                       {"containers": [{"name": "b", "image": "2"}, {"name": "new"}]})["containers"]
    assert containers == [{"name": "a"}, {"name": "b", "image": "2"}, {"name": "new"}, {"name": "c"}]
    assert strategic_merge_patch({"metadata": {"finalizers": ["a", "b", "c"]}},
                                 {"metadata": {"finalizers": ["c", "d"]}})["metadata"]["finalizers"] == \
        ["a", "b", "c", "d"]


def test_json_patch_through_the_api_with_a_failing_test_is_422(kube: ClusterClient) -> None:
    created = kube.create(MC, MEMCACHED)
    rv = created["metadata"]["resourceVersion"]
    patched = kube.patch(f"{MC}/c", [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]},
    ], content_type="application/json-patch+json")
    assert patched["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/c", [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                               {"op": "remove", "path": "/metadata/finalizers"}],
                   content_type="application/json-patch+json")
    assert info.value.status == 422


def test_strategic_merge_through_the_api(kube: ClusterClient) -> None:
    kube.create(DEPLOYMENTS, {"metadata": {"name": "d"}, "spec": {"replicas": 1, "template": {"spec": {
        "containers": [{"name": "memcached", "image": "memcached:1.6"},
                       {"name": "exporter", "image": "exporter:1"}]}}}})
    patched = kube.patch(f"{DEPLOYMENTS}/d", {"spec": {"template": {"spec": {"containers": [
        {"name": "memcached", "image": "memcached:1.7"}]}}}},
        content_type="application/strategic-merge-patch+json")
    assert [(c["name"], c["image"]) for c in patched["spec"]["template"]["spec"]["containers"]] == \
        [("memcached", "memcached:1.7"), ("exporter", "exporter:1")]
    merged = kube.patch(f"{DEPLOYMENTS}/d", {"spec": {"template": {"spec": {"containers": [
        {"name": "memcached", "image": "memcached:1.8"}]}}}})
    assert len(merged["spec"]["template"]["spec"]["containers"]) == 1  # a merge patch replaces lists


def test_unsupported_patch_types_are_415(kube: ClusterClient) -> None:
    kube.create(MC, MEMCACHED)
    for content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml", "text/plain"):
        with pytest.raises(ApiError) as info:
            kube.patch(f"{MC}/c", {"spec": {"size": 2}}, content_type=content_type)
        assert info.value.status == 415, content_type
