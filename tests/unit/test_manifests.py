"""The manifests a user applies: built-in kinds against the Kubernetes schemas (offline),
CRDs structurally sane, the operator's pods locked down."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"


def documents(paths: list[pathlib.Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


OPTIONAL = ("samples", "kserve", "monitoring", "kustomizeconfig")  # not applied by `kubectl apply -k manifests/`
BUILTIN = documents(sorted(p for p in MANIFESTS.rglob("*.yaml") if "crds" not in p.parts
                           and not set(OPTIONAL) & set(p.parts) and p.name != "kustomization.yaml"))
KSERVE = documents(sorted((MANIFESTS / "kserve").glob("*.yaml")))
CRDS = documents(sorted((MANIFESTS / "crds").glob("*.yaml")))


@pytest.mark.parametrize(("where", "doc"), BUILTIN, ids=[w for w, _ in BUILTIN])
def test_builtin_kinds_validate_strictly(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize(("where", "doc"), CRDS, ids=[w for w, _ in CRDS])
def test_crds_validate_and_follow_conventions(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert doc["spec"]["names"].get("shortNames"), "a short name for kubectl"
    for version in doc["spec"]["versions"]:
        assert version.get("subresources", {}).get("status") == {}, "status subresource"
        assert version.get("additionalPrinterColumns"), "printer columns"
        props = version["schema"]["openAPIV3Schema"]["properties"]
        status = props["status"]["properties"]
        assert {"conditions", "observedGeneration"} <= status.keys()


def test_kustomization_lists_every_installable_manifest() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    on_disk = {str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml")
               if not set(OPTIONAL) & set(p.parts) and p.name != "kustomization.yaml"}
    assert listed == on_disk


def test_operator_pod_is_non_root_and_read_only() -> None:
    deployment = next(doc for _, doc in BUILTIN if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert {"livenessProbe", "readinessProbe", "resources"} <= container.keys()


def test_rbac_grants_no_wildcards_and_reads_secrets_only_by_name() -> None:
    role = next(doc for _, doc in BUILTIN if doc["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], "KServe's credential lookup reads listed Secrets by name only"
        if "delete" in rule["verbs"]:
            # Owned children are removed by the garbage collector; these two are removed by decision.
            assert set(rule["resources"]) <= {"jobs", "modelprewarms"}, "stale preloader Jobs, opted-out ModelPrewarms"
        if "nodes" in rule["resources"] or "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, "Nodes and Pods are only read"


def _schemas() -> dict[tuple[str, str], Any]:
    from devcluster.validation import CustomResourceSchema

    schemas = {}
    # Foreign kinds in samples (KServe's InferenceService) validate against the trimmed test CRDs.
    foreign = documents(sorted((ROOT / "tests" / "fixtures" / "crds").glob("*.yaml")))
    for _, crd in [*foreign, *CRDS]:
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = (
                CustomResourceSchema(version["schema"]["openAPIV3Schema"]), crd)
    return schemas


SAMPLES = documents(sorted((MANIFESTS / "samples").glob("*.yaml")))


@pytest.mark.parametrize(("where", "doc"), SAMPLES, ids=[w for w, _ in SAMPLES])
def test_every_sample_validates_strictly_against_its_crd(where: str, doc: dict[str, Any]) -> None:
    """The same admission the emulated API server applies: strict unknown fields, defaults, schema."""
    from devcluster.validation import admit_custom

    schema, crd = _schemas()[(doc["apiVersion"], doc["kind"])]
    admitted, warnings = admit_custom(schema, doc, field_validation="Strict", kind=doc["kind"],
                                      group=crd["spec"]["group"], name=doc["metadata"]["name"])
    assert warnings == []
    assert admitted["spec"].items() >= doc["spec"].items()


def test_a_bad_sample_would_be_caught() -> None:
    from devcluster.errors import ApiStatusError
    from devcluster.validation import admit_custom

    schema, _ = _schemas()[("cache.serverless.xyz/v1alpha1", "Memcached")]
    bad = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
           "metadata": {"name": "x"}, "spec": {"size": 101}}
    with pytest.raises(ApiStatusError, match="less than or equal to 100"):
        admit_custom(schema, bad, field_validation="Strict", kind="Memcached", group="cache.serverless.xyz", name="x")


def test_metrics_port_is_closed_to_all_but_prometheus() -> None:
    policy = next(doc for _, doc in BUILTIN if doc["kind"] == "NetworkPolicy")
    deployment = next(doc for _, doc in BUILTIN if doc["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8080] and all("namespaceSelector" in f for f in rule["from"])
    ports = [p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
    assert ports == [8080, 9443]  # 9443: the placement webhook (test below)


def test_the_placement_webhook_never_blocks_a_pod_and_reaches_the_operator() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in BUILTIN}
    [hook] = docs[("MutatingWebhookConfiguration", "kserve-operator-placement")]["webhooks"]
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"]) == ("Ignore", 2, "None")
    assert hook["admissionReviewVersions"] == ["v1"] and hook["reinvocationPolicy"] == "IfNeeded"
    assert [(r["resources"], r["operations"]) for r in hook["rules"]] == [(["pods"], ["CREATE"])]
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}]
    assert {"kserve-operator", "kube-system"} <= set(hook["namespaceSelector"]["matchExpressions"][0]["values"])
    service = docs[("Service", "kserve-operator-webhook")]
    assert hook["clientConfig"]["service"] == {"name": "kserve-operator-webhook", "namespace": "kserve-operator",
                                               "path": "/warm-node-placement", "port": 443}
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    deployment = docs[("Deployment", "kserve-operator")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    policy = docs[("NetworkPolicy", "kserve-operator-webhook")]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [9443]
    # The certificate Secret: created, then read and renewed by name only, in the operator's namespace.
    role = docs[("Role", "kserve-operator-webhook-certs")]
    assert role["metadata"]["namespace"] == "kserve-operator"
    assert [(r["verbs"], r.get("resourceNames")) for r in role["rules"]] == [
        (["create"], None), (["get", "patch"], ["kserve-operator-webhook-tls"])]
    cluster_role = docs[("ClusterRole", "kserve-operator")]
    [webhook_rule] = [r for r in cluster_role["rules"] if "mutatingwebhookconfigurations" in r["resources"]]
    assert webhook_rule["resourceNames"] == ["kserve-operator-placement"] and webhook_rule["verbs"] == ["get", "patch"]


def test_rbac_carries_no_grant_the_operator_never_uses() -> None:
    """Reviewed grants: single reads of namespaces/CRDs/status, event patches and events.k8s.io were unused."""
    role = next(doc for _, doc in BUILTIN if doc["kind"] == "ClusterRole")
    verbs = {(group, resource): set(rule["verbs"])
             for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    assert verbs[("apiextensions.k8s.io", "customresourcedefinitions")] == {"list", "watch"}
    assert verbs[("cache.serverless.xyz", "memcacheds/status")] == {"patch"}
    assert verbs[("", "events")] == {"create"}
    assert ("events.k8s.io", "events") not in verbs


def test_the_operator_image_lock_satisfies_pyproject() -> None:
    """The Dockerfile installs requirements-operator.lock with --require-hashes: it must carry every
    runtime dependency of pyproject.toml at a version its range admits, each with a hash."""
    import tomllib

    from packaging.requirements import Requirement

    lock_text = (ROOT / "requirements-operator.lock").read_text()
    pins = {}
    for line in lock_text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[name.replace("_", "-")] = version
    assert lock_text.count("--hash=sha256:") == len(pins)
    for raw in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(raw)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is missing from requirements-operator.lock (make lock-operator)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
    assert "requirements-operator.lock" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize(("where", "doc"), KSERVE, ids=[w for w, _ in KSERVE])
def test_kserve_integration_manifests(where: str, doc: dict[str, Any]) -> None:
    """Built-in kinds validate strictly; a ClusterStorageContainer is what KServe accepts as the
    storage initializer for s3:// URIs (its container must be named storage-initializer) and runs
    locked down."""
    if doc["kind"] != "ClusterStorageContainer":
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        return
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = doc["spec"]
    assert spec["container"]["name"] == "storage-initializer"
    assert {"prefix": "s3://"} in spec["supportedUriFormats"]
    security = spec["container"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_two_replicas_one_leader_spread_across_nodes_with_a_disruption_budget() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in BUILTIN}
    deployment = docs[("Deployment", "kserve-operator")]
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LEADER_ELECT"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    budget = docs[("PodDisruptionBudget", "kserve-operator")]
    assert budget["spec"]["minAvailable"] == 1 and budget["metadata"]["namespace"] == "kserve-operator"
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The Lease: in the operator's namespace only, read and replaced by name, created once.
    role = docs[("Role", "kserve-operator-leader-election")]
    assert role["metadata"]["namespace"] == "kserve-operator"
    assert [(r["apiGroups"], r["resources"], r["verbs"], r.get("resourceNames")) for r in role["rules"]] == [
        (["coordination.k8s.io"], ["leases"], ["create"], None),
        (["coordination.k8s.io"], ["leases"], ["get", "update"], ["kserve-operator"])]
    binding = docs[("RoleBinding", "kserve-operator-leader-election")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": "kserve-operator"}]
    cluster_role = docs[("ClusterRole", "kserve-operator")]
    assert not [r for r in cluster_role["rules"] if "leases" in r["resources"]], "leases in every namespace"
