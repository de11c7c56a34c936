"""Typed status views (resources/status_view.py): a status read and written back unchanged is the same
object on the wire, keys another operator version wrote survive, and `patch_from` is exactly the
merge patch the controllers wrote before (changed keys; null for a key that goes)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kserve_operator.planning.diff import status_changes
from kserve_operator.resources.memcached import MemcachedStatus
from kserve_operator.resources.prewarm import PrewarmStatus

MEMCACHED = {
    "phase": "Running", "replicas": 2, "readyReplicas": 2, "desiredReplicas": 2, "observedGeneration": 3,
    "conditions": [{"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "2/2 replicas ready",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}],
    "scaleDown": {"since": "2026-01-01T00:00:00Z", "replicas": 1}, "activeConnections": 0.0,
    "lastScaleTime": "2026-01-01T00:00:00Z", "fromANewerOperator": {"kept": True},
}
PREWARM = {
    "phase": "Warming", "desiredNodes": 2, "warmNodes": 1, "warm": "1/2", "qualifyingNodes": 3,
    "storageUri": "s3://models/mnist", "modelVersion": "v1", "retryRequest": "1",
    "nodes": [{"name": "gpu-1", "phase": "Warm", "job": "j1"}, {"name": "gpu-2", "phase": "Failed", "job": "j2",
                                                                 "retryAt": "2026-01-01T00:01:00Z"}],
    "nextRetryAt": "2026-01-01T00:01:00Z", "conditions": [], "observedGeneration": 1,
}


@pytest.mark.parametrize(("view", "raw"), [(MemcachedStatus, MEMCACHED), (PrewarmStatus, PREWARM)])
def test_a_status_read_and_written_back_is_unchanged(view: Any, raw: dict[str, Any]) -> None:
    parsed = view.parse(raw)
    assert parsed.to_status() == raw
    assert parsed.patch_from(raw) == {}, "a settled object writes nothing"


def test_the_patch_is_the_merge_patch_the_plan_asked_for() -> None:
    """A plan's keys over the status as read: changed keys, None removes, keys the plan leaves alone stay."""
    plan = {"phase": "Warm", "warmNodes": 2, "warm": "2/2", "nextRetryAt": None, "modelVersion": "v1",
            "servingPods": None}
    view = PrewarmStatus.parse(PREWARM).with_changes(plan)
    assert view.patch_from(PREWARM) == status_changes(PREWARM, plan) == {
        "phase": "Warm", "warmNodes": 2, "warm": "2/2", "nextRetryAt": None}
    assert view.retry_request == "1" and view.next_retry_at is None


def test_a_memcached_status_drops_a_closed_window_and_keeps_unknown_keys() -> None:
    closed = MemcachedStatus.parse(MEMCACHED).with_changes({"scaleDown": None, "replicas": 1})
    assert closed.patch_from(MEMCACHED) == {"scaleDown": None, "replicas": 1}
    assert closed.unknown == {"fromANewerOperator": {"kept": True}}
    assert MemcachedStatus.parse(None) == MemcachedStatus() and MemcachedStatus().patch_from(None) == {}


def test_the_next_retry_is_when_status_says() -> None:
    at = datetime.datetime(2026, 1, 1, 0, 0, 30, tzinfo=datetime.UTC)
    status = PrewarmStatus.parse(PREWARM)
    assert status.retry_in(at) == 30.0
    assert status.retry_in(at + datetime.timedelta(minutes=5)) == 1.0, "past due: soon, never a busy loop"
    assert PrewarmStatus.parse({"nextRetryAt": "yesterday"}).retry_in(at) is None
    assert PrewarmStatus().retry_in(at) is None
