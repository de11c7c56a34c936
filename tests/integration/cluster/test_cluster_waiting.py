"""``wait_quiet`` and ``wait_for``: tests wait for the cluster to settle instead of sleeping."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from devcluster import ClusterClient, EmulatedCluster, wait_for

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def writer(cluster: EmulatedCluster) -> Iterator[tuple[threading.Event, list[float]]]:
    """A client that patches a ConfigMap every 50 ms (user agent "noisy") until told to stop."""
    noisy = ClusterClient(cluster.url, user_agent="noisy")
    noisy.create(CONFIGMAPS, {"metadata": {"name": "c"}})
    stop = threading.Event()
    last: list[float] = [time.time()]

    def run() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            noisy.patch(f"{CONFIGMAPS}/c", {"data": {"n": str(count)}})
            last[0] = time.time()
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield stop, last
    stop.set()
    thread.join()


def test_wait_quiet_returns_at_once_on_a_quiet_cluster(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(CONFIGMAPS, {"metadata": {"name": "a"}})
    time_of_write = time.time()
    cluster.wait_quiet(quiet_for=0.3, timeout=5)
    assert time.time() - time_of_write >= 0.3
    started = time.monotonic()
    cluster.wait_quiet(quiet_for=0.3, timeout=5)  # already quiet: no further wait
    assert time.monotonic() - started < 0.2


def test_wait_quiet_waits_for_the_writer_to_stop(cluster: EmulatedCluster,
                                                 writer: tuple[threading.Event, list[float]]) -> None:
    stop, last = writer
    threading.Timer(0.6, stop.set).start()
    cluster.wait_quiet(quiet_for=0.3, timeout=10)
    assert stop.is_set()
    assert time.time() - last[0] >= 0.3


def test_wait_quiet_times_out_listing_the_last_writes(cluster: EmulatedCluster,
                                                      writer: tuple[threading.Event, list[float]]) -> None:
    with pytest.raises(AssertionError) as info:
        cluster.wait_quiet(quiet_for=0.5, timeout=0.8)
    text = str(info.value)
    assert "the cluster saw writes within every 0.5s window for 0.8s" in text
    assert f"PATCH {CONFIGMAPS}/c -> 200 (noisy)" in text


def test_wait_quiet_by_user_agent(cluster: EmulatedCluster, writer: tuple[threading.Event, list[float]]) -> None:
    started = time.monotonic()
    cluster.wait_quiet(quiet_for=0.2, user_agent="kopf", timeout=5)  # noisy's writes do not count
    assert time.monotonic() - started < 1.0
    with pytest.raises(AssertionError, match="writes from 'noisy'"):
        cluster.wait_quiet(quiet_for=0.3, user_agent="noisy", timeout=0.5)


def test_wait_for_returns_the_value_or_says_what_it_saw(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    threading.Timer(0.2, lambda: kube.create(CONFIGMAPS, {"metadata": {"name": "late"}})).start()
    names = cluster.wait_for(lambda: [c["metadata"]["name"] for c in kube.list(CONFIGMAPS)], timeout=5)
    assert names == ["late"]

    def never() -> bool:
        return False
    with pytest.raises(AssertionError, match=r"never did not hold within 0.2s: saw 1 ConfigMap"):
        wait_for(never, 0.2, message=lambda: f"saw {len(kube.list(CONFIGMAPS))} ConfigMap")
