"""manifests/monitoring/: the metrics Service and the ServiceMonitor that scrapes it, applied apart
from the default kustomization (the Prometheus Operator's CRDs may be missing)."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"


def load(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind() -> dict[str, dict[str, Any]]:
    docs = [doc for path in sorted(MONITORING.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load(path)]
    return {doc["kind"]: doc for doc in docs}


def test_the_kustomization_lists_both_and_the_default_one_neither() -> None:
    listed = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml")
    default = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())["resources"]
    assert not [r for r in default if r.startswith("monitoring/")]


def test_the_service_reaches_the_operators_metrics_port() -> None:
    service = by_kind()["Service"]
    kubernetes_validate.validate(service, kubernetes_validate.latest_version(), strict=True)
    [deployment] = load(ROOT / "manifests" / "operator" / "deployment.yaml")
    pod = deployment["spec"]["template"]
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert named[port["targetPort"]] == port["port"] == 8080


def test_the_service_monitor_selects_the_metrics_service_only() -> None:
    docs = by_kind()
    monitor, service = docs["ServiceMonitor"], docs["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]] and endpoint["path"] == "/metrics"
    others = [doc for path in sorted((ROOT / "manifests").rglob("*.yaml")) if MONITORING not in path.parents
              for doc in load(path) if doc.get("kind") == "Service"]
    assert others, "the webhook's Service exists beside it"
    for other in others:
        assert not selector.items() <= (other["metadata"].get("labels") or {}).items(), other["metadata"]["name"]
