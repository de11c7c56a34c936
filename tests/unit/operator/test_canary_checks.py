"""The analysis checks: the spec's forms (CRD schema and parse_spec), the built-in PromQL, one
pass's verdict check by check, and what it does to the step and the status."""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import pytest
import yaml

from devcluster.errors import ApiStatusError
from kserve_operator.errors import InvalidSpec
from kserve_operator.planning import canary as plan
from kserve_operator.planning import canary_checks as checks
from kserve_operator.planning.canary_checks import CheckReading, check_queries, judge
from kserve_operator.planning.events import WARNING
from kserve_operator.resources import canary as res
from kserve_operator.resources.canary import CanarySpec, CanaryStatus, CheckSpec
from kserve_operator.resources.canary_conditions import CanaryPhase, CanaryReason, CheckResult
from tests.unit.operator.canary_shapes import NAMESPACE, canary_spec, raw_spec
from tests.unit.operator.test_canary_spec import admit

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
BUILT_IN = [{"name": "request-success-rate"}, {"name": "request-duration"}]


def with_checks(checks_raw: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
    return {"weights": [10, 50], "interval": "1m", "analysis": {"checks": checks_raw, **analysis}}


def checked(checks_raw: list[dict[str, Any]] = BUILT_IN, **analysis: Any) -> CanarySpec:
    return canary_spec(percent=50, steps=with_checks(checks_raw, **analysis))


def analysis_of(spec: CanarySpec) -> res.AnalysisSpec:
    assert spec.steps is not None and spec.steps.analysis is not None
    return spec.steps.analysis


# --- the spec -------------------------------------------------------------------------------

def test_built_in_checks_take_their_default_bounds() -> None:
    analysis = analysis_of(checked())
    assert analysis.checks == (CheckSpec("request-success-rate", None, None, 99.0),
                               CheckSpec("request-duration", None, 500.0, None))
    assert (analysis.failure_limit, analysis.window_seconds, analysis.built_in) == (1, 60.0, True)
    tuned = analysis_of(checked([{"name": "request-success-rate", "min": 99.5},
                                 {"name": "request-duration", "max": 250},
                                 {"name": "queue-depth", "query": "max(queue)", "max": 10}],
                                interval="2m", failureLimit=3))
    assert [(c.name, c.min, c.max, c.query) for c in tuned.checks] == [
        ("request-success-rate", 99.5, None, None), ("request-duration", None, 250.0, None),
        ("queue-depth", None, 10.0, "max(queue)")]
    assert (tuned.failure_limit, tuned.window_seconds) == (3, 120.0)


def test_the_single_query_form_is_one_custom_check_named_query() -> None:
    spec = canary_spec(steps={"weights": [10], "interval": "1m",
                              "analysis": {"query": "max(errors)", "max": 0.05, "failureLimit": 2}})
    analysis = analysis_of(spec)
    assert analysis.checks == (CheckSpec("query", "max(errors)", 0.05, None),)
    assert not analysis.built_in and analysis.failure_limit == 2


@pytest.mark.parametrize(("analysis", "words"), [
    ({"checks": BUILT_IN, "query": "q", "max": 1}, "checks, or a query with max/min"),
    ({}, "checks, or a query with max/min"),
    ({"checks": BUILT_IN, "max": 1}, "max and min go on each check"),
    ({"checks": []}, "1 to 10 checks"),
    ({"checks": [{"name": "request-duration"}, {"name": "request-duration", "max": 9}]}, "names a check twice"),
    ({"checks": [{"name": "request-success-rate", "query": "q"}]}, "is built in and takes no query"),
    ({"checks": [{"name": "request-success-rate", "max": 99}]}, "takes a min"),
    ({"checks": [{"name": "request-duration", "min": 1}]}, "takes a max"),
    ({"checks": [{"name": "errors"}]}, "check errors needs a query"),
    ({"checks": [{"name": "errors", "query": "q"}]}, "check errors needs a max or a min"),
    ({"checks": [{"name": "errors", "query": "q", "min": 2, "max": 1}]}, r"min \(2\) is above max \(1\)"),
    ({"checks": [{"name": "Bad Name", "query": "q", "max": 1}]}, "lowercase name"),
    ({"checks": BUILT_IN, "interval": "soon"}, "steps.analysis.interval 'soon' is not a duration"),
    ({"checks": BUILT_IN, "interval": "0s"}, "interval must be longer than 0s"),
])
def test_parse_spec_refuses(analysis: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        canary_spec(steps={"weights": [10], "interval": "1m", "analysis": analysis})


def test_built_in_checks_need_a_candidate_service_of_its_own() -> None:
    outside = raw_spec(candidate={"host": "api.example.com"}, steps=with_checks(BUILT_IN))
    with pytest.raises(InvalidSpec, match=r"api\.example\.com is not one: use a custom check"):
        res.parse_spec(outside, NAMESPACE)
    subsets = raw_spec(stable={"host": "reviews", "subset": "v1"}, candidate={"host": "reviews", "subset": "v2"},
                       steps=with_checks([{"name": "request-duration"}]))
    with pytest.raises(InvalidSpec, match=r"share reviews\.models\.svc\.cluster\.local"):
        res.parse_spec(subsets, NAMESPACE)
    subsets["steps"] = with_checks([{"name": "v2-errors", "query": 'max(errors{version="v2"})', "max": 1}])
    assert res.parse_spec(subsets, NAMESPACE).candidate.service == ("models", "reviews")
    short = res.parse_spec(raw_spec(candidate={"host": "reviews-v2.prod"}, steps=with_checks(BUILT_IN)), NAMESPACE)
    assert short.candidate.service == ("prod", "reviews-v2")


def test_the_schema_admits_both_forms() -> None:
    admitted = admit(raw_spec(steps=with_checks([*BUILT_IN, {"name": "q", "query": "up", "min": 1}],
                                                interval="30s")))
    assert admitted["spec"]["steps"]["analysis"]["failureLimit"] == 1
    admit(raw_spec(steps={"weights": [10], "interval": "1m", "analysis": {"query": "q", "max": 0.05}}))


@pytest.mark.parametrize(("analysis", "words"), [
    ({"checks": BUILT_IN, "query": "q", "max": 1}, "set checks, or the single query"),
    ({"failureLimit": 2}, "set checks, or the single query"),
    ({"query": "q"}, "set a max or a min bound"),
    ({"checks": BUILT_IN, "min": 1}, "with checks, max and min go on each check"),
    ({"checks": [{"name": "request-duration", "query": "q"}]}, "built in and take no query"),
    ({"checks": [{"name": "errors", "max": 1}]}, "a custom check (any other name) needs one"),
    ({"checks": [{"name": "request-success-rate", "max": 1}]}, "takes a min"),
    ({"checks": [{"name": "request-duration", "min": 1}]}, "takes a max"),
    ({"checks": [{"name": "errors", "query": "q"}]}, "a custom check needs a max or a min bound"),
    ({"checks": [{"name": "Errors", "query": "q", "max": 1}]}, "should match"),
    ({"checks": []}, "should have at least 1 items"),
])
def test_the_schema_rejects(analysis: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiStatusError) as caught:
        admit(raw_spec(steps={"weights": [10], "interval": "1m", "analysis": analysis}))
    assert words in str(caught.value.status_body())


def test_the_sample_uses_the_built_in_checks() -> None:
    sample = pathlib.Path(__file__).resolve().parents[3] / "manifests" / "samples" / "modelcanary.yaml"
    body = yaml.safe_load(sample.read_text())
    spec = res.parse_spec(body["spec"], body["metadata"]["namespace"])
    assert [c.name for c in analysis_of(spec).checks] == ["request-success-rate", "request-duration"]
    assert all(c.built_in for c in analysis_of(spec).checks)


# --- the queries -----------------------------------------------------------------------------

def test_built_in_queries_read_istio_metrics_of_the_candidate_predictor_service() -> None:
    spec = checked(interval="2m")
    (success, rate_query), (duration, duration_query) = check_queries(spec)
    assert (success.name, duration.name) == ("request-success-rate", "request-duration")
    selector = ('reporter="destination", destination_service_namespace="models", '
                'destination_service_name="torch-mnist-v2-predictor"')
    assert rate_query == (
        f'(sum(rate(istio_requests_total{{{selector}, response_code!~"5.*"}}[2m])) or vector(0))'
        f" / (sum(rate(istio_requests_total{{{selector}}}[2m])) > 0) * 100")
    assert duration_query == (
        f"histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{{{selector}}}[2m])) by (le))"
        f' and on() (sum(rate(istio_request_duration_milliseconds_bucket{{{selector}, le="+Inf"}}[2m])) > 0)')


def test_custom_queries_are_used_as_written() -> None:
    spec = checked([{"name": "request-duration"}, {"name": "gpu", "query": 'max(gpu{model="v2"})', "max": 90}])
    assert [q for _, q in check_queries(spec)][1] == 'max(gpu{model="v2"})'
    assert check_queries(canary_spec()) == ()


@pytest.mark.parametrize(("value", "literal"), [
    ("torch-mnist-predictor", '"torch-mnist-predictor"'),
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ("a\nb", '"a\\nb"'),
])
def test_label_values_are_escaped(value: str, literal: str) -> None:
    assert checks.promql_string(value) == literal
    assert f"destination_service_name={literal}" in checks.destination_selector("ns", value)


@pytest.mark.parametrize(("seconds", "text"), [(60, "1m"), (90, "90s"), (7200, "2h"), (30, "30s"), (0.2, "1s")])
def test_windows_are_written_in_whole_units(seconds: float, text: str) -> None:
    assert checks.promql_duration(seconds) == text


# --- one pass ----------------------------------------------------------------------------------

def test_every_check_is_judged_and_reported() -> None:
    passed = judge(analysis_of(checked()).checks, [CheckReading(99.9), CheckReading(120.0)])
    assert passed.result == CheckResult.PASSED
    assert passed.summary() == "request-success-rate 99.9 >= 99; request-duration 120 <= 500"
    assert passed.as_status() == [
        {"name": "request-success-rate", "value": 99.9, "min": 99.0, "passed": True, "result": "Passed",
         "message": "99.9 >= 99"},
        {"name": "request-duration", "value": 120.0, "max": 500.0, "passed": True, "result": "Passed",
         "message": "120 <= 500"}]


@pytest.mark.parametrize(("readings", "result", "summary"), [
    ([CheckReading(90.0), CheckReading(120.0)], "Failed", "request-success-rate 90 is below the minimum 99"),
    ([CheckReading(99.9), CheckReading(2000.0)], "Failed", "request-duration 2000 is above the maximum 500"),
    ([CheckReading(90.0), CheckReading(error="query returned no samples", no_data=True)], "Failed",
     "request-success-rate 90 is below the minimum 99"),  # a failure is a failure, whatever the others say
    ([CheckReading(99.9), CheckReading(error="query returned no samples", no_data=True)], "NoData",
     "request-duration no data: query returned no samples"),
    ([CheckReading(error="Prometheus is unreachable"), CheckReading(error="no samples", no_data=True)],
     "MetricsUnavailable", "request-success-rate no answer: Prometheus is unreachable; "
                           "request-duration no data: no samples"),
])
def test_one_failure_fails_the_pass_else_one_missing_value_holds_it(
    readings: list[CheckReading], result: str, summary: str,
) -> None:
    verdict = judge(analysis_of(checked()).checks, readings)
    assert (verdict.result, verdict.summary()) == (result, summary)
    assert [c["passed"] for c in verdict.as_status()] == [r.value is not None and c.out_of_bounds(r.value) is None
                                                          for c, r in zip(analysis_of(checked()).checks, readings,
                                                                          strict=True)]


def after(decision: plan.StepDecision) -> CanaryStatus:
    return CanaryStatus(phase=decision.phase, percent=decision.percent, step=decision.step,
                        last_step_time=decision.last_step_time, last_check_time=decision.last_check_time,
                        failed_checks=decision.failed_checks, rolled_back_generation=decision.rolled_back_generation,
                        conditions=({"type": "Progressing", "reason": decision.reason, "message": decision.message},))


def minutes(n: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=n)


def test_several_checks_step_hold_and_roll_back_together() -> None:
    spec = checked(failureLimit=2)
    at_ten = after(plan.next_step(spec, CanaryStatus(), 1, None, None, T0))
    good = judge(analysis_of(spec).checks, [CheckReading(99.9), CheckReading(120.0)])
    stepped = plan.next_step(spec, at_ten, 1, None, good, minutes(1))
    assert (stepped.percent, stepped.phase) == (50, CanaryPhase.ACTIVE)
    assert "analysis passed (request-success-rate 99.9 >= 99; request-duration 120 <= 500)" in stepped.message

    quiet = judge(analysis_of(spec).checks, [CheckReading(99.9), CheckReading(error="no samples", no_data=True)])
    held = plan.next_step(spec, at_ten, 1, None, quiet, minutes(1))
    assert (held.percent, held.reason, held.failed_checks) == (10, CanaryReason.NO_DATA, 0)
    assert held.requeue_after == 60 and "inconclusive (request-duration no data: no samples)" in held.message

    slow = judge(analysis_of(spec).checks, [CheckReading(99.9), CheckReading(2000.0)])
    once = plan.next_step(spec, after(held), 1, None, slow, minutes(2))
    assert (once.percent, once.reason, once.failed_checks) == (10, CanaryReason.ANALYSIS_FAILED, 1)
    twice = plan.next_step(spec, after(once), 1, None, slow, minutes(3))
    assert (twice.percent, twice.phase) == (0, CanaryPhase.ROLLED_BACK)
    assert "request-duration 2000 is above the maximum 500" in twice.message


def test_the_status_reports_each_check_and_an_inconclusive_pass_warns_once() -> None:
    spec = checked()
    status = plan.CanaryStatus(percent=10, last_step_time=T0, phase=CanaryPhase.PROGRESSING)
    quiet = judge(analysis_of(spec).checks, [CheckReading(error="Prometheus answered HTTP 503"), CheckReading(120.0)])
    decision = plan.next_step(spec, status, 1, None, quiet, minutes(1))
    assert decision.reason == CanaryReason.METRICS_UNAVAILABLE
    analysis = checks.analysis_status(None, failed_checks=0, last_check="2026-01-01T00:01:00Z", evaluated=quiet)
    assert analysis == {
        "failedChecks": 0, "lastCheckTime": "2026-01-01T00:01:00Z", "result": "MetricsUnavailable",
        "checks": [{"name": "request-success-rate", "min": 99.0, "passed": False, "result": "MetricsUnavailable",
                    "message": "no answer: Prometheus answered HTTP 503"},
                   {"name": "request-duration", "value": 120.0, "max": 500.0, "passed": True, "result": "Passed",
                    "message": "120 <= 500"}]}
    # Between passes the last pass stays in the status.
    assert checks.analysis_status(analysis, failed_checks=0, last_check=None, evaluated=None) == {
        "failedChecks": 0, "result": "MetricsUnavailable", "checks": analysis["checks"]}

    def progressing(message: str) -> dict[str, Any]:
        return {"phase": CanaryPhase.PROGRESSING, "conditions": [
            {"type": "Progressing", "status": "True", "reason": CanaryReason.METRICS_UNAVAILABLE, "message": message}]}
    first = plan.plan_events({"phase": CanaryPhase.PROGRESSING}, progressing(decision.message))
    assert [(e.type, e.reason) for e in first] == [(WARNING, CanaryReason.METRICS_UNAVAILABLE)]
    again = plan.next_step(spec, after(decision), 1, None, quiet, minutes(2))
    assert again.message == decision.message
    assert plan.plan_events(progressing(decision.message), progressing(again.message)) == []
