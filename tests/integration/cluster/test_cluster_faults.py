"""Failures on demand (devcluster/faults.py): the next N requests on a method and path answer as told."""

from __future__ import annotations

import pytest

from devcluster import ApiError, ClusterClient, EmulatedCluster

CMS = "/api/v1/namespaces/default/configmaps"


def configmap(name: str, value: str = "1") -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": value}}


def test_the_next_n_matching_requests_get_a_429_with_retry_after(cluster: EmulatedCluster,
                                                               kube: ClusterClient) -> None:
    kube.create(CMS, configmap("c"))
    rule = cluster.inject_fault("PATCH", f"{CMS}/c", count=2, status=429, retry_after=5)
    for attempt in (1, 2):
        with pytest.raises(ApiError) as info:
            kube.patch(f"{CMS}/c", {"data": {"k": str(attempt + 1)}})
        assert info.value.status == 429
        assert dict(kube.last_headers).get("Retry-After") == "5"
        assert info.value.body["reason"] == "TooManyRequests"
        assert info.value.body["details"]["retryAfterSeconds"] == 5
        assert kube.get(f"{CMS}/c")["data"]["k"] == "1", "a failed request changes nothing"
    assert rule.answered == 2 and rule.exhausted
    assert kube.patch(f"{CMS}/c", {"data": {"k": "3"}})["data"]["k"] == "3"  # the third goes through
    statuses = [r.status for r in cluster.requests if r.method == "PATCH" and r.path == f"{CMS}/c"]
    assert statuses == [429, 429, 200], "the request log records what each request got"


def test_only_the_method_path_and_client_named_fail(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(CMS, configmap("c"))
    rule = cluster.inject_fault("PUT", f"{CMS}/c", count=1, status=409, user_agent="operator/")
    assert kube.get(f"{CMS}/c")["data"]["k"] == "1"  # another method
    kube.patch(f"{CMS}/c", {"data": {"k": "2"}})
    kube.create(CMS, configmap("d"))  # another path
    other = cluster.client(user_agent="pytest-other")
    live = other.get(f"{CMS}/c")
    assert other.request("PUT", f"{CMS}/c", live)["data"]["k"] == "2"  # another client
    assert rule.answered == 0
    operator = cluster.client(user_agent="operator/1.0")
    with pytest.raises(ApiError) as info:
        operator.request("PUT", f"{CMS}/c", operator.get(f"{CMS}/c"))
    assert info.value.status == 409 and info.value.body["reason"] == "Conflict"
    assert "Retry-After" not in dict(operator.last_headers)
    assert rule.answered == 1


def test_clear_faults_drops_the_rules_left(cluster: EmulatedCluster, kube: ClusterClient) -> None:
    kube.create(CMS, configmap("c"))
    cluster.inject_fault("GET", f"{CMS}/c", count=10, status=503)
    with pytest.raises(ApiError):
        kube.get(f"{CMS}/c")
    cluster.clear_faults()
    assert kube.get(f"{CMS}/c")["data"]["k"] == "1"


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"count": 0}, "count >= 1"),
    ({"status": 200}, "error status"),
    ({"retry_after": -1}, "negative"),
])
def test_a_rule_that_cannot_work_is_refused(cluster: EmulatedCluster, kwargs: dict[str, int], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        cluster.inject_fault("PATCH", f"{CMS}/c", **kwargs)  # type: ignore[arg-type]


def test_a_relative_path_is_refused(cluster: EmulatedCluster) -> None:
    with pytest.raises(ValueError, match="absolute"):
        cluster.inject_fault("PATCH", "api/v1/namespaces/default/configmaps/c")
