"""Fixtures: a real S3 (moto's server) on loopback, and real safetensors / torch files.

The server runs in this process on a free port; each test gets its own bucket, so tests do not
see each other's objects. Credentials are dummies: moto accepts any unless IAM auth is switched on
(see test_errors.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from devstack.metrics_stack import free_port
from preloader.config import Config, load_config

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard chain finds these; nothing reaches a real AWS account or instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"models-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def env(s3_endpoint: str) -> dict[str, str]:
    """KServe-style environment for the preloader."""
    return {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2"}


@pytest.fixture
def make_config(env: dict[str, str], tmp_path: Path) -> Any:
    def build(uri: str, *extra: str, **overrides: str) -> Config:
        argv = [
            uri,
            "--device",
            "cpu",
            "--termination-log",
            str(tmp_path / "termination-log"),
            "--part-size",
            "256KiB",
            "--progress",
            "never",
            *extra,
        ]
        return load_config(argv, {**env, **overrides})

    return build
