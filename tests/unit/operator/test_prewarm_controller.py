"""The ModelPrewarm controller's own small decisions: which Node changes wake every ModelPrewarm,
and where a derived ModelPrewarm's Events are mirrored."""

from __future__ import annotations

import copy

from kserve_operator.controllers.prewarm import _owning_service
from kserve_operator.controllers.prewarm_nodes import node_fingerprint
from tests.unit.operator.prewarm_shapes import node


def test_heartbeats_do_not_wake_prewarms_but_scheduling_changes_do() -> None:
    base = node("gpu-1", labels={"pool": "a"})
    base["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"}]
    beat = copy.deepcopy(base)
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "t2"
    beat["metadata"]["resourceVersion"] = "99"
    assert node_fingerprint(beat) == node_fingerprint(base)
    for change in (lambda n: n["metadata"]["labels"].update(pool="b"),
                   lambda n: n["spec"].update(taints=[{"key": "x", "effect": "NoSchedule"}]),
                   lambda n: n["spec"].update(unschedulable=True),
                   lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "0"}),
                   lambda n: n["metadata"].update(deletionTimestamp="2026-12-02T00:00:00Z")):
        changed = copy.deepcopy(base)
        change(changed)
        assert node_fingerprint(changed) != node_fingerprint(base)


def test_events_of_a_derived_prewarm_also_go_to_its_inference_service() -> None:
    owned = {"metadata": {"name": "m", "namespace": "ml", "ownerReferences": [
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": "m", "uid": "u",
         "controller": True}]}}
    assert _owning_service(owned) == {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                      "metadata": {"name": "m", "namespace": "ml", "uid": "u"}}
    assert _owning_service({"metadata": {"name": "pool", "namespace": "ml"}}) is None
