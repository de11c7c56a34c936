"""The ModelCanary's vocabulary: `status.phase`, the result of an analysis check and of a pass, and
the reasons of its conditions and Events (the traffic routers' refusals included).

Shared values come from resources/conditions.py; a value a phase or a check result and a reason
share is written once, in the phase or the result. Tools and people match on the values: they never
change.
"""

from __future__ import annotations

import enum

from kserve_operator.resources.conditions import ConditionType, Phase, Reason


class CanaryPhase(enum.StrEnum):
    PENDING = Phase.PENDING.value
    WAITING_FOR_MODEL = "WaitingForModel"
    WAITING_FOR_CAPACITY = "WaitingForCapacity"  # a step waits for enough warm nodes for its share
    PROGRESSING = ConditionType.PROGRESSING.value
    ACTIVE = "Active"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ERROR = Phase.ERROR.value


class CheckResult(enum.StrEnum):
    """A check's result, and the whole pass's: also the reasons of the Progressing condition when held."""

    PASSED = "Passed"
    FAILED = Phase.FAILED.value
    NO_DATA = "NoData"  # the query matched no series, or no request in the window
    METRICS_UNAVAILABLE = Reason.METRICS_UNAVAILABLE.value  # the query errored, or Prometheus did not answer


class CanaryReason(enum.StrEnum):
    """Reasons of status.conditions and of the Events."""

    WEIGHTS_APPLIED = "WeightsApplied"
    WAITING_FOR_MODEL = CanaryPhase.WAITING_FOR_MODEL.value
    WAITING_FOR_CAPACITY = CanaryPhase.WAITING_FOR_CAPACITY.value
    STEPPING = "Stepping"
    ANALYSIS_PENDING = "AnalysisPending"
    NO_DATA = CheckResult.NO_DATA.value  # held: a check found no data (no candidate traffic in the window)
    METRICS_UNAVAILABLE = CheckResult.METRICS_UNAVAILABLE.value  # held: a query errored or Prometheus is away
    ANALYSIS_FAILED = "AnalysisFailed"
    SETTLED = Reason.SETTLED.value
    PROMOTED = CanaryPhase.PROMOTED.value
    ROLLED_BACK = CanaryPhase.ROLLED_BACK.value
    AS_EXPECTED = Reason.AS_EXPECTED.value
    WEIGHTS_CHANGED = "WeightsChanged"
    MODEL_WARM = Reason.MODEL_WARM.value
    WEIGHT_IN_FORCE = "WeightInForce"  # Ready: the share the spec asks for is in force
    RELEASED = "Released"  # the Event of a deletion that gave stable 100% back
    # Problems: each leaves the routing object untouched.
    INVALID_SPEC = Reason.INVALID_SPEC.value
    VIRTUAL_SERVICE_NOT_FOUND = "VirtualServiceNotFound"
    HTTP_ROUTE_NOT_FOUND = "HTTPRouteNotFound"
    ROUTE_KIND_NOT_SERVED = "RouteKindNotServed"  # the kind's CRD is not installed (no Istio, no Gateway API)
    INFERENCE_SERVICE_NOT_FOUND = "InferenceServiceNotFound"
    ROUTE_CLAIMED = "RouteClaimed"
    APPLY_FAILED = Reason.APPLY_FAILED.value
    RECONCILE_ERROR = Reason.RECONCILE_ERROR.value
    CROSS_NAMESPACE_NOT_ALLOWED = "CrossNamespaceNotAllowed"
    # The traffic routers' refusals (planning/routes/).
    ROUTE_NOT_FOUND = "RouteNotFound"
    STABLE_NOT_ROUTED = "StableNotRouted"
    WEIGHTS_OVERFLOW = "WeightsOverflow"
    AMBIGUOUS_DESTINATION = "AmbiguousDestination"
    FOREIGN_OWNER = "OwnedByKServe"
    WEIGHTS_NOT_PERCENT = "WeightsNotPercent"
    BACKEND_NOT_A_SERVICE = "BackendNotAService"
    FOREIGN_CONTROLLER = "OwnedByAnotherController"
