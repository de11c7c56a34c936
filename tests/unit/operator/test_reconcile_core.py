"""The reconcile core's pure parts (managed-field diff, owner references) and the review's smaller
Memcached defects: a 0s window, unusable sums, a status write lost after a scale."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.clients.prometheus import parse_query_result
from kserve_operator.controllers import memcached
from kserve_operator.controllers.core import ReconcileCore
from kserve_operator.errors import ApiError, MetricsUnavailable
from kserve_operator.planning import memcached as plan
from kserve_operator.planning import memcached_status
from kserve_operator.planning.diff import SERVER_DEFAULTED, child_patch, matches_exactly
from kserve_operator.planning.ownership import merged_owner_references, owned_by
from kserve_operator.resources.memcached import Memcached, MemcachedSpec, name_problem
from kserve_operator.settings import FINALIZER, OperatorSettings
from tests.unit.operator.test_building_blocks import TestPrometheusAnswers

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
OWNER = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
         "metadata": {"name": "c", "namespace": "ns", "uid": "u-1"}}


class TestExactSections:
    def test_server_defaults_are_not_drift(self) -> None:
        desired = {"containers": [{"name": "m", "image": "i"}]}
        live = {"containers": [{"name": "m", "image": "i", "imagePullPolicy": "IfNotPresent",
                                "terminationMessagePath": "/dev/termination-log"}],
                "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"}
        assert matches_exactly(live, desired)

    @pytest.mark.parametrize("extra", [{"hostNetwork": True}, {"serviceAccountName": "x"}, {"hostPID": True}])
    def test_an_added_field_is_drift(self, extra: dict[str, Any]) -> None:
        assert not matches_exactly({"containers": [], **extra}, {"containers": []})

    def test_the_defaults_list_holds_nothing_that_grants_power(self) -> None:
        assert not {"hostNetwork", "privileged", "serviceAccountName", "command", "args", "hostPath"} & SERVER_DEFAULTED

    def test_patch_touches_only_what_differs(self) -> None:
        live = {"metadata": {"resourceVersion": "7", "labels": {"a": "1", "theirs": "x"}},
                "spec": {"replicas": 2, "selector": {"k": "v"}}}
        desired = {"metadata": {"labels": {"a": "2"}}, "spec": {"replicas": 2, "selector": {"k": "v"}}}
        ops = child_patch(live, desired, exact=("spec.replicas", "spec.selector"))
        assert ops == [{"op": "add", "path": "/metadata/labels/a", "value": "2"}]

    def test_replacing_the_owner_references_is_conditional_on_the_list_read(self) -> None:
        ours = Memcached.parse(OWNER).controller_reference()
        live = {"metadata": {"resourceVersion": "7", "ownerReferences": [{"uid": "t", "kind": "X"}]},
                "spec": {"replicas": 1}}
        desired = {"metadata": {"ownerReferences": [ours]}, "spec": {"replicas": 2}}
        ops = child_patch(live, desired, exact=("spec.replicas",))
        assert ops == [{"op": "replace", "path": "/metadata/resourceVersion", "value": "7"},
                       {"op": "add", "path": "/spec/replicas", "value": 2},
                       {"op": "add", "path": "/metadata/ownerReferences", "value": [{"uid": "t", "kind": "X"}, ours]}]

    def test_nothing_differs_nothing_to_write(self) -> None:
        live = {"metadata": {"resourceVersion": "7", "labels": {"a": "1"}}, "spec": {"replicas": 2}}
        assert child_patch(live, {"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2}},
                           exact=("spec.replicas",)) == []

    def test_label_keys_with_slashes_are_escaped(self) -> None:
        ops = child_patch({"metadata": {"labels": {}}}, {"metadata": {"labels": {"app.kubernetes.io/name": "m"}}})
        assert ops[0]["path"] == "/metadata/labels/app.kubernetes.io~1name"


class TestOwnerReferences:
    ours = Memcached.parse(OWNER).controller_reference()
    theirs = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "a", "uid": "t"}

    def test_ours_present_nothing_to_write(self) -> None:
        assert merged_owner_references([self.theirs, self.ours], self.ours) is None

    def test_ours_added_theirs_kept(self) -> None:
        assert merged_owner_references([self.theirs], self.ours) == [self.theirs, self.ours]

    def test_ours_repaired_in_place_of_a_damaged_copy(self) -> None:
        damaged = {**self.ours, "blockOwnerDeletion": False}
        assert merged_owner_references([damaged, self.theirs], self.ours) == [self.theirs, self.ours]

    def test_owned_by(self) -> None:
        assert owned_by({"metadata": {"ownerReferences": [self.theirs, self.ours]}}, "u-1")
        assert not owned_by({"metadata": {"ownerReferences": [self.theirs]}}, "u-1")
        assert not owned_by(None, "u-1")

    @given(st.lists(st.fixed_dictionaries({"uid": st.text(min_size=1, max_size=3), "kind": st.just("X"),
                                           "name": st.just("n"), "apiVersion": st.just("v1")}), max_size=4))
    def test_every_other_reference_survives(self, refs: list[dict[str, Any]]) -> None:
        merged = merged_owner_references(refs, self.ours) or refs
        assert [r for r in refs if r["uid"] != "u-1"] == [r for r in merged if r["uid"] != "u-1"]
        assert self.ours in merged


def test_a_zero_window_scales_down_in_the_same_pass() -> None:
    spec = MemcachedSpec(size=0, scaling_window_seconds=0, cold_start_buffer=0, max_size=10,
                         target_connections_per_replica=10, metrics_query=None)
    decision = plan.decide_replicas(spec, connections=0, current=4, window=None, now=T0)
    assert decision.replicas == 0 and decision.window is None


@pytest.mark.parametrize(("values", "why"), [
    (["1e308", "1e308"], "overflows"),
    (["-3"], "negative"),
])
def test_unusable_sums_and_negative_counts(values: list[str], why: str) -> None:
    with pytest.raises(MetricsUnavailable, match=why):
        parse_query_result(TestPrometheusAnswers().vector(*values))


@pytest.mark.parametrize(("name", "ok"), [("cache", True), ("a" * 46, True), ("a" * 47, False),
                                          ("with.dots", False), ("1st", False), ("UPPER", False)])
def test_names(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) == ok


class StatusWriteFails:
    """A cache at 1 replica whose spec asks for 3; every status write is lost (a 500)."""

    def __init__(self) -> None:
        self.body = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                     "metadata": {"name": "c", "namespace": "ns", "uid": "u-1", "generation": 2,
                                  "finalizers": [FINALIZER]},
                     "spec": {"size": 3}}
        self.deployment = plan.build_deployment(Memcached.parse(self.body), 1, plan.MemcachedImages())
        self.deployment["metadata"]["resourceVersion"] = "5"
        self.events: list[dict[str, Any]] = []
        self.patches: list[Any] = []

    async def get(self, kind: Any, name: str, namespace: str | None = None) -> Any:
        return {"memcacheds": self.body, "deployments": self.deployment}.get(kind.plural)

    async def create(self, kind: Any, body: Any) -> Any:
        if kind.plural == "events":
            self.events.append(body)
        return body

    async def patch(self, kind: Any, name: str, patch: Any, **kwargs: Any) -> Any:
        if kwargs.get("status"):
            raise ApiError(500, "InternalError", "etcd timeout")
        self.patches.append(patch)
        if kind.plural == "deployments":
            self.deployment = {**self.deployment, "spec": {**self.deployment["spec"], "replicas": 3},
                               "metadata": {**self.deployment["metadata"], "annotations": next(
                                   op["value"] for op in patch if op["path"] == "/metadata/annotations")}}
        return self.deployment


def test_a_status_write_lost_after_a_scale_keeps_the_event_and_the_time() -> None:
    api = StatusWriteFails()
    ctx = memcached.MemcachedContext(settings=OperatorSettings(), core=ReconcileCore("memcached", api),
                                     prometheus=None)
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(memcached.memcached_changed("ns", "c", kopf.Memo(memcached=ctx), logging.getLogger("t"), 0))
    assert [e["reason"] for e in api.events][:1] == ["ScaledUp"], "the scale's Event goes out before the status"
    stamp = api.deployment["metadata"]["annotations"][plan.LAST_SCALE_ANNOTATION]
    status = memcached_status.plan_status(Memcached.parse(api.body), plan.ReplicaDecision(3, 3, None, ""),
                                          deployment=api.deployment, connections=None, metrics_problem=None,
                                          scaled=False, now=T0)
    assert status.last_scale_time == stamp, "the next reconcile reads the scale time from the Deployment"
