"""The Memcached replica math and scaling window, as pure functions (no server, no clock)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kserve_operator.planning.memcached import ScaleDownWindow, decide_replicas, wanted_replicas
from kserve_operator.resources.memcached import MemcachedSpec

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def spec(size: int = 1, *, target: int | None = 100, buffer: int = 0, max_size: int = 100,
         window: float = 60.0) -> MemcachedSpec:
    return MemcachedSpec(size=size, scaling_window_seconds=window, cold_start_buffer=buffer, max_size=max_size,
                         target_connections_per_replica=target, metrics_query=None)


specs = st.builds(
    lambda size, extra, target, buffer, window: spec(size, target=target, buffer=buffer,
                                                     max_size=max(1, min(100, size + extra)), window=window),
    st.integers(0, 100), st.integers(0, 100), st.integers(1, 10_000), st.integers(0, 20), st.floats(1, 3600),
)
connections = st.floats(0, 1e7, allow_nan=False)


class TestWanted:
    def test_demand_rounds_up(self) -> None:
        assert wanted_replicas(spec(1, target=100), 250) == 3

    def test_size_is_the_floor(self) -> None:
        assert wanted_replicas(spec(4, target=100), 10) == 4

    def test_spares_are_added_above_demand(self) -> None:
        assert wanted_replicas(spec(1, target=100, buffer=2), 250) == 5

    def test_cap_applies_after_spares(self) -> None:
        assert wanted_replicas(spec(1, target=100, buffer=2, max_size=4), 250) == 4

    def test_idle_size_zero_wants_zero_even_with_spares(self) -> None:
        assert wanted_replicas(spec(0, target=100, buffer=3), 0) == 0

    def test_without_autoscaling_it_is_size(self) -> None:
        assert wanted_replicas(spec(7, target=None, buffer=3), 10_000) == 7

    @given(specs, connections)
    def test_bounds(self, s: MemcachedSpec, conns: float) -> None:
        wanted = wanted_replicas(s, conns)
        assert 0 <= wanted <= s.max_size
        assert wanted >= min(s.size, s.max_size)

    @given(specs, connections, connections)
    def test_monotonic_in_connections(self, s: MemcachedSpec, a: float, b: float) -> None:
        low, high = sorted((a, b))
        assert wanted_replicas(s, low) <= wanted_replicas(s, high)

    @given(specs, connections)
    @example(spec(0, target=2, max_size=1), 5e-324)  # found by CI: 5e-324 / 2 underflows to 0.0
    def test_enough_capacity_unless_capped(self, s: MemcachedSpec, conns: float) -> None:
        wanted = wanted_replicas(s, conns)
        assert s.target_connections_per_replica is not None
        if wanted < s.max_size:
            assert wanted * s.target_connections_per_replica >= conns


class TestWindow:
    def test_scale_up_is_immediate(self) -> None:
        d = decide_replicas(spec(1), connections=500, current=2, window=None, now=T0)
        assert (d.replicas, d.window) == (5, None)

    def test_scale_down_waits_for_the_whole_window(self) -> None:
        s = spec(1, window=60)
        d1 = decide_replicas(s, connections=100, current=5, window=None, now=T0)
        assert d1.replicas == 5 and d1.window == ScaleDownWindow(T0, 1)
        d2 = decide_replicas(s, connections=100, current=5, window=d1.window, now=T0 + datetime.timedelta(seconds=59))
        assert d2.replicas == 5
        d3 = decide_replicas(s, connections=100, current=5, window=d2.window, now=T0 + datetime.timedelta(seconds=60))
        assert d3.replicas == 1 and d3.window is None

    def test_a_window_stored_in_status_is_never_shorter(self) -> None:
        opened = ScaleDownWindow(T0 + datetime.timedelta(seconds=10, microseconds=400_000), 1)
        restored = ScaleDownWindow.from_status(opened.to_status())
        assert restored is not None and restored.since >= opened.since
        assert restored.since - opened.since < datetime.timedelta(seconds=1)

    def test_the_highest_value_seen_in_the_window_wins(self) -> None:
        s = spec(1, window=60)
        d1 = decide_replicas(s, connections=100, current=5, window=None, now=T0)
        d2 = decide_replicas(s, connections=300, current=5, window=d1.window, now=T0 + datetime.timedelta(seconds=30))
        d3 = decide_replicas(s, connections=0, current=5, window=d2.window, now=T0 + datetime.timedelta(seconds=61))
        assert d3.replicas == 3

    def test_demand_back_at_the_running_count_restarts_the_window(self) -> None:
        s = spec(1, window=60)
        d1 = decide_replicas(s, connections=100, current=5, window=None, now=T0)
        d2 = decide_replicas(s, connections=500, current=5, window=d1.window, now=T0 + datetime.timedelta(seconds=30))
        assert d2.replicas == 5 and d2.window is None

    def test_scale_to_zero_after_an_idle_window(self) -> None:
        s = spec(0, buffer=1, window=300)
        d1 = decide_replicas(s, connections=0, current=2, window=None, now=T0)
        assert d1.replicas == 2
        d2 = decide_replicas(s, connections=0, current=2, window=d1.window, now=T0 + datetime.timedelta(seconds=300))
        assert d2.replicas == 0

    def test_a_new_cache_starts_warm_and_opens_a_window_towards_zero(self) -> None:
        d = decide_replicas(spec(0, window=30), connections=0, current=None, window=None, now=T0)
        assert d.replicas == 1 and d.window == ScaleDownWindow(T0, 0)

    def test_unusable_metrics_hold_the_current_replicas(self) -> None:
        d = decide_replicas(spec(1), connections=None, current=4, window=None, now=T0)
        assert d.replicas == 4

    def test_unusable_metrics_without_a_deployment_start_at_size(self) -> None:
        assert decide_replicas(spec(3), connections=None, current=None, window=None, now=T0).replicas == 3
        assert decide_replicas(spec(0), connections=None, current=None, window=None, now=T0).replicas == 1

    def test_lowering_max_size_caps_at_once(self) -> None:
        d = decide_replicas(spec(1, max_size=3), connections=1000, current=8, window=None, now=T0)
        assert d.replicas == 3

    def test_autoscaling_off_follows_size_at_once(self) -> None:
        d = decide_replicas(spec(2, target=None), connections=None, current=6, window=None, now=T0)
        assert d.replicas == 2


@pytest.mark.parametrize("current", [1, 3, 10, 50])
@given(s=specs, conns=connections)
def test_no_decision_scales_down_without_a_window(current: int, s: MemcachedSpec, conns: float) -> None:
    """Whatever the demand, a first look never scales down below what runs (unless capped)."""
    d = decide_replicas(s, connections=conns, current=current, window=None, now=T0)
    assert d.replicas >= min(current, s.max_size)


@given(s=specs, steps=st.lists(st.tuples(connections, st.floats(0, 600)), min_size=1, max_size=30))
def test_replicas_never_drop_before_a_full_window(s: MemcachedSpec, steps: list[tuple[float, float]]) -> None:
    """Property: any scale-down happens at least a whole window after the window opened."""
    now, current, window = T0, 5, None
    for conns, dt in steps:
        now += datetime.timedelta(seconds=dt)
        d = decide_replicas(s, connections=conns, current=current, window=window, now=now)
        if d.replicas < current and current <= s.max_size:
            assert window is not None
            assert (now - window.since).total_seconds() >= s.scaling_window_seconds
        assert d.replicas >= wanted_replicas(s, conns) or d.replicas == s.max_size
        current, window = d.replicas, d.window
