"""Istio serves networking.istio.io v1 since 1.22; older meshes serve only v1beta1. The operator
reads and writes whichever the cluster serves (a 404 at one version means: try the other).

The v1beta1-only cluster uses Istio's CRD from tests/fixtures with the v1 version taken out,
as an Istio before 1.22 installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import EmulatedCluster
from devcluster.client import ApiError
from tests.conftest import REPO_ROOT
from tests.integration.operator.canary_world import (
    MCANARY,
    install_world,
    model_canary,
    vs_path,
    wait_phase,
    weights,
    without_weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "crds"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """Overrides the shared fixture: Istio's VirtualService served at v1beta1 only."""
    crds = tmp_path / "crds"
    crds.mkdir()
    istio = yaml.safe_load((FIXTURES / "networking.istio.io_virtualservices.yaml").read_text())
    v1beta1 = next(v for v in istio["spec"]["versions"] if v["name"] == "v1beta1")
    istio["spec"]["versions"] = [{**v1beta1, "storage": True}]
    (crds / "virtualservices.yaml").write_text(yaml.safe_dump(istio))
    (crds / "inferenceservices.yaml").write_text((FIXTURES / "serving.kserve.io_inferenceservices.yaml").read_text())
    with EmulatedCluster([REPO_ROOT / "manifests" / "crds", crds]) as running:
        yield running


def test_a_cluster_that_serves_only_v1beta1(kube: Any, start_operator: StartOperator) -> None:
    with pytest.raises(ApiError) as missing:
        kube.get(vs_path("v1").rsplit("/", 1)[0])
    assert missing.value.status == 404
    original = install_world(kube, version="v1beta1")
    start_operator(resync=30)
    kube.create(MCANARY, model_canary(percent=35, routes=["predict"]))
    vs = kube.wait_for(vs_path("v1beta1"), lambda o: weights(o) == [65, 35])
    mc = wait_phase(kube, "mnist", "Active")
    assert mc["status"]["virtualServiceVersion"] == "v1beta1"
    spec = without_weights(vs)
    spec["http"][1]["route"].pop()  # the appended candidate
    assert spec == without_weights(original)
    kube.patch(f"{MCANARY}/mnist", {"spec": {"percent": 5}})
    kube.wait_for(vs_path("v1beta1"), lambda o: weights(o) == [95, 5])
    kube.delete(f"{MCANARY}/mnist")
    kube.wait_gone(f"{MCANARY}/mnist", timeout=10)
    assert kube.get(vs_path("v1beta1"))["spec"] == original["spec"]
