"""A generic emulated Kubernetes cluster (API server + simulated controllers) for tests, demo and benchmark.

It knows nothing of this project (an import-linter contract keeps it so); the project's own
harness around it lives in ``devstack``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devcluster.client import ApiError, ClusterClient
from devcluster.waiting import wait_for

if TYPE_CHECKING:
    from devcluster.emulator import EmulatedCluster

__all__ = ["ApiError", "ClusterClient", "EmulatedCluster", "wait_for"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `python -m devcluster.emulator` does not import the module twice.
    if name == "EmulatedCluster":
        from devcluster.emulator import EmulatedCluster
        return EmulatedCluster
    raise AttributeError(name)
