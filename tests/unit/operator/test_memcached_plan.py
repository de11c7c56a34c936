"""Manifests, status and events planned for a Memcached (pure; no server)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kserve_operator.controllers.memcached import DEPLOYMENT_EXACT, MERGED
from kserve_operator.planning import memcached as plan
from kserve_operator.planning import memcached_status
from kserve_operator.planning.diff import child_patch
from kserve_operator.planning.ownership import ownership_problem
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.kinds import MEMCACHED
from kserve_operator.resources.memcached import Memcached, MemcachedStatus, parse_spec
from kserve_operator.resources.memcached_conditions import MemcachedReason

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def raw_body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "cache.serverless.xyz/v1alpha1",
        "kind": "Memcached",
        "metadata": {"name": "cache", "namespace": "team-a", "uid": "uid-1", "generation": 3},
        "spec": spec or {"size": 2},
        "status": status or {},
    }


def body(spec: dict[str, Any] | None = None, status: dict[str, Any] | MemcachedStatus | None = None) -> Memcached:
    return Memcached.parse(raw_body(spec, status.to_status() if isinstance(status, MemcachedStatus) else status))


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


class TestDeployment:
    def test_owned_labelled_and_sized(self) -> None:
        d = plan.build_deployment(body(), 3, plan.MemcachedImages())
        assert d["spec"]["replicas"] == 3
        assert d["metadata"]["ownerReferences"] == [{
            "apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached", "name": "cache", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True,
        }]
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()

    def test_restricted_security_probes_and_requests(self) -> None:
        pod = plan.build_deployment(body(), 1, plan.MemcachedImages())["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        names = [c["name"] for c in pod["containers"]]
        assert names == ["memcached", "exporter"]
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]
            assert container["readinessProbe"] and container["livenessProbe"]

    def test_images_come_from_settings(self) -> None:
        images = plan.MemcachedImages(memcached="registry.local/memcached:1", exporter="registry.local/exp:2")
        pod = plan.build_deployment(body(), 1, images)["spec"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == ["registry.local/memcached:1", "registry.local/exp:2"]

    def test_server_defaults_are_not_drift_but_replicas_are(self) -> None:
        desired = plan.build_deployment(body(), 2, plan.MemcachedImages())
        live = {**desired, "spec": {**desired["spec"], "strategy": {"type": "RollingUpdate"},
                                    "revisionHistoryLimit": 10}}
        live["metadata"] = {**desired["metadata"], "uid": "x", "resourceVersion": "7"}
        assert child_patch(live, desired, exact=DEPLOYMENT_EXACT, merged=MERGED) == []
        assert child_patch(live, plan.build_deployment(body(), 3, plan.MemcachedImages()),
                           exact=DEPLOYMENT_EXACT, merged=MERGED) == [
            {"op": "add", "path": "/spec/replicas", "value": 3}]

    def test_service_selects_the_pods(self) -> None:
        svc = plan.build_service(body())
        pod_labels = plan.build_deployment(body(), 1, plan.MemcachedImages())["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert {p["port"] for p in svc["spec"]["ports"]} == {11211, 9150}

    def test_default_query_is_scoped_to_the_caches_pods(self) -> None:
        q = plan.default_metrics_query("team-a", "cache")
        assert 'namespace="team-a"' in q and 'pod=~"cache-' in q and "memcached_current_connections" in q


def decision(replicas: int, wanted: int | None = None) -> plan.ReplicaDecision:
    return plan.ReplicaDecision(replicas, replicas if wanted is None else wanted, None, "because")


class TestStatus:
    def test_running_when_all_ready(self) -> None:
        s = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=12.0,
                             metrics_problem=None, scaled=False, now=T0)
        assert s.phase == "Running"
        assert s.ready_replicas == 2 and s.active_connections == 12.0 and s.observed_generation == 3
        available = cond.find_condition(list(s.conditions or ()), "Available")
        assert available is not None and available["status"] == "True"

    def test_scaling_while_pods_come_up(self) -> None:
        s = memcached_status.plan_status(body(), decision(3), deployment=deployment(3, 1), connections=None,
                             metrics_problem=None, scaled=True, now=T0)
        assert s.phase == "Scaling" and s.last_scale_time == "2026-01-01T00:00:00Z"
        progressing = cond.find_condition(list(s.conditions or ()), "Progressing")
        assert progressing is not None and progressing["status"] == "True"

    def test_scaled_to_zero(self) -> None:
        s = memcached_status.plan_status(body(), decision(0), deployment=deployment(0, 0), connections=0.0,
                             metrics_problem=None, scaled=True, now=T0)
        assert s.phase == "ScaledToZero"
        available = cond.find_condition(list(s.conditions or ()), "Available")
        assert available is not None and available["reason"] == "ScaledToZero"

    def test_metrics_problem_is_a_degraded_condition(self) -> None:
        s = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=None,
                             metrics_problem="Prometheus answered HTTP 500", scaled=False, now=T0)
        degraded = cond.find_condition(list(s.conditions or ()), "Degraded")
        assert degraded is not None and degraded["status"] == "True" and degraded["reason"] == "MetricsUnavailable"
        assert "HTTP 500" in degraded["message"]

    def test_same_input_same_status_so_no_write(self) -> None:
        first = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=5.0,
                                 metrics_problem=None, scaled=True, now=T0)
        later = T0 + datetime.timedelta(minutes=5)
        second = memcached_status.plan_status(body(status=first), decision(2), deployment=deployment(2, 2),
                                              connections=5.0, metrics_problem=None, scaled=False, now=later)
        assert second.patch_from(first.to_status()) == {}

    def test_invalid_spec_status_keeps_the_rest(self) -> None:
        old = {"phase": "Running", "replicas": 2, "readyReplicas": 2}
        s = memcached_status.plan_error_status(body(status=old), "maxSize (1) must not be smaller than size (2)", T0)
        assert s.phase == "Error" and s.replicas == 2
        degraded = cond.find_condition(list(s.conditions or ()), "Degraded")
        assert degraded is not None and degraded["reason"] == "InvalidSpec" and "maxSize" in degraded["message"]


class TestEvents:
    def test_scale_event_names_both_counts(self) -> None:
        new = memcached_status.plan_status(body(), decision(3), deployment=deployment(3, 2), connections=250.0,
                               metrics_problem=None, scaled=True, now=T0)
        events = memcached_status.plan_events(body(), new, previous_replicas=2, decision=decision(3))
        assert [(e.type, e.reason) for e in events] == [("Normal", "ScaledUp")]
        assert "from 2 to 3" in events[0].message

    def test_warning_only_when_the_problem_is_new(self) -> None:
        new = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=None,
                               metrics_problem="timeout", scaled=False, now=T0)
        first = memcached_status.plan_events(body(), new, previous_replicas=2, decision=decision(2))
        assert [(e.type, e.reason) for e in first] == [("Warning", "MetricsUnavailable")]
        again = memcached_status.plan_events(body(status=new), new, previous_replicas=2, decision=decision(2))
        assert again == []


class TestSpec:
    @pytest.mark.parametrize(("raw", "message"), [
        ({}, "size is required"),
        ({"size": -1}, "size must be between 0 and 100"),
        ({"size": 101}, "size must be between 0 and 100"),
        ({"size": "3"}, "size must be an integer"),
        ({"size": True}, "size must be an integer"),
        ({"size": 1, "scalingWindow": "five minutes"}, "not a duration"),
        ({"size": 1, "coldStartBuffer": -2}, "coldStartBuffer must be between"),
        ({"size": 5, "maxSize": 2}, "maxSize (2) must not be smaller than size (5)"),
        ({"size": 1, "targetConnectionsPerReplica": 0}, "targetConnectionsPerReplica must be >= 1"),
        ({"size": 1, "metricsQuery": "  "}, "metricsQuery must be a non-empty"),
    ])
    def test_rejected_with_the_field_named(self, raw: dict[str, Any], message: str) -> None:
        from kserve_operator.errors import InvalidSpec
        with pytest.raises(InvalidSpec, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_spec(raw)

    def test_defaults(self) -> None:
        s = parse_spec({"size": 2})
        assert (s.scaling_window_seconds, s.cold_start_buffer, s.max_size, s.autoscaling) == (300.0, 0, 100, False)

    @pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400)])
    def test_durations(self, text: str, seconds: float) -> None:
        assert parse_spec({"size": 0, "scalingWindow": text}).scaling_window_seconds == seconds


class TestOwnership:
    def live(self, *refs: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "Deployment", "metadata": {"name": "cache", "namespace": "team-a",
                                                   "ownerReferences": list(refs)}}

    def test_absent_or_ours_is_fine(self) -> None:
        assert ownership_problem(None, raw_body(), MEMCACHED) is None
        assert ownership_problem(self.live(body().controller_reference()), raw_body(), MEMCACHED) is None

    def test_someone_elses_is_not_taken_over(self) -> None:
        theirs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "other", "controller": True}
        problem = ownership_problem(self.live(theirs), raw_body(), MEMCACHED)
        assert problem is not None and "controlled by ReplicaSet x" in problem

    def test_an_unowned_object_of_the_same_name_is_not_taken_over(self) -> None:
        non_controller = {**body().controller_reference(), "controller": False}
        problem = ownership_problem(self.live(non_controller), raw_body(), MEMCACHED)
        assert problem is not None and "not managed by this Memcached" in problem

    @pytest.mark.parametrize("reason", [MemcachedReason.NAME_CONFLICT, MemcachedReason.APPLY_FAILED])
    def test_problem_status_names_the_reason(self, reason: str) -> None:
        s = memcached_status.plan_error_status(body(), "why", T0, reason)
        degraded = cond.find_condition(list(s.conditions or ()), "Degraded")
        assert s.phase == "Error" and degraded is not None and degraded["reason"] == reason
        events = memcached_status.plan_events(body(), s)
        assert [(e.type, e.reason) for e in events] == [("Warning", reason)]
