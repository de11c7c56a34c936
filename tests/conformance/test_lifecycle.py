"""Deletion: finalizers and deletionTimestamp, and owner-reference garbage collection (the real one
is kube-controller-manager's garbage collector, which takes a moment: the waits are bounded)."""

from __future__ import annotations

from typing import Any

from tests.conformance.harness import Server, attempt, compare, pick

MC_GV = "cache.serverless.xyz/v1alpha1"


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def owned(name: str, *owners: dict[str, Any], kind: str = "ConfigMap") -> dict[str, Any]:
    refs = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
             "uid": owner["metadata"]["uid"]} for owner in owners]
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "ownerReferences": refs}}


def exists(s: Server, path: str) -> bool:
    return s.client.exists(path)


def test_finalizer_holds_deletion(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        path = s.path(MC_GV, "memcacheds", "m")
        body = {"apiVersion": MC_GV, "kind": "Memcached",
                "metadata": {"name": "m", "finalizers": ["example.com/hold"]}, "spec": {"size": 1}}
        s.client.create(s.path(MC_GV, "memcacheds"), body)
        deleted = s.client.delete(path)
        seen = s.client.get(path)
        again = s.client.delete(path)
        new_finalizer = attempt(lambda: s.client.patch(path, {"metadata": {
            "finalizers": ["example.com/hold", "example.com/late"]}}))
        spec_change = attempt(lambda: s.client.patch(path, {"spec": {"size": 3}}),
                              shape=lambda obj: pick(obj, "spec.size", "metadata.generation"))
        released = attempt(lambda: s.client.patch(path, {"metadata": {"finalizers": None}}),
                           shape=lambda obj: pick(obj, "metadata.finalizers", "metadata.deletionTimestamp"))
        fields = ("metadata.finalizers", "metadata.deletionTimestamp", "metadata.deletionGracePeriodSeconds",
                  "metadata.generation")
        return (pick(deleted, *fields), pick(seen, *fields), pick(again, *fields), new_finalizer, spec_change,
                released, exists(s, path))
    compare("delete with a finalizer: kept with deletionTimestamp; no new finalizers; removing it deletes",
            operation, servers)


def test_finalizer_on_builtin_kind(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        path = s.path("v1", "configmaps", "a")
        body = configmap("a")
        body["metadata"]["finalizers"] = ["example.com/hold"]
        s.client.create(s.path("v1", "configmaps"), body)
        deleted = s.client.delete(path)
        fields = ("metadata.finalizers", "metadata.deletionTimestamp", "metadata.deletionGracePeriodSeconds",
                  "metadata.generation")
        released = attempt(lambda: s.client.patch(path, {"metadata": {"finalizers": []}}),
                           shape=lambda obj: pick(obj, "metadata.finalizers", "metadata.deletionTimestamp"))
        return pick(deleted, *fields), released, exists(s, path)
    compare("delete a ConfigMap with a finalizer, then empty the finalizers", operation, servers)


def test_garbage_collection_background(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        owner = s.client.create(s.path("v1", "configmaps"), configmap("owner"))
        s.client.create(s.path("v1", "configmaps"), owned("child-cm", owner))
        s.client.create(s.path("v1", "secrets"), owned("child-secret", owner, kind="Secret"))
        s.client.delete(s.path("v1", "configmaps", "owner"), propagation_policy="Background")
        paths = [s.path("v1", "configmaps", "owner"), s.path("v1", "configmaps", "child-cm"),
                 s.path("v1", "secrets", "child-secret")]
        s.wait(lambda: not any(exists(s, p) for p in paths), s.settle_timeout)
        return [exists(s, p) for p in paths]
    compare("garbage collection: delete the owner (Background) and its dependents go", operation, servers)


def test_garbage_collection_orphan(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        owner = s.client.create(s.path("v1", "configmaps"), configmap("owner"))
        s.client.create(s.path("v1", "configmaps"), owned("child", owner))
        deleted = s.client.delete(s.path("v1", "configmaps", "owner"), propagation_policy="Orphan")
        s.wait(lambda: not exists(s, s.path("v1", "configmaps", "owner")), s.settle_timeout)
        child = s.client.get(s.path("v1", "configmaps", "child"))
        return exists(s, s.path("v1", "configmaps", "owner")), pick(child, "metadata.ownerReferences"), \
            deleted.get("kind")
    compare("garbage collection: Orphan keeps the dependents and drops their owner references", operation,
            servers)


def test_garbage_collection_foreground(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        owner = s.client.create(s.path("v1", "configmaps"), configmap("owner"))
        child = owned("child", owner)
        child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = True
        s.client.create(s.path("v1", "configmaps"), child)
        deleted = s.client.delete(s.path("v1", "configmaps", "owner"), propagation_policy="Foreground")
        paths = [s.path("v1", "configmaps", "owner"), s.path("v1", "configmaps", "child")]
        s.wait(lambda: not any(exists(s, p) for p in paths), s.settle_timeout)
        return pick(deleted, "metadata.finalizers", "metadata.deletionTimestamp"), [exists(s, p) for p in paths]
    compare("garbage collection: Foreground marks the owner, deletes the dependents, then the owner",
            operation, servers)


def test_garbage_collection_with_another_owner(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        first = s.client.create(s.path("v1", "configmaps"), configmap("first"))
        second = s.client.create(s.path("v1", "configmaps"), configmap("second"))
        s.client.create(s.path("v1", "configmaps"), owned("child", first, second))
        s.client.delete(s.path("v1", "configmaps", "first"))

        def one_owner_left() -> bool:
            child = s.client.get(s.path("v1", "configmaps", "child"))
            return len(child["metadata"].get("ownerReferences") or []) == 1
        s.wait(one_owner_left, s.settle_timeout)
        child = s.client.get(s.path("v1", "configmaps", "child"))
        return [ref["name"] for ref in child["metadata"].get("ownerReferences") or []]
    compare("garbage collection: a dependent with another live owner stays, the dangling reference goes",
            operation, servers)


def test_custom_resource_owns_builtin(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        owner = s.client.create(s.path(MC_GV, "memcacheds"), {
            "apiVersion": MC_GV, "kind": "Memcached", "metadata": {"name": "m"}, "spec": {"size": 1}})
        s.client.create(s.path("v1", "configmaps"), owned("child", owner))
        s.client.delete(s.path(MC_GV, "memcacheds", "m"))
        child = s.path("v1", "configmaps", "child")
        s.wait(lambda: not exists(s, child), s.settle_timeout)
        return exists(s, child)
    compare("garbage collection: a custom resource's ConfigMap goes with it", operation, servers)
