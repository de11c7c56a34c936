"""The pre-warm platform settings: where the Jobs run, the node cache, the retry cap."""

from __future__ import annotations

import pytest

from kserve_operator.settings import parse_settings


def test_defaults_put_the_jobs_and_the_cache_where_the_manifests_do() -> None:
    platform = parse_settings([], env={}).prewarm_platform
    assert (platform.namespace, platform.cache_path, platform.cache_max_bytes) == (
        "kserve-prewarm", "/var/cache/kserve-prewarm", None)
    assert platform.retry_max_seconds == 3600 and platform.image


def test_the_platform_sets_the_namespace_the_cache_and_its_bound() -> None:
    settings = parse_settings([], env={"PREWARM_NAMESPACE": "gpu-warm", "PREWARM_CACHE_HOST_PATH": "/mnt/nvme/cache/",
                                       "PREWARM_CACHE_MAX_BYTES": "200Gi", "PREWARM_RETRY_MAX_SECONDS": "600"})
    platform = settings.prewarm_platform
    assert (platform.namespace, platform.cache_path, platform.cache_max_bytes, platform.retry_max_seconds) == (
        "gpu-warm", "/mnt/nvme/cache", 200 * 2**30, 600)


def test_a_restricted_operator_also_watches_the_jobs_namespace() -> None:
    assert parse_settings(["-n", "team-a"], env={}).watched_namespaces == ("team-a", "kserve-prewarm")
    assert parse_settings([], env={}).watched_namespaces == ()  # cluster-wide already


@pytest.mark.parametrize("env", [{"PREWARM_CACHE_HOST_PATH": "relative/path"},
                                 {"PREWARM_CACHE_HOST_PATH": "/var/../etc"},
                                 {"PREWARM_CACHE_MAX_BYTES": "lots"}])
def test_a_bad_platform_setting_stops_the_operator_with_its_name(env: dict[str, str]) -> None:
    with pytest.raises(SystemExit, match="PREWARM_CACHE"):
        parse_settings([], env=env)
