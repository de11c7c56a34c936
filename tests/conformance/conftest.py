"""The conformance tier: the same API operations against the emulated API server (devcluster) and
the real control plane (controlplane/, kube-apiserver v1.37.2 with etcd and
kube-controller-manager), answers compared (see harness.py).

One emulator (``cel_rules=True``, as a real server checks CEL rules) and one real control plane
serve the whole tier: package-scoped, so they stop when its last test is done and never two
control planes run at once on the two cores. Each test gets a fresh namespace of the same name
on both, deleted afterwards without waiting. Where the binaries are: ``$CONTROLPLANE_BIN`` (what
``make controlplane`` prints), else ``python -m controlplane.build`` (which reuses its cache;
tests/controlplane_binaries.py). Without Go the tier is skipped, except under ``CI=1``, where
that is an error. The session ends
with one line: how many operations were compared and which differ; a complete run of the tier
fails when KNOWN_DIFFERENCES names an operation it did not compare.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.launch import ControlPlane
from devcluster import ApiError, ClusterClient, EmulatedCluster
from tests.conformance.harness import KNOWN_DIFFERENCES, RESULTS, Server, summary_line
from tests.controlplane_binaries import controlplane_bin

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "manifests" / "crds").glob("*.yaml")) + \
    sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml"))


HERE = Path(__file__).parent
_PARTIAL: list[bool] = []  # whether some of the tier's tests were deselected or not collected


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.conformance)


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any(HERE in Path(str(item.fspath)).parents for item in items):
        _PARTIAL.append(True)


def whole_tier_selected(config: pytest.Config) -> bool:
    """Whether the command line ran every test of the tier (its folder or one above it, unfiltered)."""
    if _PARTIAL or config.getoption("keyword") or config.getoption("markexpr") not in ("", "conformance"):
        return False
    for arg in config.args or [str(config.rootpath)]:
        if "::" in arg:
            continue
        path = (config.invocation_params.dir / arg).resolve()
        if path == HERE or path in HERE.parents:
            return True
    return False


def unexercised_known_differences(session: pytest.Session) -> list[str]:
    """Names in KNOWN_DIFFERENCES that a complete, passing run of the tier never compared."""
    if not RESULTS or session.testsfailed or not whole_tier_selected(session.config):
        return []
    return sorted(name for name in KNOWN_DIFFERENCES if name not in RESULTS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stale = unexercised_known_differences(session)
    if stale:
        session.config.stash[_STALE] = stale
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STALE = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RESULTS:
        terminalreporter.write_line(summary_line())
    stale = terminalreporter.config.stash.get(_STALE, [])
    if stale:
        terminalreporter.write_line("conformance: KNOWN_DIFFERENCES names no operation compared (rename or remove): "
                                    + ", ".join(stale), red=True)


def wait_established(kube: ClusterClient, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout} s: {conditions}")
            time.sleep(0.1)


@pytest.fixture(scope="package")
def emulator() -> Iterator[ClusterClient]:
    # bookmark_interval: short, so a test sees the emulator's periodic bookmarks in a second;
    # cel_rules: on, as on a real server (the default; stated because the tier depends on it).
    with EmulatedCluster([path for path in CRD_FILES if path.exists()], simulate=False,
                         bookmark_interval=0.3, cel_rules=True) as cluster:
        yield cluster.client("conformance")


@pytest.fixture(scope="package")  # stopped when the tier ends, before another tier starts its own
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterClient]:
    plane = ControlPlane(controlplane_bin("the conformance tier"), tmp_path_factory.mktemp("conformance-controlplane"))
    plane.start()
    try:
        print(f"\nreal control plane ready in {plane.timings.total:.1f} s")
        kube = ClusterClient(plane.url, "conformance", ssl_context=plane.ssl_context())
        names = [str(kube.apply_yaml(path)[0]["metadata"]["name"]) for path in CRD_FILES]
        wait_established(kube, names)
        yield kube
        plane.check()
    finally:
        plane.stop()


@pytest.fixture
def servers(emulator: ClusterClient, real: ClusterClient) -> Iterator[dict[str, Server]]:
    """This test's namespace, the same name on both servers."""
    namespace = f"c-{uuid.uuid4().hex[:8]}"
    pair = {"emulator": Server("emulator", emulator, namespace),
            "real": Server("real", real, namespace, settle_timeout=30.0)}
    for server in pair.values():
        server.client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": namespace}})
    yield pair
    for server in pair.values():
        try:
            server.client.delete(f"/api/v1/namespaces/{namespace}")
        except ApiError as exc:
            if exc.status != 404:
                raise
