"""Condition types, phases and reasons: one module per kind (resources/<kind>_conditions.py), the
shared ones in resources/conditions.py, every string written once, and the values on the wire
unchanged (tools, docs and people match on them)."""

from __future__ import annotations

import ast
import datetime
import enum
import pathlib
import re

from kserve_operator.resources import (
    canary_conditions,
    conditions,
    inferenceservice_conditions,
    memcached_conditions,
    prewarm_conditions,
)

PACKAGE = pathlib.Path(conditions.__file__).resolve().parents[1]
MODULES = [conditions, memcached_conditions, prewarm_conditions, canary_conditions, inferenceservice_conditions]

# The values as they were before the enums (constants in six modules): none may change.
WIRE = {
    "ConditionType": {"Available", "Degraded", "Progressing", "Ready"},
    "ConditionStatus": {"False", "True", "Unknown"},
    "MemcachedPhase": {"Error", "Pending", "Running", "ScaledToZero", "Scaling"},
    "MemcachedReason": {"ApplyFailed", "AsExpected", "InvalidName", "InvalidSpec", "MetricsQueryNotAllowed",
                        "MetricsUnavailable", "NameConflict", "NoReplicasReady", "ReconcileError", "ReplicasReady",
                        "ScaleDownPending", "ScaledDown", "ScaledToZero", "ScaledUp", "Scaling", "Settled"},
    "PrewarmPhase": {"Failed", "PartiallyWarm", "Pending", "Warm", "Warming"},
    "PrewarmReason": {"AsExpected", "Blocked", "FewerNodesThanRequested", "InvalidSpec", "JobsRunning", "ModelWarm",
                      "MultipleStorageUris", "NoQualifyingNodes", "NodesFailed", "PartiallyWarm", "PreloadFailed",
                      "PreloadJobsCreated", "PreloadJobsDeleted", "PreloadRetried", "RetryScheduled",
                      "SecretKeyNotFound", "SecretNotFound", "ServiceAccountNotFound", "Settled",
                      "UnsupportedStorageUri", "Warm", "Warming"},
    "CanaryPhase": {"Active", "Error", "Pending", "Progressing", "Promoted", "RolledBack", "WaitingForCapacity",
                    "WaitingForModel"},
    "CheckResult": {"Failed", "MetricsUnavailable", "NoData", "Passed"},
    "CanaryReason": {"AmbiguousDestination", "AnalysisFailed", "AnalysisPending", "ApplyFailed", "AsExpected",
                     "BackendNotAService", "CrossNamespaceNotAllowed", "HTTPRouteNotFound",
                     "InferenceServiceNotFound", "InvalidSpec", "MetricsUnavailable", "ModelWarm", "NoData",
                     "OwnedByAnotherController", "OwnedByKServe", "Promoted", "ReconcileError", "Released",
                     "RolledBack", "RouteClaimed", "RouteKindNotServed", "RouteNotFound", "Settled",
                     "StableNotRouted", "Stepping", "VirtualServiceNotFound", "WaitingForCapacity",
                     "WaitingForModel", "WeightInForce", "WeightsApplied", "WeightsChanged", "WeightsNotPercent",
                     "WeightsOverflow"},
    "InferenceServiceEvent": {"PrewarmCreated", "PrewarmNameTaken", "PrewarmNotPossible", "PrewarmRemoved",
                              "PrewarmUpdated"},
}


def enums() -> dict[str, type[enum.StrEnum]]:
    return {name: value for module in MODULES for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, enum.StrEnum) and value is not enum.StrEnum}


def test_the_values_on_the_wire_are_unchanged() -> None:
    found = enums()
    for name, values in WIRE.items():
        assert {member.value for member in found[name]} == values, name


def test_every_string_of_the_vocabulary_is_written_once() -> None:
    """A value two kinds (or a phase and a reason) share is written in one place and reused."""
    literals: list[str] = []
    for module in MODULES:
        tree = ast.parse(pathlib.Path(str(module.__file__)).read_text())
        for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
            literals += [stmt.value.value for stmt in cls.body if isinstance(stmt, ast.Assign)
                         and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)]
    assert len(literals) == len(set(literals)), sorted({v for v in literals if literals.count(v) > 1})


def test_no_module_defines_reasons_or_phases_of_its_own() -> None:
    """The vocabulary lives in resources/; no planning or controller module keeps constants beside it."""
    stray = re.compile(r'^(REASON|PHASE|EVENT|RESULT)_[A-Z_]+ = ', re.MULTILINE)
    offenders = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if stray.search(path.read_text())]
    assert offenders == []


def test_conditions_carry_plain_strings() -> None:
    """The enums compare equal to their values; what goes into a status is a plain str."""
    [ready] = conditions.set_condition([], type=conditions.ConditionType.READY,
                                       status=conditions.ConditionStatus.TRUE,
                                       reason=memcached_conditions.MemcachedReason.REPLICAS_READY, message="",
                                       now=datetime.datetime(2026, 1, 1))
    assert [type(ready[key]) for key in ("type", "status", "reason")] == [str, str, str]
    assert ready["reason"] == "ReplicasReady" == memcached_conditions.MemcachedReason.REPLICAS_READY
