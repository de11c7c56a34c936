"""Memcached on the real control plane: the operator (as its ServiceAccount, shipped RBAC) makes
the Deployment and Service; the REAL Deployment and ReplicaSet controllers make the pods; Pod
Security `restricted` admits them; the real scheduler binds them to a simulated node.

SIMULATION: memcached and its exporter have no registered local command, so the process kubelet
reports their containers Running and Ready without running them (status only).
"""

from __future__ import annotations

import time
from typing import Any

from tests.realcluster.conftest import World


def memcached(world: World, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
            "metadata": {"name": name, "namespace": world.namespace}, "spec": spec}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def test_a_cache_runs_scales_settles_and_is_collected(world: World) -> None:
    kube = world.kube
    world.add_node("cpu")
    world.start_operator()
    mc_path = world.path("cache.serverless.xyz/v1alpha1", "memcacheds", "cache")
    deploy_path = world.path("apps/v1", "deployments", "cache")
    svc_path = world.path("v1", "services", "cache")
    created = kube.create(world.path("cache.serverless.xyz/v1alpha1", "memcacheds"), memcached(world, "cache", size=2))

    running = kube.wait_for(mc_path, lambda o: (o.get("status") or {}).get("phase") == "Running"
                            and o["status"].get("readyReplicas") == 2, timeout=60)
    assert condition(running, "Available")["status"] == "True"
    assert running["status"]["observedGeneration"] == running["metadata"]["generation"]
    deployment = kube.get(deploy_path)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Memcached", created["metadata"]["uid"], True)
    assert deployment["status"]["readyReplicas"] == 2  # written by the real Deployment controller
    pods = kube.list(world.path("v1", "pods"), label_selector="app.kubernetes.io/instance=cache")
    assert len(pods) == 2 and all(p["spec"]["nodeName"] == world.nodes[0] for p in pods)  # the real scheduler
    assert kube.get(svc_path)["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

    # The knob: a spec change scales the real Deployment at once.
    kube.patch(mc_path, {"spec": {"size": 3}})
    kube.wait_for(mc_path, lambda o: o["status"].get("readyReplicas") == 3 and o["status"]["phase"] == "Running",
                  timeout=60)
    assert "ScaledUp" in {e["reason"] for e in world.events_for("cache")}

    # Settled: several resyncs (1 s) later nothing the operator owns has been written again.
    before = {path: kube.get(path)["metadata"]["resourceVersion"] for path in (mc_path, deploy_path, svc_path)}
    time.sleep(5)
    after = {path: kube.get(path)["metadata"]["resourceVersion"] for path in (mc_path, deploy_path, svc_path)}
    assert after == before

    # A hand edit of an owned section of the Service is drift: the operator puts it back (a conditional patch).
    kube.patch(svc_path, {"spec": {"selector": {"app.kubernetes.io/name": "memcached",
                                                "app.kubernetes.io/instance": "someone-else"}}})
    kube.wait_for(svc_path, lambda o: o["spec"]["selector"].get("app.kubernetes.io/instance") == "cache", timeout=30)

    # Deletion: the finalizer scales to zero and waits for the pods; the real garbage collector
    # removes the children through their owner references.
    kube.delete(mc_path)
    kube.wait_gone(mc_path, timeout=60, interval=0.25)
    kube.wait_gone(deploy_path, timeout=60, interval=0.25)
    kube.wait_gone(svc_path, timeout=60, interval=0.25)


def test_taken_names_are_reported_and_nothing_of_someone_else_is_touched(world: World) -> None:
    """The children are created straight from a cache miss (no GET first; both at once for a new
    cache): a same-named object of someone else's meets kube-apiserver's 409 AlreadyExists, is read
    then (under the shipped RBAC: the only `get` of Services and Deployments) and reported as
    NameConflict. Nothing runs either way: beside a taken Service the new Deployment is held at zero
    replicas; a taken Deployment name leaves only the cache's own Service, which selects nothing."""
    kube = world.kube
    world.add_node("cpu")
    world.start_operator()
    selector = {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": "elsewhere"}
    kube.create(world.path("v1", "services"), {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-taken", "namespace": world.namespace},
        "spec": {"selector": selector, "ports": [{"port": 80}]}})
    kube.create(world.path("apps/v1", "deployments"), {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "deploy-taken", "namespace": world.namespace},
        "spec": {"replicas": 0, "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": selector},
                              "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]}}}})
    for name in ("svc-taken", "deploy-taken"):
        kube.create(world.path("cache.serverless.xyz/v1alpha1", "memcacheds"), memcached(world, name, size=1))
    for name, kind in (("svc-taken", "Service"), ("deploy-taken", "Deployment")):
        mc = kube.wait_for(world.path("cache.serverless.xyz/v1alpha1", "memcacheds", name),
                           lambda o: (o.get("status") or {}).get("phase") == "Error", timeout=60)
        degraded = condition(mc, "Degraded")
        assert degraded["reason"] == "NameConflict" and f"{kind} {world.namespace}/{name}" in degraded["message"]
        assert [e["reason"] for e in world.events_for(name) if e["type"] == "Warning"] == ["NameConflict"]
    held = kube.get(world.path("apps/v1", "deployments", "svc-taken"))
    assert held["spec"]["replicas"] == 0, "nothing runs for a taken Service"
    assert held["metadata"]["ownerReferences"][0]["name"] == "svc-taken"
    kube.wait_for(world.path("apps/v1", "deployments", "svc-taken"),
                  lambda o: not (o.get("status") or {}).get("replicas"), timeout=60)
    theirs = kube.get(world.path("v1", "services", "svc-taken"))
    assert "ownerReferences" not in theirs["metadata"] and not theirs["metadata"].get("labels")
    theirs = kube.get(world.path("apps/v1", "deployments", "deploy-taken"))
    assert "ownerReferences" not in theirs["metadata"] and theirs["spec"]["replicas"] == 0
    ours = kube.get(world.path("v1", "services", "deploy-taken"))
    assert ours["metadata"]["ownerReferences"][0]["name"] == "deploy-taken"


def test_an_invalid_cache_is_rejected_by_the_real_schema(world: World) -> None:
    kube = world.kube
    from devcluster import ApiError

    try:
        kube.create(world.path("cache.serverless.xyz/v1alpha1", "memcacheds"), memcached(world, "bad", size=-1))
    except ApiError as exc:
        assert exc.status == 422 and "spec.size" in exc.message
    else:
        raise AssertionError("a negative size was accepted")
