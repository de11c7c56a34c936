"""The operator, the preloader extra and the dev tools install together (`make install` puts all
three in one environment): pip finds no conflict, and the known trap is avoided, kubernetes 37.0.2
wanting python-dateutil>=3 where botocore wants <3."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from packaging.version import Version


def test_pip_finds_no_conflict_in_the_environment() -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_client_is_the_36_line_beside_botocore() -> None:
    assert Version(metadata.version("kubernetes")).major == 36
    assert Version(metadata.version("python-dateutil")) < Version("3")
    assert metadata.version("botocore")
    import kubernetes.aio.client  # the asynchronous form the operator uses

    assert hasattr(kubernetes.aio.client, "CustomObjectsApi")
