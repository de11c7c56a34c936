"""`requireWarm`: the candidate gets nothing until its ModelPrewarm reports a warm node, then at once,
whatever the phase says about its other nodes.

The ModelPrewarm objects are created here and their status set through the /status
subresource, as the pre-warm controller would; the resync is far away, so the release
can only come from the ModelPrewarm's watch event.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.operator.canary_world import (
    MCANARY,
    PREWARM,
    condition,
    events_until,
    install_world,
    model_canary,
    model_prewarm,
    set_prewarm_phase,
    vs_path,
    wait_phase,
    weights,
)
from tests.integration.operator.conftest import StartOperator

pytestmark = pytest.mark.integration


def test_held_at_zero_until_warm_then_released_at_once(kube: Any, start_operator: StartOperator) -> None:
    original = install_world(kube)
    start_operator(resync=60)
    kube.create(MCANARY, model_canary(percent=25, requireWarm=True, routes=["predict"]))
    mc = wait_phase(kube, "mnist", "WaitingForModel")
    waiting = condition(mc, "Progressing")
    assert waiting["status"] == "True" and waiting["reason"] == "WaitingForModel"
    assert "ModelPrewarm default/torch-mnist-v2, which does not exist yet" in waiting["message"]
    assert mc["status"]["percent"] == 0

    kube.create(PREWARM, model_prewarm("torch-mnist-v2"))
    set_prewarm_phase(kube, "torch-mnist-v2", "Warming")
    mc = kube.wait_for(f"{MCANARY}/mnist",
                       lambda o: "(phase Warming, 0 warm nodes)" in condition(o, "Progressing")["message"])
    assert mc["status"]["phase"] == "WaitingForModel"
    assert kube.get(vs_path())["metadata"]["resourceVersion"] == original["metadata"]["resourceVersion"], \
        "nothing is written to the VirtualService while the model is cold"

    warm_at = time.monotonic()
    set_prewarm_phase(kube, "torch-mnist-v2", "Warm")
    kube.wait_for(vs_path(), lambda o: weights(o) == [75, 25], timeout=5)
    released_after = time.monotonic() - warm_at
    assert released_after < 3, f"released {released_after:.1f}s after Warm (the resync is 60s away)"
    mc = wait_phase(kube, "mnist", "Active")
    assert condition(mc, "Progressing")["status"] == "False"
    reasons = [e["reason"] for e in events_until(kube, "mnist", lambda es: any(e["reason"] == "ModelWarm" for e in es))]
    assert "WaitingForModel" in reasons and "ModelWarm" in reasons


def test_a_named_model_prewarm_and_a_model_going_cold_again(kube: Any, start_operator: StartOperator) -> None:
    install_world(kube)
    start_operator(resync=60)
    kube.create(PREWARM, model_prewarm("mnist-v2-pool"))
    set_prewarm_phase(kube, "mnist-v2-pool", "Warm")
    kube.create(MCANARY, model_canary(percent=40, requireWarm=True, routes=["predict"],
                                      candidate={"inferenceService": "torch-mnist-v2",
                                                 "modelPrewarm": "mnist-v2-pool"}))
    kube.wait_for(vs_path(), lambda o: weights(o) == [60, 40])
    set_prewarm_phase(kube, "mnist-v2-pool", "Failed")
    kube.wait_for(vs_path(), lambda o: weights(o) == [100, 0], timeout=5)
    mc = wait_phase(kube, "mnist", "WaitingForModel")
    assert "ModelPrewarm default/mnist-v2-pool to have a warm node (phase Failed, 0 warm nodes)" in condition(
        mc, "Progressing")["message"]
    assert condition(mc, "Ready")["status"] == "False"


def test_one_warm_node_releases_a_partially_warm_model(kube: Any, start_operator: StartOperator) -> None:
    """One of two nodes warm, the other failed (phase PartiallyWarm, or even Failed): the candidate
    can be served from the warm node, so it gets its share; Ready follows."""
    install_world(kube)
    start_operator(resync=60)
    kube.create(PREWARM, model_prewarm("torch-mnist-v2"))
    set_prewarm_phase(kube, "torch-mnist-v2", "PartiallyWarm", warm_nodes=0)
    kube.create(MCANARY, model_canary(percent=30, requireWarm=True, routes=["predict"]))
    mc = kube.wait_for(f"{MCANARY}/mnist", lambda o: (o.get("status") or {}).get("phase") == "WaitingForModel")
    assert condition(mc, "Ready")["reason"] == "WaitingForModel"
    set_prewarm_phase(kube, "torch-mnist-v2", "PartiallyWarm", warm_nodes=1)
    kube.wait_for(vs_path(), lambda o: weights(o) == [70, 30], timeout=5)
    mc = kube.wait_for(f"{MCANARY}/mnist", lambda o: condition(o, "Ready").get("status") == "True")
    assert mc["status"]["phase"] == "Active" and condition(mc, "Ready")["reason"] == "WeightInForce"
    set_prewarm_phase(kube, "torch-mnist-v2", "Failed", warm_nodes=1)  # the other node gave up: still served
    time.sleep(2)  # a release takes under 3 s (above); a hold would have reset the split by now
    assert weights(kube.get(vs_path())) == [70, 30]
