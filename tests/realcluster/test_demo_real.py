"""`make demo-real`, run as a user runs it (`python -m devstack.demo_real --bin ...`, its own
process and its own control plane): it must exit 0, and the real kubectl's tables at its end must
show what the story did: two ModelPrewarms of torch-mnist and the platform team's pool Warm on 2 of
2 nodes, the canary's candidate Warm, the ModelCanary stepped (Active at 50%, or rolled back when
Prometheus is installed and the analysis runs), the Memcached Running; and `kubectl describe` of
the ModelPrewarm with the preloader's figures and the operator's Events.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from devstack import metrics_stack
from tests.controlplane_binaries import controlplane_bin

pytest.importorskip("kserve")  # the demo applies torch-mnist through the KServe SDK (dev extra)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_real_exits_0_and_the_real_kubectl_shows_the_story() -> None:
    proc = subprocess.run([sys.executable, "-m", "devstack.demo_real", "--bin", str(controlplane_bin())], cwd=ROOT,
                          capture_output=True, text=True, timeout=400, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"demo-real failed:\n{out[-6000:]}\n{proc.stderr[-3000:]}"
    assert re.search(r"ready in [\d.]+ s .*kubectl v1\.37\.\d+", out), "the real control plane and its kubectl"
    assert "the operator's kubeconfig: a TokenRequest token of ServiceAccount kserve-operator:kserve-operator" in out

    tables = out[out.index("$ kubectl get prewarm,mcanary,mc -A"):out.index("$ kubectl describe prewarm torch-mnist")]
    assert re.search(r"^NAMESPACE\s+NAME\s+MODEL\s+PHASE\s+WARM\s+READY\s+AGE$", tables, re.M)
    for name, uri in (("torch-mnist", "mnist"), ("mnist-gpu-pool", "mnist"), ("torch-mnist-v2", "torch-mnist-v2")):
        assert re.search(rf"^default\s+modelprewarm\.serving\.serverless\.xyz/{name}\s+s3://models/{uri}\s+"
                         r"Warm\s+2/2\s+True\s+\d+s$", tables, re.M), f"the {name} row:\n{tables}"
    assert re.search(r"^NAMESPACE\s+NAME\s+STABLE\s+CANDIDATE\s+WANTED\s+IN-FORCE\s+PHASE\s+READY\s+AGE$", tables, re.M)
    canary = (r"100\s+0\s+RolledBack\s+False" if metrics_stack.have_binaries() else r"50\s+50\s+Active\s+True")
    assert re.search(rf"^default\s+modelcanary\.serving\.serverless\.xyz/mnist\s+torch-mnist\s+torch-mnist-v2\s+"
                     rf"{canary}\s+\d+s$", tables, re.M), f"the canary row:\n{tables}"
    assert re.search(r"^NAMESPACE\s+NAME\s+SIZE\s+REPLICAS\s+PHASE\s+READY\s+CONNECTIONS\s+AGE$", tables, re.M)
    assert re.search(r"^default\s+memcached\.cache\.serverless\.xyz/memcached-sample\s+\d+\s+[1-9]\d*\s+Running\s",
                     tables, re.M), f"the Memcached row:\n{tables}"

    described = out[out.index("$ kubectl describe prewarm torch-mnist"):]
    assert re.search(r"^Kind:\s+ModelPrewarm$", described, re.M)
    assert re.search(r"^\s+Kind:\s+InferenceService$", described, re.M), "owned by the InferenceService"
    assert re.search(r"^\s+Phase:\s+Warm$", described, re.M)
    assert len(re.findall(r"^\s+Device:\s+cpu$", described, re.M)) >= 2, "the preloader's figures per node"
    assert re.search(r"^\s+Normal\s+ModelWarm\s+\S+\s+kserve-operator\s+warm on 2 node\(s\)", described, re.M)

    workdir = pathlib.Path(re.findall(r"Logs and files are in (\S+)", out)[-1])
    try:
        log = (workdir / "operator.log").read_text(errors="replace")
        assert "Traceback" not in log, f"the operator logged a traceback:\n{log[-6000:]}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
