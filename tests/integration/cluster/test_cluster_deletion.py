"""Finalizers, deletion propagation and owner-reference garbage collection."""

from __future__ import annotations

from typing import Any

from devcluster import ClusterClient

MC = "/apis/cache.serverless.xyz/v1alpha1/namespaces/default/memcacheds"
CMS = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"


def memcached(name: str, *finalizers: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"finalizers": list(finalizers)} if finalizers else {})}
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "metadata": meta,
            "spec": {"size": 1}}


def owned_by(owner: dict[str, Any], name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}}


def test_finalizers_block_deletion_until_released(kube: ClusterClient) -> None:
    kube.create(MC, memcached("c", "example.com/cleanup"))
    deleting = kube.delete(f"{MC}/c")
    assert deleting["metadata"]["deletionTimestamp"]
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 0
    assert kube.get(f"{MC}/c")["metadata"]["finalizers"] == ["example.com/cleanup"]
    again = kube.delete(f"{MC}/c")  # idempotent while deleting
    assert again["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    kube.patch(f"{MC}/c", {"metadata": {"finalizers": None}})
    assert not kube.exists(f"{MC}/c")


def test_no_new_finalizers_while_deleting(kube: ClusterClient) -> None:
    kube.create(MC, memcached("c", "a/b"))
    kube.delete(f"{MC}/c")
    try:
        kube.patch(f"{MC}/c", {"metadata": {"finalizers": ["a/b", "c/d"]}})
    except Exception as exc:
        assert "no new finalizers" in str(exc)
    else:
        raise AssertionError("adding a finalizer to a deleting object must fail")


def test_delete_without_finalizers_removes_it_and_answers_a_status(kube: ClusterClient) -> None:
    """As kube-apiserver: a Status naming the deleted object (``details.kind`` is the plural), for
    ConfigMaps and custom resources; the object itself only for the kinds whose storage returns it."""
    created = kube.create(CMS, {"metadata": {"name": "c"}, "data": {"k": "v"}})
    deleted = kube.delete(f"{CMS}/c")
    assert deleted == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                       "details": {"name": "c", "kind": "configmaps", "uid": created["metadata"]["uid"]}}
    assert not kube.exists(f"{CMS}/c")
    custom = kube.create(MC, memcached("m"))
    assert kube.delete(f"{MC}/m")["details"] == {"name": "m", "group": "cache.serverless.xyz", "kind": "memcacheds",
                                                 "uid": custom["metadata"]["uid"]}
    kube.create("/api/v1/namespaces/default/services", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
    assert kube.delete("/api/v1/namespaces/default/services/s")["kind"] == "Service"


def test_garbage_collection_is_recursive_and_respects_finalizers(kube: ClusterClient) -> None:
    owner = kube.create(MC, memcached("owner"))
    child = kube.create(CMS, owned_by(owner, "child"))
    grandchild_body = owned_by(child, "grandchild")
    grandchild = kube.create(CMS, grandchild_body)
    held_body = owned_by(owner, "held")
    held_body["metadata"]["finalizers"] = ["example.com/keep"]
    kube.create(CMS, held_body)
    kube.delete(f"{MC}/owner")
    assert not kube.exists(f"{CMS}/child")
    assert not kube.exists(f"{CMS}/{grandchild['metadata']['name']}")
    held = kube.get(f"{CMS}/held")
    assert held["metadata"]["deletionTimestamp"]
    kube.patch(f"{CMS}/held", {"metadata": {"finalizers": []}})
    assert not kube.exists(f"{CMS}/held")


def test_dependent_with_another_live_owner_survives(kube: ClusterClient) -> None:
    a = kube.create(CMS, {"metadata": {"name": "a"}})
    b = kube.create(CMS, {"metadata": {"name": "b"}})
    body = owned_by(a, "shared")
    body["metadata"]["ownerReferences"] += owned_by(b, "x")["metadata"]["ownerReferences"]
    kube.create(CMS, body)
    kube.delete(f"{CMS}/a")
    shared = kube.get(f"{CMS}/shared")
    assert [o["name"] for o in shared["metadata"]["ownerReferences"]] == ["b"]
    kube.delete(f"{CMS}/b")
    assert not kube.exists(f"{CMS}/shared")


def test_orphan_propagation_keeps_dependents(kube: ClusterClient) -> None:
    owner = kube.create(CMS, {"metadata": {"name": "owner"}})
    kube.create(CMS, owned_by(owner, "child"))
    kube.delete(f"{CMS}/owner", propagation_policy="Orphan")
    child = kube.get(f"{CMS}/child")
    assert "ownerReferences" not in child["metadata"]


def test_foreground_propagation_deletes_dependents_first(kube: ClusterClient) -> None:
    owner = kube.create(CMS, {"metadata": {"name": "owner"}})
    child_body = owned_by(owner, "child")
    child_body["metadata"]["finalizers"] = ["example.com/keep"]
    kube.create(CMS, child_body)
    deleting = kube.delete(f"{CMS}/owner", propagation_policy="Foreground")
    assert "foregroundDeletion" in deleting["metadata"]["finalizers"]
    assert kube.exists(f"{CMS}/owner")
    kube.patch(f"{CMS}/child", {"metadata": {"finalizers": []}})
    assert not kube.exists(f"{CMS}/child")
    assert not kube.exists(f"{CMS}/owner")


def test_jobs_orphan_their_pods_by_default_like_the_real_api(kube: ClusterClient) -> None:
    job = kube.create(JOBS, {"metadata": {"name": "j"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})
    kube.create("/api/v1/namespaces/default/pods", {**owned_by(job, "p"), "spec": {
        "containers": [{"name": "c", "image": "busybox"}]}})
    kube.delete(f"{JOBS}/j")
    assert kube.exists("/api/v1/namespaces/default/pods/p")
    job2 = kube.create(JOBS, {"metadata": {"name": "j2"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})
    kube.create("/api/v1/namespaces/default/pods", {**owned_by(job2, "p2"), "spec": {
        "containers": [{"name": "c", "image": "busybox"}]}})
    kube.delete(f"{JOBS}/j2", propagation_policy="Background")
    assert not kube.exists("/api/v1/namespaces/default/pods/p2")


def test_delete_preconditions(kube: ClusterClient) -> None:
    obj = kube.create(CMS, {"metadata": {"name": "c"}})
    try:
        kube.request("DELETE", f"{CMS}/c", {"preconditions": {"uid": "not-the-uid"}})
    except Exception as exc:
        assert "Precondition failed" in str(exc)
    else:
        raise AssertionError("a wrong uid precondition must fail")
    kube.request("DELETE", f"{CMS}/c", {"preconditions": {"uid": obj["metadata"]["uid"]}})
    assert not kube.exists(f"{CMS}/c")
