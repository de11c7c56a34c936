"""The ModelCanary's analysis checks: the PromQL of the built-in ones, and the verdict of one pass.

Pure: the controller runs the queries `check_queries` names and hands back what Prometheus said
(`CheckReading`); `judge` turns the readings into one `AnalysisResult` that `planning.canary`
steps, holds or rolls back on, and that the status reports check by check.

The built-in checks read Istio's standard metrics as the candidate's sidecar reports them
(`reporter="destination"`), for the candidate's Service (`destination_service_namespace`,
`destination_service_name`: KServe's `NAME-predictor` for an InferenceService), the way Flagger's
built-in checks do:

- request-success-rate: the percent of responses that are not 5xx. The non-5xx side falls back to
  0 (`or vector(0)`), so a candidate answering only 5xx fails instead of finding no data; no
  request in the window (a total of 0) is no data, not a division by zero.
- request-duration: the p99 of `istio_request_duration_milliseconds`, in milliseconds; no request
  in the window is no data (histogram_quantile would answer NaN).

A check passes within its bounds, fails outside them, and is inconclusive when its query errors
(MetricsUnavailable) or finds no data (NoData). A pass with a failed check fails (whatever the
others say); otherwise one inconclusive check holds the step; all must pass to step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.resources.canary import CHECK_DURATION, CHECK_SUCCESS_RATE, CanarySpec, CheckSpec
from kserve_operator.resources.canary_conditions import CheckResult

REQUESTS_METRIC = "istio_requests_total"
DURATION_BUCKETS_METRIC = "istio_request_duration_milliseconds_bucket"
DURATION_QUANTILE = 0.99


def promql_string(value: str) -> str:
    """`value` as a PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def promql_duration(seconds: float) -> str:
    """A range selector's duration: whole hours, minutes or seconds (1m, 90s)."""
    whole = max(round(seconds), 1)
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def destination_selector(namespace: str, service: str, *extra: str) -> str:
    """The label matchers of the series the candidate's sidecar reports for its Service."""
    matchers = ['reporter="destination"', f"destination_service_namespace={promql_string(namespace)}",
                f"destination_service_name={promql_string(service)}", *extra]
    return "{" + ", ".join(matchers) + "}"


def success_rate_query(namespace: str, service: str, window: str) -> str:
    ok = destination_selector(namespace, service, 'response_code!~"5.*"')
    every = destination_selector(namespace, service)
    return (f"(sum(rate({REQUESTS_METRIC}{ok}[{window}])) or vector(0))"
            f" / (sum(rate({REQUESTS_METRIC}{every}[{window}])) > 0) * 100")


def duration_query(namespace: str, service: str, window: str) -> str:
    buckets = destination_selector(namespace, service)
    requests = destination_selector(namespace, service, 'le="+Inf"')
    return (f"histogram_quantile({DURATION_QUANTILE}, sum(rate({DURATION_BUCKETS_METRIC}{buckets}[{window}])) by (le))"
            f" and on() (sum(rate({DURATION_BUCKETS_METRIC}{requests}[{window}])) > 0)")


def check_queries(spec: CanarySpec) -> tuple[tuple[CheckSpec, str], ...]:
    """Each check of the spec's analysis with the PromQL that measures it."""
    analysis = spec.steps.analysis if spec.steps else None
    if analysis is None:
        return ()
    window = promql_duration(analysis.window_seconds)
    out: list[tuple[CheckSpec, str]] = []
    for check in analysis.checks:
        if check.query is not None:
            out.append((check, check.query))
            continue
        service = spec.candidate.service
        assert service is not None, "parse_spec refuses built-in checks without a candidate Service"
        build = success_rate_query if check.name == CHECK_SUCCESS_RATE else duration_query
        assert check.name in (CHECK_SUCCESS_RATE, CHECK_DURATION)
        out.append((check, build(service[0], service[1], window)))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CheckReading:
    """What Prometheus said for one check's query: a value, no data, or an error."""

    value: float | None = None
    error: str | None = None  # why there is no value
    no_data: bool = False  # the error is "no samples" (nothing to judge), not a failed query


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    name: str
    result: str  # RESULT_*
    message: str
    value: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def passed(self) -> bool:
        return self.result == CheckResult.PASSED

    def as_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "passed": self.passed, "result": self.result,
                                 "message": self.message}
        for key, number in (("value", self.value), ("min", self.min), ("max", self.max)):
            if number is not None:
                entry[key] = number
        return entry


@dataclasses.dataclass(frozen=True)
class AnalysisResult:
    """One analysis pass: every check's outcome, in the spec's order."""

    checks: tuple[CheckOutcome, ...]

    @property
    def result(self) -> str:
        """Failed if a check failed; else inconclusive (MetricsUnavailable before NoData); else Passed."""
        results = {check.result for check in self.checks}
        for result in (CheckResult.FAILED, CheckResult.METRICS_UNAVAILABLE, CheckResult.NO_DATA):
            if result in results:
                return result
        return CheckResult.PASSED

    def summary(self) -> str:
        """What decided the pass: the failed checks, else the inconclusive ones, else every value."""
        decisive = [check for check in self.checks if check.result == self.result]
        if self.result != CheckResult.FAILED:
            decisive = [check for check in self.checks if not check.passed] or decisive
        return "; ".join(f"{check.name} {check.message}" for check in decisive)

    def as_status(self) -> list[dict[str, Any]]:
        return [check.as_status() for check in self.checks]


def judge(checks: Sequence[CheckSpec], readings: Sequence[CheckReading]) -> AnalysisResult:
    """Each check's reading against its bounds."""
    outcomes = []
    for check, reading in zip(checks, readings, strict=True):
        bounds = {"min": check.min, "max": check.max}
        if reading.value is None:
            result = CheckResult.NO_DATA if reading.no_data else CheckResult.METRICS_UNAVAILABLE
            why = "no data" if reading.no_data else "no answer"
            outcomes.append(CheckOutcome(check.name, result, f"{why}: {reading.error or 'no value'}", **bounds))
            continue
        failure = check.out_of_bounds(reading.value)
        if failure is not None:
            outcomes.append(CheckOutcome(check.name, CheckResult.FAILED, failure, reading.value, **bounds))
            continue
        within = " and ".join(f"{'>=' if key == 'min' else '<='} {bound:g}"
                              for key, bound in bounds.items() if bound is not None)
        outcomes.append(CheckOutcome(check.name, CheckResult.PASSED, f"{reading.value:g} {within}", reading.value,
                                     **bounds))
    return AnalysisResult(tuple(outcomes))


def analysis_status(old: Mapping[str, Any] | None, *, failed_checks: int, last_check: str | None,
                    evaluated: AnalysisResult | None) -> dict[str, Any]:
    """`status.analysis`: the count of failed passes in a row, and the last pass check by check
    (kept from `old` between passes)."""
    status: dict[str, Any] = {"failedChecks": failed_checks}
    if last_check is not None:
        status["lastCheckTime"] = last_check
    if evaluated is not None:
        status["result"], status["checks"] = evaluated.result, evaluated.as_status()
    else:
        for key in ("result", "checks"):
            if (old or {}).get(key) is not None:
                status[key] = (old or {})[key]
    return status
