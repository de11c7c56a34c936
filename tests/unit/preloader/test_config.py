"""KServe's S3 environment and the command line become one frozen Config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from preloader.config import MiB, load_config, parse_size, s3_settings_from_env
from preloader.errors import UsageError


def test_defaults_follow_the_standard_chain() -> None:
    s3 = s3_settings_from_env({})
    assert (s3.endpoint_url, s3.anonymous, s3.verify, s3.addressing_style, s3.retry_mode) == (
        None,
        False,
        True,
        "auto",
        "standard",
    )


def test_kserve_s3_endpoint_gets_a_scheme_from_s3_use_https() -> None:
    assert s3_settings_from_env({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}).endpoint_url == "http://minio:9000"
    assert s3_settings_from_env({"S3_ENDPOINT": "minio:9000"}).endpoint_url == "https://minio:9000"


def test_aws_endpoint_url_wins_over_s3_endpoint() -> None:
    env = {"AWS_ENDPOINT_URL": "http://a:1", "S3_ENDPOINT": "b:2"}
    assert s3_settings_from_env(env).endpoint_url == "http://a:1"


def test_tls_verification_and_ca_bundle() -> None:
    assert s3_settings_from_env({"S3_VERIFY_SSL": "0", "AWS_CA_BUNDLE": "/ca.pem"}).verify is False
    assert s3_settings_from_env({"AWS_CA_BUNDLE": "/ca.pem"}).verify == "/ca.pem"


def test_anonymous_region_and_virtual_addressing() -> None:
    s3 = s3_settings_from_env(
        {"awsAnonymousCredential": "True", "AWS_DEFAULT_REGION": "eu-west-1", "S3_USER_VIRTUAL_BUCKET": "true"}
    )
    assert s3.anonymous and s3.region == "eu-west-1" and s3.addressing_style == "virtual"


@pytest.mark.parametrize("env", [{"S3_USE_HTTPS": "maybe"}, {"AWS_RETRY_MODE": "legacy"}, {"AWS_MAX_ATTEMPTS": "0"}])
def test_bad_env_is_a_usage_error(env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        s3_settings_from_env(env)


@pytest.mark.parametrize(
    "text,value", [("4096", 4096), ("16MiB", 16 * MiB), ("1GiB", 1 << 30), ("2G", 2 * 10**9), ("64k", 64000)]
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_cli_flags_land_in_a_frozen_config() -> None:
    config = load_config(
        [
            "s3://b/m/",
            "--device",
            "cuda:1",
            "--cache-dir",
            "/c",
            "--part-size",
            "8MiB",
            "--concurrency",
            "4",
            "--max-device-bytes",
            "1GiB",
        ],
        {"AWS_ENDPOINT_URL": "http://x:1"},
    )
    assert config.cache_dir == Path("/c") and config.device == "cuda:1"
    assert config.transfer.part_size == 8 * MiB and config.transfer.concurrency == 4
    assert config.max_device_bytes == 1 << 30 and config.s3.endpoint_url == "http://x:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.device = "cpu"  # type: ignore[misc]


@pytest.mark.parametrize(
    "argv", [[], ["s3://b/k", "--part-size", "1k"], ["s3://b/k", "--max-inflight", "1MiB"], ["s3://b/k", "--bogus"]]
)
def test_bad_cli_is_a_usage_error_not_a_sys_exit(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        load_config(argv, {})
