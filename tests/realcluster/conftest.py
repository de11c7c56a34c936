"""The real-control-plane tier: kube-apiserver, etcd, kube-controller-manager and kube-scheduler
built from their Go modules (`make controlplane`), the process kubelet for nodes and pods, the
manifests applied with `kubectl apply -k manifests/` as shipped, and the operator running as its
ServiceAccount under the shipped RBAC.

One cluster serves the whole session (startup is measured and printed); each test gets a
namespace of its own (`world`), deleted afterwards while its operator still runs, and removes
the nodes it added. Where to find the binaries: `$CONTROLPLANE_BIN` (what `make controlplane`
prints), else the build runs (which reuses its cache; tests/controlplane_binaries.py). Without Go
the tier is skipped, except under `CI=1`, where that is an error.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.cluster import RealCluster
from devcluster import ClusterClient
from devstack.operator_process import OperatorProcess, start_operator
from devstack.simulated_gpu_pool import GPU_LABELS, GPU_TAINTS, PRELOADER_IMAGE
from tests.controlplane_binaries import controlplane_bin

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_CRDS = sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml"))
#: A tenant namespace that uses pre-warming: `baseline` is enough, since the preloader Jobs (and
#: their hostPath) run in the platform's namespace `kserve-prewarm` (manifests/prewarm/).
PREWARM_NAMESPACE_LABELS = {"pod-security.kubernetes.io/enforce": "baseline"}
#: What a namespace with only Memcached caches and canaries can enforce.
RESTRICTED_NAMESPACE_LABELS = {"pod-security.kubernetes.io/enforce": "restricted"}


#: Test modules of this tier that passed in this session (the RBAC check needs all of the controllers').
PASSED: set[str] = set()
FAILED: set[str] = set()
LAST = "test_shipped_rbac.py"  # it audits what the tests before it did


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realcluster)
    items.sort(key=lambda item: Path(str(item.fspath)).name == LAST)  # stable: only moves it to the end


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = Path(report.nodeid.split("::")[0]).name
    if report.failed:
        FAILED.add(module)
    elif report.when == "call" and report.passed:
        PASSED.add(module)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    cluster = RealCluster(controlplane_bin(), tmp_path_factory.mktemp("realcluster"))
    cluster.start()
    try:
        timings = cluster.plane.timings
        print(f"\nreal control plane ready in {timings.total:.1f} s (etcd {timings.etcd:.1f} s, "
              f"apiserver {timings.apiserver:.1f} s, controllers {timings.controllers:.1f} s)")
        cluster.install_manifests(extra_crds=FIXTURE_CRDS)
        cluster.register_local_image(PRELOADER_IMAGE, [sys.executable, "-m", "preloader"],
                                     env={"AWS_EC2_METADATA_DISABLED": "true"})
        yield cluster
    finally:
        cluster.stop()


@dataclass
class World:
    """One test's corner of the shared cluster: a namespace, its nodes, its operators."""

    cluster: RealCluster
    namespace: str
    tmp_path: Path
    kube: ClusterClient
    nodes: list[str] = field(default_factory=list)
    operators: list[OperatorProcess] = field(default_factory=list)

    def path(self, group_version: str, resource: str, name: str = "") -> str:
        """``/api/v1/namespaces/NS/pods[/name]`` or ``/apis/G/V/namespaces/NS/R[/name]``."""
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        return f"{prefix}/namespaces/{self.namespace}/{resource}" + (f"/{name}" if name else "")

    def add_gpu_nodes(self, *names: str) -> list[str]:
        """Nodes with one GPU each, labelled and tainted as the NVIDIA GPU operator leaves them."""
        full = [f"{name}-{self.namespace[-6:]}" for name in names]
        for node in full:
            self.cluster.add_node(node, gpus=1, labels=GPU_LABELS, taints=GPU_TAINTS)
            self.nodes.append(node)
        return full

    def add_node(self, name: str, **kwargs: Any) -> str:
        node = f"{name}-{self.namespace[-6:]}"
        self.cluster.add_node(node, **kwargs)
        self.nodes.append(node)
        return node

    def start_operator(self, *args: str, resync: float = 1.0, **env: str) -> OperatorProcess:
        """The real operator process, authenticated as its ServiceAccount (a TokenRequest token)."""
        stem = self.tmp_path / f"operator-{len(self.operators)}"
        kubeconfig = self.cluster.service_account_kubeconfig(stem.with_suffix(".kubeconfig"))
        full_env = {"RESYNC_SECONDS": str(resync), "FINALIZER_TIMEOUT_SECONDS": "20", **env}
        operator = start_operator(kubeconfig, stem.with_suffix(".log"),
                                  args=args or ("--all-namespaces",), env=full_env)
        self.operators.append(operator)
        return operator

    def events_for(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.kube.list(self.path("v1", "events"))
                if (e.get("involvedObject") or {}).get("name") == name]


def make_world(cluster: RealCluster, tmp_path: Path, labels: dict[str, str]) -> Iterator[World]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(namespace, labels)
    world = World(cluster, namespace, tmp_path, cluster.client("pytest"))
    try:
        yield world
    finally:
        try:
            # While the operator runs: finalizers get handled. Generous: on a loaded 2-core CI machine the
            # namespace controller and the process kubelet have taken over 60 s after an API server restart.
            cluster.delete_namespace(namespace, timeout=180)
        finally:
            for node in world.nodes:
                cluster.remove_node(node)
            logs = []
            for operator in world.operators:
                operator.stop()
                logs.append(operator.log())
            for log in logs:
                assert "Traceback" not in log, f"the operator logged a traceback:\n{log[-6000:]}"


@pytest.fixture
def world(real_cluster: RealCluster, tmp_path: Path) -> Iterator[World]:
    """A namespace that enforces Pod Security `restricted`."""
    yield from make_world(real_cluster, tmp_path, RESTRICTED_NAMESPACE_LABELS)


@pytest.fixture
def privileged_world(real_cluster: RealCluster, tmp_path: Path) -> Iterator[World]:
    """A namespace that enforces Pod Security `privileged` (hostPath and all)."""
    yield from make_world(real_cluster, tmp_path, {"pod-security.kubernetes.io/enforce": "privileged"})


@pytest.fixture
def prewarm_world(real_cluster: RealCluster, tmp_path: Path) -> Iterator[World]:
    """A tenant namespace at Pod Security `baseline` whose InferenceServices are pre-warmed."""
    yield from make_world(real_cluster, tmp_path, PREWARM_NAMESPACE_LABELS)
