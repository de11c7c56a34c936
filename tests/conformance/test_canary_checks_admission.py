"""The ModelCanary analysis checks as the real API server admits them (and the emulator alike):
the CRD with its CEL rules is accepted by kube-apiserver (cost limits included), both forms of
the analysis are admitted, and each rule refuses what it says, with its message."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conformance.harness import Server, attempt, compare, pick
from tests.conformance.test_crd_admission import CANARY_GV

BUILT_IN = [{"name": "request-success-rate", "min": 99.5}, {"name": "request-duration"}]


def canary(name: str, analysis: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": CANARY_GV, "kind": "ModelCanary", "metadata": {"name": name},
            "spec": {"virtualService": {"name": "vs"}, "stable": {"inferenceService": "old"},
                     "candidate": {"inferenceService": "new"}, "percent": 50,
                     "steps": {"weights": [10], "interval": "1m", "analysis": analysis}}}


ADMITTED = {
    "built-in and custom checks": {"checks": [*BUILT_IN, {"name": "queue", "query": "max(queue)", "max": 5}],
                                   "interval": "30s", "failureLimit": 2},
    "the single query": {"query": "max(errors)", "max": 0.05},
}

REFUSED = {
    "checks and a query": {"checks": BUILT_IN, "query": "q", "max": 1},
    "neither checks nor a query": {"failureLimit": 2},
    "a query without bounds": {"query": "q"},
    "bounds beside checks": {"checks": BUILT_IN, "max": 1},
    "a built-in check with a query": {"checks": [{"name": "request-duration", "query": "q"}]},
    "a custom check without a query": {"checks": [{"name": "errors", "max": 1}]},
    "request-success-rate with a max": {"checks": [{"name": "request-success-rate", "max": 1}]},
    "request-duration with a min": {"checks": [{"name": "request-duration", "min": 1}]},
    "a custom check without bounds": {"checks": [{"name": "errors", "query": "q"}]},
    "a check named twice": {"checks": [{"name": "request-duration"}, {"name": "request-duration", "max": 9}]},
    "an uppercase check name": {"checks": [{"name": "Errors", "query": "q", "max": 1}]},
    "no checks": {"checks": []},
}


@pytest.mark.parametrize("case", sorted(ADMITTED))
def test_the_analysis_forms_are_admitted(servers: dict[str, Server], case: str) -> None:
    compare(f"ModelCanary analysis admitted: {case}",
            lambda s: attempt(lambda: s.client.create(s.path(CANARY_GV, "modelcanaries"),
                                                      canary("admitted", ADMITTED[case])),
                              shape=lambda obj: pick(obj, "spec.steps.analysis")), servers)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_each_analysis_rule_refuses(servers: dict[str, Server], case: str) -> None:
    answer = compare(f"ModelCanary analysis refused: {case}",
                     lambda s: attempt(lambda: s.client.create(s.path(CANARY_GV, "modelcanaries"),
                                                               canary("refused", REFUSED[case])), message=True),
                     servers)
    assert "error" in answer and answer["error"]["code"] == 422, answer
