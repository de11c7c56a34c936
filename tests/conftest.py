"""Shared fixtures: an emulated Kubernetes cluster per test, a client for it, and a kubeconfig."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge correctness, not speed: on a loaded 2-core CI machine a single example
# can exceed hypothesis's default 200 ms deadline, which would fail a correct test.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # devcluster/ is not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from devcluster import ClusterClient, EmulatedCluster  # noqa: E402

CRD_PATHS = [REPO_ROOT / "manifests" / "crds", REPO_ROOT / "tests" / "fixtures" / "crds"]
# The namespace the shipped manifests create for the preloader Jobs (the operator's PREWARM_NAMESPACE).
PREWARM_NAMESPACE = REPO_ROOT / "manifests" / "prewarm" / "namespace.yaml"


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    """An emulated API server with the project's and the test fixtures' CRDs and the pre-warm
    namespace, simulation on."""
    import yaml

    with EmulatedCluster([path for path in CRD_PATHS if path.exists()]) as running:
        running.client("setup").create("/api/v1/namespaces", yaml.safe_load(PREWARM_NAMESPACE.read_text()))
        yield running


@pytest.fixture
def kube(cluster: EmulatedCluster) -> ClusterClient:
    return ClusterClient(cluster.url, user_agent="pytest")


@pytest.fixture
def kubeconfig(cluster: EmulatedCluster, tmp_path: Path) -> Path:
    return cluster.write_kubeconfig(tmp_path / "kubeconfig")
