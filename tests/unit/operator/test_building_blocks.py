"""Small pure pieces: conditions, drift detection, Prometheus answers, backoff, settings."""

from __future__ import annotations

import datetime
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kserve_operator.clients.prometheus import parse_query_result
from kserve_operator.errors import ApiError, MetricsUnavailable
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.planning.diff import contains
from kserve_operator.resources import conditions as cond
from kserve_operator.settings import parse_settings

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class TestConditions:
    def test_transition_time_moves_only_on_flip(self) -> None:
        first = cond.set_condition([], type="Available", status="True", reason="Ready", message="m", now=T0)
        later = T0 + datetime.timedelta(hours=1)
        same = cond.set_condition(first, type="Available", status="True", reason="Ready", message="m2", now=later)
        assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
        flipped = cond.set_condition(same, type="Available", status="False", reason="Down", message="m", now=later)
        assert flipped[0]["lastTransitionTime"] == "2026-01-01T01:00:00Z"

    def test_one_entry_per_type_sorted(self) -> None:
        cs: list[dict[str, Any]] = []
        for t in ("Progressing", "Available", "Available"):
            cs = cond.set_condition(cs, type=t, status="True", reason="R", message="", now=T0)
        assert [c["type"] for c in cs] == ["Available", "Progressing"]


class TestContains:
    def test_extra_live_fields_are_fine(self) -> None:
        assert contains({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}})

    def test_changed_value_and_list_length_are_drift(self) -> None:
        assert not contains({"a": 1}, {"a": 2})
        assert not contains({"a": [1, 2]}, {"a": [1]})

    def test_int_and_float_compare_by_value_but_bools_do_not(self) -> None:
        assert contains({"a": 1.0}, {"a": 1})
        assert not contains({"a": 1}, {"a": True})

    @given(st.recursive(
        st.integers() | st.text(max_size=3) | st.booleans(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
        max_leaves=10,
    ))
    def test_everything_contains_itself(self, value: Any) -> None:
        assert contains(value, value)


class TestPrometheusAnswers:
    def vector(self, *values: str) -> dict[str, Any]:
        return {"status": "success", "data": {"resultType": "vector",
                                              "result": [{"metric": {}, "value": [0, v]} for v in values]}}

    def test_vector_samples_are_summed(self) -> None:
        assert parse_query_result(self.vector("3", "4.5")) == 7.5

    def test_scalar(self) -> None:
        assert parse_query_result({"status": "success", "data": {"resultType": "scalar", "result": [0, "2"]}}) == 2

    @pytest.mark.parametrize(("payload", "why"), [
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "no samples"),
        ({"status": "error", "error": "parse error"}, "parse error"),
        ("<html>", "unexpected answer"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "matrix"),
    ])
    def test_unusable_answers_say_why(self, payload: Any, why: str) -> None:
        with pytest.raises(MetricsUnavailable, match=why):
            parse_query_result(payload)

    @pytest.mark.parametrize("value", ["NaN", "+Inf", "many"])
    def test_values_that_are_not_numbers(self, value: str) -> None:
        with pytest.raises(MetricsUnavailable):
            parse_query_result(self.vector(value))


class TestBackoff:
    @given(st.integers(0, 50), st.integers(0, 2**32))
    def test_bounded_and_jittered(self, retry: int, seed: int) -> None:
        delay = backoff_delay(retry, base=1, cap=60, rng=random.Random(seed))
        ceiling = min(60, 2**retry)
        assert ceiling * 0.5 <= delay <= ceiling

    def test_grows(self) -> None:
        rng = random.Random(1)
        assert backoff_delay(0, rng=rng) <= 1 < backoff_delay(3, rng=random.Random(1)) <= 8


class TestApiErrors:
    @pytest.mark.parametrize(("status", "temporary"), [(0, True), (409, True), (429, True), (503, True),
                                                        (400, False), (403, False), (422, False)])
    def test_classification(self, status: int, temporary: bool) -> None:
        assert ApiError(status, "", "").temporary is temporary


class TestSettings:
    def test_defaults_watch_everything(self) -> None:
        s = parse_settings([], env={})
        assert s.all_namespaces and s.namespaces == () and s.prometheus_url is None and s.resync_seconds == 30

    def test_env_then_flags(self) -> None:
        env = {"PROMETHEUS_URL": "http://prom:9090", "WATCH_NAMESPACE": "a, b", "RESYNC_SECONDS": "5",
               "MEMCACHED_IMAGE": "m:1"}
        s = parse_settings([], env=env)
        assert s.namespaces == ("a", "b") and not s.all_namespaces and s.prometheus_url == "http://prom:9090"
        assert s.resync_seconds == 5 and s.memcached.memcached == "m:1"
        s2 = parse_settings(["-n", "c", "--prometheus-url", "http://other"], env=env)
        assert s2.namespaces == ("c",) and s2.prometheus_url == "http://other"
        assert parse_settings(["-A"], env=env).all_namespaces

    @pytest.mark.parametrize("env", [{"RESYNC_SECONDS": "soon"}, {"RESYNC_SECONDS": "-1"},
                                     {"OPERATOR_HTTP_PORT": "http"}, {"OPERATOR_HTTP_PORT": "70000"}])
    def test_bad_numbers_are_refused_with_the_variable_named(self, env: dict[str, str]) -> None:
        with pytest.raises(SystemExit, match=next(iter(env))):
            parse_settings([], env=env)
