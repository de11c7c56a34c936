"""Status codes, reasons and messages of failed requests, and of the plain reads and writes."""

from __future__ import annotations

from typing import Any

from tests.conformance.harness import Server, attempt, compare, normalise

MC_GV = "cache.serverless.xyz/v1alpha1"


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def memcached(name: str, size: int = 1) -> dict[str, Any]:
    return {"apiVersion": f"{MC_GV}", "kind": "Memcached", "metadata": {"name": name}, "spec": {"size": size}}


def test_get_missing_object(servers: dict[str, Server]) -> None:
    compare("get a missing ConfigMap: 404 NotFound",
            lambda s: attempt(lambda: s.client.get(s.path("v1", "configmaps", "nope")), message=True), servers)


def test_get_missing_custom_object(servers: dict[str, Server]) -> None:
    compare("get a missing custom resource: 404 NotFound",
            lambda s: attempt(lambda: s.client.get(s.path(MC_GV, "memcacheds", "nope")), message=True), servers)


def test_unknown_resource(servers: dict[str, Server]) -> None:
    compare("get an unknown resource type: 404 NotFound",
            lambda s: attempt(lambda: s.client.get(s.path("v1", "gizmos", "x"))), servers)


def test_create_then_duplicate(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        first = attempt(lambda: s.client.request_with_status("POST", s.path("v1", "configmaps"),
                                                             configmap("dup", a="1")))
        second = attempt(lambda: s.client.create(s.path("v1", "configmaps"), configmap("dup")), message=True)
        return first, second
    compare("create (201) then create again: 409 AlreadyExists", operation, servers)


def test_create_custom_then_duplicate(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        first = attempt(lambda: s.client.request_with_status("POST", s.path(MC_GV, "memcacheds"),
                                                             memcached("dup")))
        second = attempt(lambda: s.client.create(s.path(MC_GV, "memcacheds"), memcached("dup")), message=True)
        return first, second
    compare("create a custom resource (201, defaults, generation 1) then again: 409", operation, servers)


def test_invalid_name(servers: dict[str, Server]) -> None:
    compare("create with an invalid name: 422 Invalid",
            lambda s: attempt(lambda: s.client.create(s.path("v1", "configmaps"), configmap("Bad_Name")),
                              message=True), servers)


def test_missing_name(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = configmap("x")
        del body["metadata"]["name"]
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body))
    compare("create without a name: 422 Invalid", operation, servers)


def test_generate_name(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = {"metadata": {"generateName": "gen-"}, "data": {}}
        created = s.client.create(s.path("v1", "configmaps"), body)
        name = created["metadata"]["name"]
        return name.startswith("gen-"), len(name), normalise({**created, "metadata": {
            k: v for k, v in created["metadata"].items() if k != "name"}})
    compare("create with generateName", operation, servers)


def test_custom_resource_without_kind(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = {"metadata": {"name": "m"}, "spec": {"size": 1}}
        return attempt(lambda: s.client.create(s.path(MC_GV, "memcacheds"), body), message=True)
    compare("create a custom resource without apiVersion and kind", operation, servers)


def test_custom_resource_without_api_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        plural = s.path(MC_GV, "memcacheds")
        without_version = {"kind": "Memcached", "metadata": {"name": "m"}, "spec": {"size": 1}}
        without_kind = {"apiVersion": MC_GV, "metadata": {"name": "m"}, "spec": {"size": 1}}
        s.client.create(plural, memcached("m"))
        put = {"metadata": {"name": "m", "resourceVersion": "1"}, "spec": {"size": 2}}  # decoding comes first
        return (attempt(lambda: s.client.create(plural, without_version), message=True),
                attempt(lambda: s.client.create(plural, without_kind), message=True),
                attempt(lambda: s.client.put(f"{plural}/m", put), message=True),
                attempt(lambda: s.client.put(f"{plural}/absent", {**put, "metadata": {"name": "absent"}}),
                        message=True))
    compare("a custom resource's POST or PUT without kind or apiVersion: 400, before any other check",
            operation, servers)


def test_builtin_without_kind(servers: dict[str, Server]) -> None:
    compare("create a ConfigMap without apiVersion and kind (taken from the URL)",
            lambda s: attempt(lambda: s.client.create(s.path("v1", "configmaps"), {"metadata": {"name": "a"}})),
            servers)


def test_namespace_mismatch(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = configmap("x")
        body["metadata"]["namespace"] = "elsewhere"
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body), message=True)
    compare("create with another namespace in the body: 400 BadRequest", operation, servers)


def test_missing_namespace(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        path = s.path("v1", "configmaps").replace(s.namespace, "no-such-namespace")
        return attempt(lambda: s.client.create(path, configmap("x")), message=True)
    compare("create in a missing namespace: 404 NotFound", operation, servers)


def test_kind_mismatch(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = {**configmap("x"), "kind": "Secret"}
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body))
    compare("create with another kind in the body: 400 BadRequest", operation, servers)


def test_create_with_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = configmap("x")
        body["metadata"]["resourceVersion"] = "5"
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body), message=True)
    compare("create with a resourceVersion", operation, servers)


def test_put_name_mismatch(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        created = s.client.create(s.path("v1", "configmaps"), configmap("a"))
        body = {**created, "metadata": {**created["metadata"], "name": "b"}}
        return attempt(lambda: s.client.put(s.path("v1", "configmaps", "a"), body))
    compare("PUT with another name in the body: 400 BadRequest", operation, servers)


def test_put_without_resource_version(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "configmaps"), configmap("a", k="1"))
        s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        builtin = attempt(lambda: s.client.put(s.path("v1", "configmaps", "a"), configmap("a", k="2")))
        custom = attempt(lambda: s.client.put(s.path(MC_GV, "memcacheds", "m"), memcached("m", 2)))
        return builtin, custom
    compare("PUT without resourceVersion: unconditional for a ConfigMap, 422 for a custom resource",
            operation, servers)


def test_put_missing(servers: dict[str, Server]) -> None:
    compare("PUT of a missing object: 404 NotFound",
            lambda s: attempt(lambda: s.client.put(s.path("v1", "configmaps", "nope"), configmap("nope"))),
            servers)


def test_patch_missing(servers: dict[str, Server]) -> None:
    compare("merge patch of a missing object: 404 NotFound",
            lambda s: attempt(lambda: s.client.patch(s.path("v1", "configmaps", "nope"), {"data": {"a": "1"}})),
            servers)


def test_delete_missing(servers: dict[str, Server]) -> None:
    compare("delete a missing object: 404 NotFound",
            lambda s: attempt(lambda: s.client.delete(s.path("v1", "configmaps", "nope")), message=True), servers)


def test_delete_answer(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        cm = s.client.create(s.path("v1", "configmaps"), configmap("a"))
        mc = s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))

        def naming(created: dict[str, Any]) -> Any:
            return lambda answer: (normalise(answer),
                                   (answer.get("details") or {}).get("uid") == created["metadata"]["uid"])
        return (attempt(lambda: s.client.delete(s.path("v1", "configmaps", "a")), shape=naming(cm)),
                attempt(lambda: s.client.delete(s.path(MC_GV, "memcacheds", "m")), shape=naming(mc)))
    compare("delete without finalizers: the answer (a Status or the object)", operation, servers)


def test_delete_answer_of_other_kinds(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "secrets"), {"metadata": {"name": "s"}})
        s.client.create(s.path("v1", "services"), {"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})
        held = configmap("held")
        held["metadata"]["finalizers"] = ["example.com/hold"]
        s.client.create(s.path("v1", "configmaps"), held)
        s.client.create(s.path("v1", "configmaps"), configmap("free"))
        dry = {"dryRun": "All"}
        answers = [s.client.request("DELETE", s.path("v1", "secrets", "s")),
                   s.client.request("DELETE", s.path("v1", "services", "svc")),
                   s.client.request("DELETE", s.path("v1", "configmaps", "free"), params=dry),
                   s.client.request("DELETE", s.path("v1", "configmaps", "held"), params=dry)]
        summary = [(a.get("kind"), a.get("status") if a.get("kind") == "Status" else None,
                    bool((a.get("metadata") or {}).get("deletionTimestamp"))) for a in answers]
        s.client.patch(s.path("v1", "configmaps", "held"), {"metadata": {"finalizers": None}})
        return summary, s.client.exists(s.path("v1", "configmaps", "free"))
    compare("delete: a Status for a Secret, the object for a Service; dry runs answer as a delete would",
            operation, servers)


def test_delete_precondition(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "configmaps"), configmap("a"))
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}
        return attempt(lambda: s.client.request("DELETE", s.path("v1", "configmaps", "a"), body))
    compare("delete with a failing uid precondition: 409 Conflict", operation, servers)


def test_strategic_merge_on_custom_resource(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path(MC_GV, "memcacheds"), memcached("m"))
        return attempt(lambda: s.client.patch(s.path(MC_GV, "memcacheds", "m"), {"spec": {"size": 2}},
                                              content_type="application/strategic-merge-patch+json"))
    compare("strategic merge patch of a custom resource: 415 UnsupportedMediaType", operation, servers)


def test_patch_unknown_content_type(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        s.client.create(s.path("v1", "configmaps"), configmap("a"))
        return attempt(lambda: s.client.patch(s.path("v1", "configmaps", "a"), {"data": {}},
                                              content_type="application/json"))
    compare("PATCH with a plain JSON content type: 415 UnsupportedMediaType", operation, servers)


def test_bad_field_validation(servers: dict[str, Server]) -> None:
    compare("create with fieldValidation=Bogus: 400 BadRequest",
            lambda s: attempt(lambda: s.client.create(s.path("v1", "configmaps"), configmap("a"),
                                                      field_validation="Bogus"), message=True), servers)


def test_invalid_label(servers: dict[str, Server]) -> None:
    def operation(s: Server) -> Any:
        body = configmap("a")
        body["metadata"]["labels"] = {"bad key!": "v", "ok": "-bad-"}
        return attempt(lambda: s.client.create(s.path("v1", "configmaps"), body))
    compare("create with invalid label keys and values: 422 Invalid", operation, servers)
