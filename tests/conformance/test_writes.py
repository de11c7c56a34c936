"""Updates and patches: 409 on a stale resourceVersion, the three patch types, /status, generation."""

from __future__ import annotations

from typing import Any

from tests.conformance.harness import Server, attempt, compare, normalise, pick

MC_GV = "cache.serverless.xyz/v1alpha1"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def memcached(name: str, size: int = 1) -> dict[str, Any]:
    return {"apiVersion": MC_GV, "kind": "Memcached", "metadata": {"name": name}, "spec": {"size": size}}


def deployment(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}}


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers as written (the real server defaults imagePullPolicy and more on each)."""
    return [pick(c, "name", "image", "env", "args") for c in obj["spec"]["template"]["spec"]["containers"]]


# ---- 409 on a stale resourceVersion -------------------------------------------------------------------

def test_put_with_stale_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("v1", "configmaps"), configmap("a", k="1"))
        s.client.patch(s.path("v1", "configmaps", "a"), {"data": {"k": "2"}})
        stale = {**created, "data": {"k": "3"}}
        return attempt(lambda: s.client.put(s.path("v1", "configmaps", "a"), stale), message=True)
    compare("PUT with a stale resourceVersion: 409 Conflict", operation, servers)


def test_put_custom_with_stale_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        s.client.patch(s.path(MC_GV, "memcacheds", "m"), {"spec": {"size": 2}})
        stale = {**created, "spec": {**created["spec"], "size": 3}}
        return attempt(lambda: s.client.put(s.path(MC_GV, "memcacheds", "m"), stale), message=True)
    compare("PUT of a custom resource with a stale resourceVersion: 409 Conflict", operation, servers)


def test_put_with_current_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        updated = s.client.put(s.path(MC_GV, "memcacheds", "m"), {**created, "spec": {"size": 4}})
        moved = int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
        return moved, normalise(updated)
    compare("PUT with the current resourceVersion: a new version, defaults, generation 2", operation, servers)


def test_merge_patch_with_stale_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("v1", "configmaps"), configmap("a", k="1"))
        stale_rv = created["metadata"]["resourceVersion"]
        s.client.patch(s.path("v1", "configmaps", "a"), {"data": {"k": "2"}})
        stale = attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"), {
            "metadata": {"resourceVersion": stale_rv}, "data": {"k": "3"}}), message=True)
        current_rv = s.client.get(s.path("v1", "configmaps", "a"))["metadata"]["resourceVersion"]
        current = attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"), {
            "metadata": {"resourceVersion": current_rv}, "data": {"k": "4"}}))
        return stale, current
    compare("merge patch carrying a stale resourceVersion: 409; the current one: 200", operation, servers)


def test_merge_patch_custom_with_stale_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        s.client.patch(s.path(MC_GV, "memcacheds", "m"), {"spec": {"size": 2}})
        return attempt(lambda: s.client.patch(s.path(MC_GV, "memcacheds", "m"), {
            "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"size": 3}}),
            message=True)
    compare("merge patch of a custom resource carrying a stale resourceVersion: 409", operation, servers)


def test_json_patch_pinned_to_stale_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("v1", "configmaps"), configmap("a", k="1"))
        s.client.patch(s.path("v1", "configmaps", "a"), {"data": {"k": "2"}})
        rv = created["metadata"]["resourceVersion"]
        test_op = attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"), [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/data/k", "value": "3"}], content_type=JSON_PATCH))
        replace_op = attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"), [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/data/k", "value": "3"}], content_type=JSON_PATCH))
        return test_op, replace_op
    compare("JSON patch pinned to a stale resourceVersion (test op; replace op)", operation, servers)


def test_unconditional_patch(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "configmaps"), configmap("a", k="1", gone="x"))
        return attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"),
                                              {"data": {"k": "2", "gone": None, "new": "n"}}))
    compare("merge patch without resourceVersion: set, delete (null) and add keys", operation, servers)


# ---- the patch types -------------------------------------------------------------------------------

def test_json_patch_operations(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        return attempt(lambda: s.client.patch(s.path(MC_GV, "memcacheds", "m"), [
            {"op": "test", "path": "/spec/size", "value": 1},
            {"op": "replace", "path": "/spec/size", "value": 5},
            {"op": "add", "path": "/spec/maxSize", "value": 9},
            {"op": "remove", "path": "/spec/coldStartBuffer"},
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
            {"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/c"},
            {"op": "move", "from": "/metadata/labels/a", "path": "/metadata/labels/d"},
        ], content_type=JSON_PATCH))
    compare("JSON patch: test, replace, add, remove, copy, move (removed default comes back)", operation, servers)


def test_json_patch_failures(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        path = s.path(MC_GV, "memcacheds", "m")
        failed_test = attempt(lambda: s.client.patch(path, [{"op": "test", "path": "/spec/size", "value": 7}],
                                                     content_type=JSON_PATCH))
        missing = attempt(lambda: s.client.patch(path, [{"op": "remove", "path": "/spec/nothing"}],
                                                 content_type=JSON_PATCH))
        not_a_list = attempt(lambda: s.client.patch(path, {"op": "remove"}, content_type=JSON_PATCH))
        null_test = attempt(lambda: s.client.patch(path, [
            {"op": "test", "path": "/spec/nothing", "value": None},
            {"op": "replace", "path": "/spec/size", "value": 2}], content_type=JSON_PATCH),
            shape=lambda obj: obj["spec"]["size"])
        return failed_test, missing, not_a_list, null_test
    compare("JSON patch failures: a failing test, removing a missing path, not a list; test of null", operation,
            servers)


def test_strategic_merge_of_containers_by_name(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("apps/v1", "deployments"), deployment("d", [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "side:1"}]))
        patched = s.client.patch(s.path("apps/v1", "deployments", "d"), {"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "3"}]},
                           {"name": "extra", "image": "extra:1"}]}}}}, content_type=STRATEGIC)
        deleted = s.client.patch(s.path("apps/v1", "deployments", "d"), {"spec": {"template": {"spec": {
            "containers": [{"name": "sidecar", "$patch": "delete"}]}}}}, content_type=STRATEGIC)
        return containers_of(patched), containers_of(deleted), patched["metadata"].get("generation")
    compare("strategic merge patch of a Deployment: containers and env merged by name, $patch: delete",
            operation, servers)


def test_strategic_merge_replace_directive(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("apps/v1", "deployments"), deployment("d", [
            {"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "side:1"}]))
        patched = s.client.patch(s.path("apps/v1", "deployments", "d"), {"spec": {"template": {"spec": {
            "containers": [{"name": "only", "image": "only:1"}, {"$patch": "replace"}]}}}}, content_type=STRATEGIC)
        return containers_of(patched)
    compare("strategic merge patch with $patch: replace on the containers list", operation, servers)


def test_merge_patch_replaces_lists(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("apps/v1", "deployments"), deployment("d", [
            {"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "side:1"}]))
        patched = s.client.patch(s.path("apps/v1", "deployments", "d"), {"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "app:2"}]}}}})
        return containers_of(patched)
    compare("merge patch of a Deployment's containers replaces the whole list", operation, servers)


def test_strategic_merge_of_metadata(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = configmap("a")
        created["metadata"].update(labels={"x": "1", "y": "2"}, finalizers=["example.com/one"])
        s.client.create(s.path("v1", "configmaps"), created)
        patched = s.client.patch(s.path("v1", "configmaps", "a"), {"metadata": {
            "labels": {"y": None, "z": "3"}, "finalizers": ["example.com/two"]}}, content_type=STRATEGIC)
        result = pick(patched, "metadata.labels", "metadata.finalizers")
        s.client.patch(s.path("v1", "configmaps", "a"), {"metadata": {"finalizers": None}})
        return result
    compare("strategic merge patch of labels and finalizers", operation, servers)


# ---- /status and generation ---------------------------------------------------------------------------

def test_status_subresource_isolation(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        path = s.path(MC_GV, "memcacheds", "m")
        with_status = {**memcached("m"), "status": {"phase": "Running"}}
        created = s.client.create(s.path(MC_GV, "memcacheds"), with_status)
        main = s.client.patch(path, {"spec": {"size": 2}, "status": {"phase": "Error"}})
        status = s.client.patch(f"{path}/status", {"spec": {"size": 9}, "status": {"phase": "Scaling"}})
        put_status = s.client.put(f"{path}/status", {**status, "status": {"phase": "Running", "replicas": 1}})
        return [pick(obj, "spec", "status", "metadata.generation") for obj in (created, main, status, put_status)]
    compare("status subresource: status ignored on create and main writes, spec ignored on /status",
            operation, servers)


def test_generation_of_builtin_kinds(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("apps/v1", "deployments"), deployment("d", [{"name": "a", "image": "a"}]))
        labelled = s.client.patch(s.path("apps/v1", "deployments", "d"), {"metadata": {"labels": {"x": "y"}}})
        scaled = s.client.patch(s.path("apps/v1", "deployments", "d"), {"spec": {"replicas": 0, "paused": True}})
        cm = s.client.create(s.path("v1", "configmaps"), configmap("c"))
        return ([obj["metadata"].get("generation") for obj in (created, labelled, scaled)],
                cm["metadata"].get("generation"))
    compare("generation: 1 on create, unchanged by metadata, +1 by spec; none on a ConfigMap", operation, servers)


def test_noop_write_keeps_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("v1", "configmaps"), configmap("a", k="1"))
        patched = s.client.patch(s.path("v1", "configmaps", "a"), {"data": {"k": "1"}})
        return patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    compare("a patch that changes nothing keeps the resourceVersion", operation, servers)
