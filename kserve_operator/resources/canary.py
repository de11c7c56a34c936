"""The ModelCanary custom resource (serving.serverless.xyz/v1alpha1): typed spec and status views.

The CRD schema rejects what a schema can say (ranges, types, unknown fields); `parse_spec`
re-checks what it cannot: exactly one of `inferenceService` and `host` per backend,
increasing step weights, a warm gate that has a ModelPrewarm to read, analysis bounds.
Backends are resolved here to the host Istio routes to (KServe's predictor Service; an HTTPRoute
backendRef names the same Service); the routing object is resources/routes.py's `RouteTarget`.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from collections.abc import Mapping
from typing import Any

from kserve_operator.errors import InvalidSpec
from kserve_operator.resources.conditions import Condition, parse_rfc3339
from kserve_operator.resources.durations import parse_duration
from kserve_operator.resources.fields import int_field, text_field
from kserve_operator.resources.routes import RouteTarget, parse_route_target, recorded_route

CLUSTER_DOMAIN = "svc.cluster.local"

def predictor_host(inference_service: str, namespace: str) -> str:
    """The predictor Service KServe creates for an InferenceService (raw and Knative modes)."""
    return f"{inference_service}-predictor.{namespace}.{CLUSTER_DOMAIN}"


def canonical_host(host: str, namespace: str) -> str:
    """Istio's reading of a destination host: short names are relative to the rule's namespace."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{host}.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


@dataclasses.dataclass(frozen=True)
class Backend:
    """One side of the split, resolved: the host Istio routes to, and optionally subset and port."""

    host: str  # canonical (fully qualified when it is a cluster Service)
    subset: str | None = None
    port: int | None = None
    inference_service: str | None = None  # set when the backend was named by its InferenceService

    @property
    def display(self) -> str:
        name = self.inference_service or self.host
        return f"{name}/{self.subset}" if self.subset else name

    @property
    def service(self) -> tuple[str, str] | None:
        """(namespace, name) of the cluster Service the host names, as Istio's destination_service_*
        labels say it; None for a host outside the cluster."""
        parts = self.host.split(".")
        if len(parts) == 5 and parts[2:] == CLUSTER_DOMAIN.split("."):
            return parts[1], parts[0]
        return None


# The analysis checks: two built in (from Istio's standard metrics for the candidate's Service,
# the way Flagger's are) and custom PromQL under any other name.
CHECK_SUCCESS_RATE = "request-success-rate"  # percent of the candidate's responses that are not 5xx
CHECK_DURATION = "request-duration"  # p99 of the candidate's request duration, milliseconds
BUILT_IN_CHECKS = (CHECK_SUCCESS_RATE, CHECK_DURATION)
DEFAULT_MIN_SUCCESS_RATE = 99.0
DEFAULT_MAX_DURATION_MS = 500.0
SINGLE_QUERY_CHECK = "query"  # the name the one-query form (steps.analysis.query) is reported under
DEFAULT_CHECK_WINDOW_SECONDS = 60.0
MAX_CHECKS = 10
_CHECK_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    """One analysis check: a built-in one (query None: built from the candidate's Service) or custom PromQL."""

    name: str
    query: str | None
    max: float | None
    min: float | None

    @property
    def built_in(self) -> bool:
        return self.query is None

    def out_of_bounds(self, value: float) -> str | None:
        """Why `value` fails the check, or None when it passes."""
        if self.max is not None and value > self.max:
            return f"{value:g} is above the maximum {self.max:g}"
        if self.min is not None and value < self.min:
            return f"{value:g} is below the minimum {self.min:g}"
        return None


@dataclasses.dataclass(frozen=True)
class AnalysisSpec:
    checks: tuple[CheckSpec, ...]  # all must pass for a step
    failure_limit: int  # failed passes in a row that roll back
    window_seconds: float  # the rate window of the built-in checks' queries

    @property
    def built_in(self) -> bool:
        """Whether a check is built from the candidate's Service (it must be one Istio can name)."""
        return any(check.built_in for check in self.checks)


@dataclasses.dataclass(frozen=True)
class StepsSpec:
    weights: tuple[int, ...]
    interval_seconds: float
    analysis: AnalysisSpec | None


@dataclasses.dataclass(frozen=True)
class CanarySpec:
    namespace: str  # the ModelCanary's own namespace
    route: RouteTarget  # the VirtualService or HTTPRoute whose weights move, and which of its rules
    stable: Backend
    candidate: Backend
    percent: int
    require_warm: bool
    model_prewarm: str | None  # the ModelPrewarm (in `namespace`) that gates the candidate
    steps: StepsSpec | None

    @property
    def inference_services(self) -> tuple[str, ...]:
        """InferenceServices the backends name: both must exist before any weight moves."""
        return tuple(b.inference_service for b in (self.stable, self.candidate) if b.inference_service)

    def ladder(self) -> tuple[int, ...]:
        """The candidate's shares in order: each step weight capped at `percent`, ending at `percent`."""
        shares = {min(w, self.percent) for w in (self.steps.weights if self.steps else ())}
        shares.add(self.percent)
        return tuple(sorted(share for share in shares if share > 0))


def _number(raw: Mapping[str, Any], field: str, where: str) -> float | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec(f"{where}{field} must be a number, got {value!r}")
    return float(value)


def _backend(raw: Any, field: str, namespace: str) -> Backend:
    if not isinstance(raw, Mapping):
        raise InvalidSpec(f"{field} is required")
    isvc = text_field(raw, "inferenceService", f"{field}.")
    host = text_field(raw, "host", f"{field}.")
    if (isvc is None) == (host is None):
        raise InvalidSpec(f"{field} needs exactly one of inferenceService and host")
    subset = text_field(raw, "subset", f"{field}.")
    port = int_field(raw, "port", low=1, high=65535, where=f"{field}.")
    if isvc is not None:
        return Backend(predictor_host(isvc, namespace), subset, port, inference_service=isvc)
    assert host is not None
    return Backend(canonical_host(host, namespace), subset, port)


def _bounds(raw: Mapping[str, Any], where: str) -> tuple[float | None, float | None]:
    high, low = _number(raw, "max", where), _number(raw, "min", where)
    if high is not None and low is not None and low > high:
        raise InvalidSpec(f"{where}min ({low:g}) is above max ({high:g})")
    return high, low


def _check(raw: Any, where: str) -> CheckSpec:
    if not isinstance(raw, Mapping):
        raise InvalidSpec(f"{where} must be an object")
    name = text_field(raw, "name", f"{where}.")
    if name is None or not _CHECK_NAME.match(name) or len(name) > 63:
        raise InvalidSpec(f"{where}.name must be a lowercase name such as {CHECK_SUCCESS_RATE}, got {name!r}")
    query = text_field(raw, "query", f"{where}.")
    high, low = _bounds(raw, f"{where}.")
    if name in (CHECK_SUCCESS_RATE, CHECK_DURATION):
        if query is not None:
            raise InvalidSpec(f"{where}: {name} is built in and takes no query; give a custom check another name")
        if name == CHECK_SUCCESS_RATE:
            if high is not None:
                raise InvalidSpec(f"{where}: {name} takes a min (percent of non-5xx responses), not a max")
            return CheckSpec(name, None, None, DEFAULT_MIN_SUCCESS_RATE if low is None else low)
        if low is not None:
            raise InvalidSpec(f"{where}: {name} takes a max (p99 in milliseconds), not a min")
        return CheckSpec(name, None, DEFAULT_MAX_DURATION_MS if high is None else high, None)
    if query is None:
        raise InvalidSpec(f"{where}: check {name} needs a query (only {', '.join(BUILT_IN_CHECKS)} are built in)")
    if high is None and low is None:
        raise InvalidSpec(f"{where}: check {name} needs a max or a min bound")
    return CheckSpec(name, query, high, low)


def _analysis(raw: Any) -> AnalysisSpec | None:
    """`checks`, or the one-query form (`query` with `max`/`min`), read as one custom check named "query"."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpec("steps.analysis must be an object")
    where = "steps.analysis."
    checks_raw, query = raw.get("checks"), text_field(raw, "query", where)
    if (checks_raw is None) == (query is None):
        raise InvalidSpec("steps.analysis needs checks, or a query with max/min (not both)")
    if query is not None:
        high, low = _bounds(raw, where)
        if high is None and low is None:
            raise InvalidSpec("steps.analysis needs a max or a min bound")
        checks: tuple[CheckSpec, ...] = (CheckSpec(SINGLE_QUERY_CHECK, query, high, low),)
    else:
        if "max" in raw or "min" in raw:
            raise InvalidSpec("steps.analysis: max and min go on each check when checks are listed")
        if not isinstance(checks_raw, list) or not 1 <= len(checks_raw) <= MAX_CHECKS:
            raise InvalidSpec(f"steps.analysis.checks must list 1 to {MAX_CHECKS} checks")
        checks = tuple(_check(item, f"{where}checks[{i}]") for i, item in enumerate(checks_raw))
        names = [check.name for check in checks]
        if len(set(names)) != len(names):
            raise InvalidSpec(f"steps.analysis.checks names a check twice: {names}")
    limit = int_field(raw, "failureLimit", low=1, high=1000, where=where)
    window = DEFAULT_CHECK_WINDOW_SECONDS
    if raw.get("interval") is not None:
        window = parse_duration(raw.get("interval"), field="steps.analysis.interval")
        if window <= 0:
            raise InvalidSpec("steps.analysis.interval must be longer than 0s")
    return AnalysisSpec(checks=checks, failure_limit=limit or 1, window_seconds=window)


def _steps(raw: Any) -> StepsSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidSpec("steps must be an object")
    weights = raw.get("weights")
    if not isinstance(weights, list) or not weights:
        raise InvalidSpec("steps.weights must list at least one percent")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise InvalidSpec(f"steps.weights must be integers between 0 and 100, got {weight!r}")
    if any(b <= a for a, b in itertools.pairwise(weights)):
        raise InvalidSpec(f"steps.weights must increase, got {weights}")
    if "interval" not in raw:
        raise InvalidSpec("steps.interval is required")
    interval = parse_duration(raw.get("interval"), field="steps.interval")
    if interval <= 0:
        raise InvalidSpec("steps.interval must be longer than 0s")
    return StepsSpec(weights=tuple(weights), interval_seconds=interval, analysis=_analysis(raw.get("analysis")))


def _check_candidate_service(stable: Backend, candidate: Backend) -> None:
    """The built-in checks read Istio's metrics of the candidate's Service: it must be one, and not stable's."""
    builtin = " and ".join(BUILT_IN_CHECKS)
    if candidate.service is None:
        raise InvalidSpec(f"{builtin} measure the candidate's cluster Service; candidate host {candidate.host} is "
                          "not one: use a custom check (name and query)")
    if candidate.service == stable.service:
        raise InvalidSpec(f"{builtin} measure the candidate's Service, and stable and candidate share "
                          f"{candidate.host} (subsets): use a custom check (name and query)")


def parse_spec(raw: Mapping[str, Any] | None, namespace: str) -> CanarySpec:
    """The typed spec of a ModelCanary in `namespace`, or InvalidSpec naming the field."""
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec is missing")
    route = parse_route_target(raw, namespace)
    stable = _backend(raw.get("stable"), "stable", namespace)
    candidate_raw = raw.get("candidate")
    candidate = _backend(candidate_raw, "candidate", namespace)
    if (stable.host, stable.subset) == (candidate.host, candidate.subset):
        raise InvalidSpec(f"stable and candidate are the same backend ({stable.display})")
    if "percent" not in raw:
        raise InvalidSpec("percent is required")
    percent = int_field(raw, "percent", low=0, high=100)
    assert percent is not None
    require_warm = raw.get("requireWarm", False)
    if not isinstance(require_warm, bool):
        raise InvalidSpec(f"requireWarm must be true or false, got {require_warm!r}")
    assert isinstance(candidate_raw, Mapping)
    prewarm = text_field(candidate_raw, "modelPrewarm", "candidate.") or candidate.inference_service
    if require_warm and prewarm is None:
        raise InvalidSpec("requireWarm needs candidate.modelPrewarm when the candidate is a host, "
                          "not an inferenceService")
    steps = _steps(raw.get("steps"))
    if steps and steps.analysis and steps.analysis.built_in:
        _check_candidate_service(stable, candidate)
    return CanarySpec(
        namespace=namespace, route=route, stable=stable, candidate=candidate, percent=percent,
        require_warm=require_warm, model_prewarm=prewarm, steps=steps,
    )


def _time(raw: Any) -> datetime.datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return parse_rfc3339(raw)
    except ValueError:
        return None


def _count(raw: Any) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else 0


@dataclasses.dataclass(frozen=True)
class CanaryStatus:
    """What the controller wrote last time; everything is optional (a new object has no status)."""

    phase: str | None = None
    percent: int = 0  # the candidate's share the controller last set: its position on the ladder
    step: int = 0
    last_step_time: datetime.datetime | None = None
    last_check_time: datetime.datetime | None = None
    failed_checks: int = 0
    rolled_back_generation: int | None = None
    route: tuple[str, str] | None = None  # (kind, "namespace/name") of the object the routes below belong to
    managed_routes: tuple[str, ...] = ()
    added_candidate_routes: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> CanaryStatus:
        raw = raw or {}
        analysis = raw.get("analysis") if isinstance(raw.get("analysis"), Mapping) else {}
        assert isinstance(analysis, Mapping)
        rolled_back = raw.get("rolledBackGeneration")

        def names(value: Any) -> tuple[str, ...]:
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(
            phase=raw.get("phase") if isinstance(raw.get("phase"), str) else None,
            percent=min(_count(raw.get("percent")), 100),
            step=_count(raw.get("step")),
            last_step_time=_time(raw.get("lastStepTime")),
            last_check_time=_time(analysis.get("lastCheckTime")),
            failed_checks=_count(analysis.get("failedChecks")),
            rolled_back_generation=rolled_back if isinstance(rolled_back, int) else None,
            route=recorded_route(raw),
            managed_routes=names(raw.get("managedRoutes")),
            added_candidate_routes=names(raw.get("addedCandidateRoutes")),
            conditions=tuple(dict(c) for c in raw.get("conditions") or [] if isinstance(c, Mapping)),
        )

    def route_target(self) -> RouteTarget | None:
        """The object the managed routes belong to, even if the spec has moved on since."""
        if self.route is None:
            return None
        kind, ref = self.route
        namespace, name = ref.split("/", 1)
        return RouteTarget(kind, name, namespace)
