"""The launcher's faults, each on a control plane of its own: a missing binary, a busy port, a
missing Go toolchain, and a component killed mid-run (etcd, then kube-apiserver): the launcher
reports which one died, stops the rest at once so that callers fail fast, and leaves no process
behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.launch import ControlPlane, ControlPlaneError
from devcluster.client import ClusterClient
from tests.controlplane_binaries import controlplane_bin
from tests.realcluster.conftest import ROOT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_missing_binary_is_named_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    plane = ControlPlane(tmp_path / "bin", tmp_path / "work")
    with pytest.raises(ControlPlaneError, match=r"etcd, kube-apiserver, .* not found in .*: run `make controlplane`"):
        plane.start()
    assert plane.components == []


def test_a_busy_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        plane = ControlPlane(controlplane_bin(), tmp_path, port=port)
        with pytest.raises(ControlPlaneError, match=f"port {port} on 127.0.0.1 for kube-apiserver is busy"):
            plane.start()
        assert plane.components == []


def test_a_missing_go_toolchain_is_one_clear_line(tmp_path: Path) -> None:
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "go").exists())
    result = subprocess.run([sys.executable, "-m", "controlplane.build", "--cache", str(tmp_path)], cwd=ROOT,
                            env={**os.environ, "PATH": bare_path}, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "controlplane: no Go toolchain on PATH: install Go 1.26 or newer (https://go.dev/doc/install), "
        "then run `make controlplane` again"]
    assert not list(tmp_path.iterdir())  # nothing half-built


def test_a_second_build_reuses_the_cache() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "controlplane.build"], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    assert "reusing" in result.stderr and Path(result.stdout.strip()) == controlplane_bin()
    assert time.monotonic() - started < 30  # go env + hashing, no compile or link


@pytest.mark.parametrize("victim", ["etcd", "kube-apiserver"])
def test_a_component_killed_mid_run_stops_the_plane_and_is_reported(tmp_path: Path, victim: str) -> None:
    plane = ControlPlane(controlplane_bin(), tmp_path).start()
    try:
        pids = plane.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        kube = ClusterClient(plane.url, ssl_context=plane.ssl_context())
        assert kube.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
        reported: list[str] = []
        plane.on_failure(reported.append)

        os.kill(pids[victim], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while plane.failure is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert plane.failure is not None and plane.failure.startswith(f"{victim} (pid {pids[victim]}) died with "
                                                                      "exit code -9; the control plane was stopped")
        assert reported == [plane.failure]
        with pytest.raises(ControlPlaneError, match=victim):
            plane.check()
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [name for name, pid in pids.items() if alive(pid)]  # nothing left running
        with pytest.raises(OSError):  # a caller fails at once, it does not hang
            kube.get("/api/v1/namespaces/default")
    finally:
        plane.stop()
