"""The Memcached's Ready condition: Available and not Degraded (pure), so `kubectl wait
--for=condition=Ready` and GitOps health checks see a cache that serves and has no problem."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kserve_operator.planning import memcached_status
from kserve_operator.resources import conditions as cond
from kserve_operator.resources.conditions import ConditionType
from kserve_operator.resources.memcached_conditions import MemcachedReason
from tests.unit.operator.test_memcached_plan import T0, body, decision, deployment


def ready_of(status: dict[str, Any]) -> tuple[str, str, str]:
    ready = cond.find_condition(list(status.conditions or ()), ConditionType.READY)
    assert ready is not None and ready["observedGeneration"] == 3
    return ready["status"], ready["reason"], ready["message"]


@pytest.mark.parametrize(("replicas", "ready", "problem", "expected"), [
    (2, 2, None, ("True", MemcachedReason.REPLICAS_READY, "2/2 replicas ready")),
    (3, 1, None, ("True", MemcachedReason.REPLICAS_READY, "1/3 replicas ready")),  # serving while scaling up
    (2, 0, None, ("False", MemcachedReason.NO_REPLICAS_READY, "0/2 replicas ready")),
    (0, 0, None, ("False", MemcachedReason.SCALED_TO_ZERO, "scaled to zero after a whole window without connections")),
    (2, 2, "Prometheus answered HTTP 500",
     ("False", MemcachedReason.METRICS_UNAVAILABLE, "holding 2 replica(s): Prometheus answered HTTP 500")),
])
def test_ready_is_available_and_not_degraded(replicas: int, ready: int, problem: str | None,
                                             expected: tuple[str, str, str]) -> None:
    status = memcached_status.plan_status(body(), decision(replicas), deployment=deployment(replicas, ready),
                                          connections=None, metrics_problem=problem, scaled=False, now=T0)
    assert ready_of(status) == expected


def test_a_problem_only_a_person_can_fix_is_not_ready() -> None:
    healthy = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=None,
                                           metrics_problem=None, scaled=False, now=T0)
    broken = memcached_status.plan_error_status(body(status=healthy), "maxSize (1) is below size (2)", T0,
                                                reason=MemcachedReason.INVALID_SPEC)
    assert ready_of(broken) == ("False", MemcachedReason.INVALID_SPEC, "maxSize (1) is below size (2)")
    ready = cond.find_condition(list(broken.conditions or ()), ConditionType.READY)
    assert ready is not None and ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_a_settled_cache_keeps_its_ready_condition_unchanged() -> None:
    first = memcached_status.plan_status(body(), decision(2), deployment=deployment(2, 2), connections=None,
                                         metrics_problem=None, scaled=False, now=T0)
    later = memcached_status.plan_status(body(status=first), decision(2), deployment=deployment(2, 2),
                                         connections=None, metrics_problem=None, scaled=False,
                                         now=T0 + datetime.timedelta(hours=1))
    assert later.patch_from(first.to_status()) == {}
