"""One behaviour suite for both traffic routers (an Istio VirtualService, a Gateway API HTTPRoute),
parametrized over the kind and run on any API server: the emulated one
(tests/integration/operator/test_canary_routers.py) and the real control plane
(tests/realcluster/test_canary_routers_real.py), each of which supplies a `route_world`.

The controller's reconcile runs in this process through the real API façade (an admin client),
against the mnist VirtualService and HTTPRoute (devstack/): several rules with matches and
filters, timeouts, a rule shared with an audit sink, a redirect, a catch-all, and for the
HTTPRoute two parentRefs. What every router must do: percent 0, 10 and 100 move only the weights
of the managed rules (everything else compared whole); an object another controller owns, a
missing object, no matching rule or backend and weights that cannot add up to 100 are each a
condition and a Warning event with no write; a concurrent writer between our read and our write
(a real 409) ends with both edits in the object; restore gives stable 100% back.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devcluster import ClusterClient
from devcluster.client import ApiError as ClusterApiError
from devstack.mnist_httproute import http_route
from devstack.mnist_virtualservice import virtual_service
from kserve_operator.clients.kube import KubeApi, KubernetesApi, PatchType
from kserve_operator.controllers import canary
from kserve_operator.controllers.core import Outcome
from kserve_operator.errors import ApiError
from kserve_operator.resources.canary import CanaryStatus, parse_spec
from kserve_operator.resources.kinds import Kind
from kserve_operator.settings import FINALIZER, OperatorSettings

KINDS = ["VirtualService", "HTTPRoute"]
AGENT = "kserve-operator-router-suite"
MODEL_CANARIES = "serving.serverless.xyz/v1alpha1"
STABLE_SERVICE, CANDIDATE_SERVICE = "torch-mnist-predictor", "torch-mnist-v2-predictor"


@dataclasses.dataclass(frozen=True)
class Shape:
    """How the suite reads and edits one kind of routing object."""

    kind: str
    group_version: str
    plural: str
    rules: str  # the list of rules: spec.http / spec.rules
    refs: str  # a rule's destinations: route / backendRefs
    make: Callable[[str], dict[str, Any]]  # namespace -> the mnist object to create
    timeout_path: str  # a field of the first rule a concurrent writer edits (JSON pointer)

    def candidate(self, ref: Mapping[str, Any]) -> bool:
        name = ref["destination"]["host"] if self.kind == "VirtualService" else ref["name"]
        return str(name).startswith(CANDIDATE_SERVICE)

    def rule(self, obj: Mapping[str, Any], name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(r for r in obj["spec"][self.rules] if r.get("name") == name)
        return found

    def weights(self, obj: Mapping[str, Any], name: str = "predict") -> list[int]:
        refs = self.rule(obj, name)[self.refs]
        return [ref.get("weight", 100 if len(refs) == 1 else 1) for ref in refs]

    def without_canary(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The spec without weights and without the candidate destinations: what no move may change."""
        spec: dict[str, Any] = copy.deepcopy(dict(obj["spec"]))
        for rule in spec.get(self.rules) or []:
            if self.refs in rule:
                rule[self.refs] = [{k: v for k, v in ref.items() if k != "weight"}
                                   for ref in rule[self.refs] if not self.candidate(ref)]
        return spec

    def timeout(self, obj: Mapping[str, Any]) -> Any:
        value: Any = obj
        for part in self.timeout_path.strip("/").split("/"):
            value = value[int(part)] if isinstance(value, list) else value[part]
        return value

    def target(self, name: str = "mnist", **route: Any) -> dict[str, Any]:
        """The ModelCanary spec fields that name the object: the older form for a VirtualService."""
        if self.kind == "VirtualService":
            return {"virtualService": {"name": name}, **({"routes": route["rules"]} if "rules" in route else {})}
        return {"route": {"kind": "HTTPRoute", "name": name, **route}}


SHAPES = {
    "VirtualService": Shape("VirtualService", "networking.istio.io/v1", "virtualservices", "http", "route",
                            lambda ns: virtual_service(namespace=ns), "/spec/http/0/timeout"),
    "HTTPRoute": Shape("HTTPRoute", "gateway.networking.k8s.io/v1", "httproutes", "rules", "backendRefs",
                       lambda ns: http_route(namespace=ns), "/spec/rules/0/timeouts/request"),
}


@dataclasses.dataclass
class RouteWorld:
    """A namespace on some API server, an admin client for it and its kubeconfig (KUBECONFIG is set)."""

    kube: ClusterClient
    namespace: str
    kubeconfig: Path
    canaries: list[str] = dataclasses.field(default_factory=list)

    def path(self, group_version: str, plural: str, name: str = "") -> str:
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{prefix}/namespaces/{self.namespace}/{plural}" + (f"/{name}" if name else "")

    def object_path(self, shape: Shape, name: str = "mnist") -> str:
        return self.path(shape.group_version, shape.plural, name)

    def install(self, shape: Shape, edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Both InferenceServices and the routing object (edited first); returns the object as stored."""
        for name in ("torch-mnist", "torch-mnist-v2"):
            self.kube.create(self.path("serving.kserve.io/v1beta1", "inferenceservices"), {
                "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch"},
                                                 "storageUri": f"s3://models/{name}"}}}})
        body = shape.make(self.namespace)
        if edit is not None:
            edit(body)
        created: dict[str, Any] = self.kube.create(self.path(shape.group_version, shape.plural), body)
        return created

    def create_canary(self, shape: Shape, percent: int, **spec: Any) -> None:
        """A ModelCanary as kopf leaves it before its first pass (the finalizer on: routes may be written)."""
        full = {**shape.target(), "stable": {"inferenceService": "torch-mnist"},
                "candidate": {"inferenceService": "torch-mnist-v2"}, "percent": percent, **spec}
        self.kube.create(self.path(MODEL_CANARIES, "modelcanaries"), {
            "apiVersion": MODEL_CANARIES, "kind": "ModelCanary",
            "metadata": {"name": "mnist", "namespace": self.namespace, "finalizers": [FINALIZER]}, "spec": full})
        self.canaries.append("mnist")

    def canary(self) -> dict[str, Any]:
        found: dict[str, Any] = self.kube.get(self.path(MODEL_CANARIES, "modelcanaries", "mnist"))
        return found

    def set_percent(self, percent: int) -> None:
        self.kube.patch(self.path(MODEL_CANARIES, "modelcanaries", "mnist"), {"spec": {"percent": percent}})

    def condition(self, type: str) -> dict[str, Any]:
        return next((dict(c) for c in self.canary().get("status", {}).get("conditions") or [] if c["type"] == type),
                    {})

    def warnings(self) -> list[str]:
        return [e["reason"] for e in self.kube.list(self.path("v1", "events"))
                if (e.get("involvedObject") or {}).get("name") == "mnist" and e.get("type") == "Warning"]

    def drop_finalizers(self) -> None:
        """No operator runs here to release them: the namespace can then be deleted."""
        for name in self.canaries:
            with contextlib.suppress(ClusterApiError):  # already gone
                self.kube.patch(self.path(MODEL_CANARIES, "modelcanaries", name), {"metadata": {"finalizers": []}})


@pytest.fixture
async def api(route_world: RouteWorld) -> AsyncIterator[KubernetesApi]:
    client = await KubernetesApi.connect(user_agent=AGENT)
    yield client
    await client.close()


class RacingApi:
    """The real `KubeApi`, except that before each of our next `races` writes of the routing object a
    concurrent writer (another client) edits its first rule, so ours carries a stale version."""

    def __init__(self, inner: KubeApi, world: RouteWorld, shape: Shape, races: int) -> None:
        self.inner, self.world, self.shape, self.races = inner, world, shape, races
        self.edits = 0
        self.conflicts = 0

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return await self.inner.get(kind, name, namespace)

    async def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[dict[str, Any]]:
        return await self.inner.list(kind, namespace, label_selector=label_selector, field_selector=field_selector)

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.inner.create(kind, body)

    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                    namespace: str | None = None, patch_type: PatchType = PatchType.MERGE,
                    status: bool = False) -> dict[str, Any]:
        if kind.plural == self.shape.plural and self.races > 0:
            self.races -= 1
            self.edits += 1
            await asyncio.to_thread(self.world.kube.patch, self.world.object_path(self.shape), [
                {"op": "replace", "path": self.shape.timeout_path, "value": f"{60 + self.edits}s"}],
                "application/json-patch+json")
        try:
            return await self.inner.patch(kind, name, patch, namespace=namespace, patch_type=patch_type,
                                          status=status)
        except ApiError as exc:
            self.conflicts += exc.conflict
            raise

    async def delete(self, kind: Kind, name: str, *, namespace: str | None = None, propagation: str = "Background",
                     uid: str | None = None) -> bool:
        return await self.inner.delete(kind, name, namespace=namespace, propagation=propagation, uid=uid)


async def reconcile(world: RouteWorld, api: KubeApi) -> Outcome:
    ctx = canary.new_context(OperatorSettings(), api, None)
    return await ctx.core.run(world.namespace, "mnist", lambda: canary.reconcile(
        ctx, world.namespace, "mnist", logging.getLogger("router-suite")))


# --- the suite ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_percent_0_10_100_move_only_the_managed_weights(route_world: RouteWorld, api: KubernetesApi,
                                                              kind: str) -> None:
    shape = SHAPES[kind]
    original = route_world.install(shape)
    path = route_world.object_path(shape)
    route_world.create_canary(shape, 0)
    assert await reconcile(route_world, api) is Outcome.OK
    untouched = route_world.kube.get(path)
    assert untouched["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"]  # 0%: no write
    assert route_world.canary()["status"]["percent"] == 0 and route_world.condition("Ready")["status"] == "True"
    for percent, predict, audited in ((10, [90, 10], [20, 72, 8]), (100, [0, 100], [20, 0, 80])):
        route_world.set_percent(percent)
        assert await reconcile(route_world, api) is Outcome.OK
        moved = route_world.kube.get(path)
        assert shape.weights(moved) == predict and shape.weights(moved, "audited") == audited
        assert shape.without_canary(moved) == shape.without_canary(original)  # matches, filters, other rules
        assert moved["spec"][shape.rules][0] == original["spec"][shape.rules][0]  # a rule it does not manage
        status = route_world.canary()["status"]
        assert (status["percent"], status["routeKind"], status["route"]) == (
            percent, kind, f"{route_world.namespace}/mnist")
    again = route_world.kube.get(path)["metadata"]["resourceVersion"]
    assert await reconcile(route_world, api) is Outcome.OK  # settled: nothing written
    assert route_world.kube.get(path)["metadata"]["resourceVersion"] == again

    # Restore (the finalizer's work): stable 100% again, the candidate destinations we appended gone.
    ctx = canary.new_context(OperatorSettings(), api, None)
    router = ctx.router(parse_spec(route_world.canary()["spec"], route_world.namespace).route)
    status = CanaryStatus.parse(route_world.canary()["status"])
    spec = parse_spec(route_world.canary()["spec"], route_world.namespace)
    release = await router.restore(spec, status.managed_routes, status.added_candidate_routes)
    assert release is not None and release.changed and sorted(release.removed) == sorted(status.added_candidate_routes)
    restored = route_world.kube.get(path)
    assert shape.without_canary(restored) == shape.without_canary(original)
    assert [ref for rule in restored["spec"][shape.rules] for ref in rule.get(shape.refs) or []
            if shape.candidate(ref)] == []
    assert shape.weights(restored) == [100] and shape.weights(restored, "audited") == [20, 80]


@pytest.mark.parametrize("kind", KINDS)
async def test_an_object_another_controller_owns_is_refused_without_a_write(
    route_world: RouteWorld, api: KubernetesApi, kind: str,
) -> None:
    shape = SHAPES[kind]

    def owned(body: dict[str, Any]) -> None:
        isvc = route_world.kube.get(route_world.path("serving.kserve.io/v1beta1", "inferenceservices", "torch-mnist"))
        body["metadata"]["ownerReferences"] = [{
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "torch-mnist",
            "uid": isvc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]

    original = route_world.install(shape, owned)
    route_world.create_canary(shape, 20)
    assert await reconcile(route_world, api) is Outcome.INVALID
    ready = route_world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "OwnedByKServe")
    assert f"{kind} {route_world.namespace}/mnist is owned by KServe's InferenceService torch-mnist" in ready["message"]
    assert "OwnedByKServe" in route_world.warnings()
    stored = route_world.kube.get(route_world.object_path(shape))
    assert stored["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_missing_object_is_a_condition_and_waits(route_world: RouteWorld, api: KubernetesApi,
                                                         kind: str) -> None:
    shape = SHAPES[kind]
    route_world.install(shape)
    route_world.create_canary(shape, 20, **shape.target("absent"))
    assert await reconcile(route_world, api) is Outcome.WAITING
    ready = route_world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", f"{kind}NotFound")
    assert ready["message"] == f"{kind} {route_world.namespace}/absent does not exist"
    assert f"{kind}NotFound" in route_world.warnings()


def _audit_weight(shape: Shape, weight: int) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        next(r for r in body["spec"][shape.rules] if r.get("name") == "audited")[shape.refs][0]["weight"] = weight
    return edit


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("spec", "audit", "reason", "words"), [
    ({"rules": ["nope"]}, None, "RouteNotFound", "nope"),
    ({"rules": ["explain"]}, None, "StableNotRouted", "explain"),
    ({"stable": {"host": "someone-else"}}, None, "StableNotRouted", "someone-else"),
    ({"rules": ["audited"]}, 120, "WeightsOverflow", "120"),
], ids=["no-such-rule", "rule-without-stable", "stable-nowhere", "weights-over-100"])
async def test_what_the_object_cannot_carry_is_a_condition_with_no_write(
    route_world: RouteWorld, api: KubernetesApi, kind: str, spec: dict[str, Any], audit: int | None, reason: str,
    words: str,
) -> None:
    shape = SHAPES[kind]
    original = route_world.install(shape, _audit_weight(shape, audit) if audit is not None else None)
    spec = dict(spec)  # shared by both kinds' runs
    rules = spec.pop("rules", None)
    route_world.create_canary(shape, 20, **shape.target(**({"rules": rules} if rules else {})), **spec)
    assert await reconcile(route_world, api) is Outcome.INVALID
    ready = route_world.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason) and words in ready["message"]
    assert reason in route_world.warnings()
    stored = route_world.kube.get(route_world.object_path(shape))
    assert stored["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_409_race_ends_with_both_edits_kept(route_world: RouteWorld, api: KubernetesApi, kind: str) -> None:
    shape = SHAPES[kind]
    route_world.install(shape)
    route_world.create_canary(shape, 20, **shape.target(rules=["predict"]))
    racing = RacingApi(api, route_world, shape, races=2)
    assert await reconcile(route_world, racing) is Outcome.OK
    assert racing.conflicts == 2  # the server refused our two stale writes
    stored = route_world.kube.get(route_world.object_path(shape))
    assert shape.weights(stored) == [80, 20]
    assert shape.timeout(stored) == "62s"  # the other writer's last edit survived ours
    assert route_world.canary()["status"]["percent"] == 20
