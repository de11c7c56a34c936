"""`make demo`'s pre-warm and canary parts, run end to end as a user runs them (its own process,
`python -m devstack.demo --parts prewarm,canary`): it must exit 0 and say what it showed.

The Memcached part (its 30 s scale-down window) and the preloader-alone part are left out to keep
this under a minute; their behaviour has its own integration tests.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from devstack import metrics_stack

pytestmark = pytest.mark.integration
pytest.importorskip("kserve")  # the demo applies torch-mnist through the KServe SDK (dev extra)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_demo_shows_prewarm_and_canary_and_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "devstack.demo", "--parts", "prewarm,canary"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"the demo failed:\n{out[-6000:]}\n{proc.stderr[-3000:]}"

    # Pre-warm: torch-mnist through the SDK, Warm on both GPU nodes with the real preloader's figures.
    assert "phase Warm; nodes: gpu-1 Warm, gpu-2 Warm" in out
    assert re.search(r"end-to-end pre-warm: InferenceService applied -> Warm on 2 nodes in [\d.]+ s", out)
    assert re.search(r"gpu-1: Warm, 14\.9 MB in 2 file\(s\), [\d.]+ s, [\d.]+ GB/s, device cpu, cache miss", out)
    assert re.search(r"gpu-2: Warm, 14\.9 MB in 2 file\(s\), [\d.]+ s, [\d.]+ GB/s, device cpu, cache hit", out)
    assert re.search(r"torch-mnist\s+s3://models/mnist\s+Warm\s+2/2\s+True\s+\d+s", out), "the kubectl get prewarm row"

    # Canary: held while cold, released once warm, stepped to 50%.
    assert "ModelCanary mnist WaitingForModel (WaitingForModel:" in out
    assert "the VirtualService is not written while the model is cold" in out
    assert "torch-mnist-predictor 90% | torch-mnist-v2-predictor 10%" in out
    assert "torch-mnist-predictor 50% | torch-mnist-v2-predictor 50%" in out
    # Capacity: the 50% step waits for 3 warm nodes (6 stable replicas) until a third GPU node is warm.
    assert re.search(r"torch-mnist-v2-predictor 10%; ModelCanary mnist WaitingForCapacity \(WaitingForCapacity: "
                     r"held at 10%: 50% needs the candidate warm on 3 node\(s\) .*; 2 warm\)", out)
    assert "ModelPrewarm torch-mnist-v2 keeps 3 nodes warm for the canary (its nodeCount is 2" in out
    assert out.index("A third GPU node, gpu-3, joins") < out.index("torch-mnist-predictor 50% | torch-mnist-v2-pre")
    assert "ModelPrewarm torch-mnist-v2: warm 3/" in out and "gpu-3 Warm" in out
    assert "torch-mnist-v2-predictor 100%" not in out
    assert "the VirtualService is otherwise exactly as written" in out
    if metrics_stack.have_binaries():  # the built-in checks, and the rollback when the success rate falls
        assert re.search(r"analysis passed \(request-success-rate 99\.9\d* >= 99; request-duration 1[12]\d(\.\d+)? "
                         r"<= 500\); stepped to 50%", out)
        assert re.search(r"event Warning/RolledBack on ModelCanary mnist: rolled back to 0%: analysis failed "
                         r"2 time\(s\) in a row: request-success-rate \d\d(\.\d+)? is below the minimum 99", out)
        assert "torch-mnist-predictor 100% | torch-mnist-v2-predictor 0%; ModelCanary mnist RolledBack" in out
        assert re.search(r"mnist\s+torch-mnist\s+torch-mnist-v2\s+100\s+0\s+RolledBack", out)
    else:
        assert "Prometheus is not installed" in out
        assert re.search(r"mnist\s+torch-mnist\s+torch-mnist-v2\s+50\s+50\s+Active", out)
