"""resourceVersion, optimistic concurrency (409), generation and the isolated /status subresource."""

from __future__ import annotations

import pytest

from devcluster import ApiError, ClusterClient

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
MC_TYPE = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached"}


def make(kube: ClusterClient, name: str = "cache", size: int = 1) -> dict:
    return kube.create(MC, {**MC_TYPE, "metadata": {"name": name}, "spec": {"size": size}})


def deployment(name: str = "web", replicas: int = 1) -> dict:
    return {"metadata": {"name": name}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "main", "image": "nginx"}]}}}}


def test_resource_version_grows_on_every_write(kube: ClusterClient) -> None:
    first = make(kube)
    second = kube.patch(f"{MC}/cache", {"spec": {"size": 2}})
    third = kube.patch(f"{MC}/cache", {"metadata": {"labels": {"a": "b"}}})
    versions = [int(o["metadata"]["resourceVersion"]) for o in (first, second, third)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert int(kube.get(MC)["metadata"]["resourceVersion"]) >= versions[-1]


def test_a_no_op_patch_changes_nothing(kube: ClusterClient) -> None:
    first = make(kube)
    same = kube.patch(f"{MC}/cache", {"spec": {"size": 1}})
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]


def test_stale_resource_version_in_a_patch_is_409_conflict(kube: ClusterClient) -> None:
    first = make(kube)
    kube.patch(f"{MC}/cache", {"spec": {"size": 2}})
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/cache", {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
                                   "spec": {"size": 3}})
    assert info.value.status == 409
    assert info.value.reason == "Conflict"
    assert "the object has been modified; please apply your changes to the latest version and try again" \
        in info.value.message
    assert kube.get(f"{MC}/cache")["spec"]["size"] == 2


def test_patch_without_resource_version_applies_unconditionally(kube: ClusterClient) -> None:
    make(kube)
    kube.patch(f"{MC}/cache", {"spec": {"size": 2}})
    assert kube.patch(f"{MC}/cache", {"spec": {"size": 3}})["spec"]["size"] == 3


def test_put_replaces_with_a_precondition(kube: ClusterClient) -> None:
    obj = make(kube)
    obj["spec"]["size"] = 5
    replaced = kube.put(f"{MC}/cache", obj)
    assert replaced["spec"]["size"] == 5
    obj["spec"]["size"] = 6  # still carries the old resourceVersion
    with pytest.raises(ApiError) as info:
        kube.put(f"{MC}/cache", obj)
    assert info.value.status == 409
    del obj["metadata"]["resourceVersion"]
    with pytest.raises(ApiError) as info:  # custom resources need a resourceVersion on update
        kube.put(f"{MC}/cache", obj)
    assert info.value.status == 422


def test_generation_moves_with_the_spec_only(kube: ClusterClient) -> None:
    make(kube)
    assert kube.patch(f"{MC}/cache", {"metadata": {"labels": {"x": "y"}}})["metadata"]["generation"] == 1
    assert kube.patch(f"{MC}/cache/status", {"status": {"phase": "Running"}})["metadata"]["generation"] == 1
    assert kube.patch(f"{MC}/cache", {"spec": {"size": 4}})["metadata"]["generation"] == 2


def test_builtin_generation_follows_spec(kube: ClusterClient) -> None:
    kube.create(DEPLOYMENTS, deployment())
    patched = kube.patch(f"{DEPLOYMENTS}/web", {"spec": {"replicas": 3}})
    assert patched["metadata"]["generation"] == 2


def test_main_resource_writes_ignore_status(kube: ClusterClient) -> None:
    make(kube)
    kube.patch(f"{MC}/cache/status", {"status": {"phase": "Running"}})
    after = kube.patch(f"{MC}/cache", {"spec": {"size": 2}, "status": {"phase": "Error"}})
    assert after["status"] == {"phase": "Running"}
    assert after["spec"]["size"] == 2


def test_status_writes_ignore_spec_and_metadata(kube: ClusterClient) -> None:
    make(kube)
    after = kube.patch(f"{MC}/cache/status", {"spec": {"size": 9}, "metadata": {"labels": {"a": "b"}},
                                              "status": {"phase": "Scaling"}})
    assert after["spec"]["size"] == 1
    assert "labels" not in after["metadata"]
    assert after["status"]["phase"] == "Scaling"
    assert kube.get(f"{MC}/cache/status")["status"]["phase"] == "Scaling"


def test_status_write_honours_a_stale_resource_version(kube: ClusterClient) -> None:
    first = make(kube)
    kube.patch(f"{MC}/cache", {"spec": {"size": 2}})
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/cache/status", {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
                                          "status": {"phase": "Running"}})
    assert info.value.status == 409


def test_create_ignores_status_with_a_status_subresource(kube: ClusterClient) -> None:
    created = kube.create(MC, {**MC_TYPE, "metadata": {"name": "x"}, "spec": {"size": 1},
                               "status": {"phase": "Running"}})
    assert "status" not in created
    created = kube.create(DEPLOYMENTS, {**deployment("d"), "status": {"readyReplicas": 5}})
    assert created.get("status", {}).get("readyReplicas") is None


def test_status_is_validated_against_its_schema(kube: ClusterClient) -> None:
    make(kube)
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/cache/status", {"status": {"phase": "Exploded"}})
    assert info.value.status == 422
    assert info.value.body["details"]["causes"][0]["field"] == "status.phase"
    with pytest.raises(ApiError) as info:
        kube.patch(f"{MC}/cache/status", {"status": {"lastScaleTime": "yesterday"}})
    assert info.value.status == 422
    kube.patch(f"{MC}/cache/status", {"status": {"lastScaleTime": "2024-05-01T10:00:00Z"}})
