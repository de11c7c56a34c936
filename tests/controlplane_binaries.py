"""Where the real control plane's binaries are, for the tiers that start one (tests/realcluster/,
tests/conformance/): ``$CONTROLPLANE_BIN`` (what ``make controlplane`` prints), else the build,
``python -m controlplane.build``, which reuses its cache. Without a Go toolchain the tier is
skipped, except under ``CI=1``, where that is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def controlplane_bin(tier: str = "the real-control-plane tier") -> Path:
    """The folder of the built binaries; ``tier`` names what needs them in a skip or failure."""
    configured = os.environ.get("CONTROLPLANE_BIN")
    if configured:
        return Path(configured)
    if shutil.which("go") is None:
        if os.environ.get("CI") == "1":
            pytest.fail(f"CI=1 and no Go toolchain: {tier} cannot be skipped in CI; install Go 1.26+ (see README)")
        pytest.skip(f"no Go toolchain: {tier} needs `make controlplane` (see README)")
    built = subprocess.run([sys.executable, "-m", "controlplane.build"], cwd=ROOT, capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"`make controlplane` failed: {built.stderr.strip().splitlines()[-1:]}")
    return Path(built.stdout.strip().splitlines()[-1])
