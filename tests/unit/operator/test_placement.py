"""The placement webhook's decisions: which nodes are warm for a pod, and the affinity it gets.

The webhook handler itself (a kopf index and a mutate handler) is exercised through kopf's own
admission entry point below, without a server; the API server's side is the realcluster tier's.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
from typing import Any, cast

import kopf
import pytest

from kserve_operator.clients import webhook_certs as certs_client
from kserve_operator.controllers import placement as controller
from kserve_operator.planning import placement as plan

URI = "s3://models/mnist"


def pod(*, labels: dict[str, str] | None = None, uri: str | None = URI, affinity: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None, node_name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "team-a", "generateName": "torch-mnist-predictor-",
                            "labels": {plan.ISVC_LABEL: "torch-mnist", "component": "predictor"}
                            if labels is None else labels,
                            "annotations": dict(annotations or {})}
    if uri:
        meta["annotations"][plan.SOURCE_URI_ANNOTATION] = uri
    spec: dict[str, Any] = {"containers": [{"name": "kserve-container", "image": "kserve/torchserve"}]}
    if affinity is not None:
        spec["affinity"] = affinity
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def status(nodes: list[dict[str, Any]], *, uri: str = URI, version: str | None = "v1") -> dict[str, Any]:
    return {"storageUri": uri, "modelVersion": version, "phase": "Warm", "nodes": nodes}


def node(name: str, phase: str = "Warm", version: str | None = "v1", hostname: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "phase": phase, "version": version}
    if hostname:
        entry["hostname"] = hostname
    return entry


# ---- which nodes are warm -------------------------------------------------------------------------

def test_only_warm_nodes_of_the_current_version_count() -> None:
    model = plan.warm_model("torch-mnist", status([node("gpu-2"), node("gpu-1"), node("gpu-3", phase="Warming"),
                                                   node("gpu-4", phase="Failed"), node("gpu-5", version="v0")]))
    assert model == plan.WarmModel("torch-mnist", URI, ("gpu-1", "gpu-2"))


def test_the_hostname_label_is_used_when_the_entry_carries_it() -> None:
    model = plan.warm_model("m", status([node("ip-10-0-0-1.ec2.internal", hostname="ip-10-0-0-1"), node("gpu-2")]))
    assert model is not None and model.hostnames == ("gpu-2", "ip-10-0-0-1")


@pytest.mark.parametrize("bad", [None, {}, {"storageUri": URI}, status([]), status([node("a", phase="Warming")]),
                                 {"nodes": [node("a")]}, {"storageUri": 3, "nodes": [node("a")]},
                                 status(["not-a-mapping"])])  # type: ignore[list-item]
def test_a_modelprewarm_without_a_warm_node_gives_nothing(bad: Any) -> None:
    assert plan.warm_model("m", bad) is None


def test_the_pod_takes_the_modelprewarms_of_its_model_uri() -> None:
    models = [plan.WarmModel("platform-pool", URI + "/", ("gpu-7",)), plan.WarmModel("torch-mnist", URI, ("gpu-1",)),
              plan.WarmModel("other", "s3://models/other", ("gpu-9",))]
    assert plan.warm_hostnames(pod(), models) == ("gpu-1", "gpu-7")


def test_without_the_uri_annotation_the_modelprewarm_named_like_the_service_is_taken() -> None:
    models = [plan.WarmModel("torch-mnist", URI, ("gpu-1",)), plan.WarmModel("other", URI, ("gpu-9",))]
    assert plan.warm_hostnames(pod(uri=None), models) == ("gpu-1",)
    assert plan.warm_hostnames(pod(uri="s3://models/unknown"), models) == ()


# ---- the affinity ----------------------------------------------------------------------------------

def test_a_predictor_gets_one_preferred_term_toward_the_warm_nodes() -> None:
    decision = plan.plan_placement(pod(), ["gpu-2", "gpu-1", "gpu-2"])
    assert decision is not None
    assert decision.affinity == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-1", "gpu-2"]}]}}]}}
    assert decision.annotation == "gpu-1,gpu-2"


def test_the_pods_own_affinity_is_kept() -> None:
    own: dict[str, Any] = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                               "labelSelector": {"matchLabels": {"app": "x"}}}}]}}
    original = pod(affinity=copy.deepcopy(own))
    decision = plan.plan_placement(original, ["gpu-1"])
    assert decision is not None
    affinity: dict[str, Any] = decision.affinity
    assert affinity["podAntiAffinity"] == own["podAntiAffinity"]
    node_affinity = affinity["nodeAffinity"]
    assert node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] == (
        own["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"])
    assert node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == [
        own["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0], plan.warm_term(["gpu-1"])]
    assert original["spec"]["affinity"] == own  # the input is not mutated


def test_a_reinvocation_adds_nothing_and_a_moved_warm_set_replaces_its_own_term() -> None:
    first = plan.plan_placement(pod(), ["gpu-1", "gpu-2"])
    assert first is not None
    again = pod(affinity=first.affinity, annotations={plan.PREFERRED_ANNOTATION: first.annotation})
    assert plan.plan_placement(again, ["gpu-2", "gpu-1"]) is None
    moved = plan.plan_placement(again, ["gpu-1", "gpu-3"])
    assert moved is not None
    assert moved.affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        plan.warm_term(["gpu-1", "gpu-3"])]


def test_a_users_identical_looking_term_is_not_taken_for_ours_without_the_annotation() -> None:
    users = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [plan.warm_term(["gpu-5"])]}}
    decision = plan.plan_placement(pod(affinity=users), ["gpu-1"])
    assert decision is not None
    assert decision.affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        plan.warm_term(["gpu-5"]), plan.warm_term(["gpu-1"])]


@pytest.mark.parametrize(("the_pod", "hostnames"), [
    (pod(), []),  # no warm node
    (pod(labels={}), ["gpu-1"]),  # not KServe's
    (pod(labels={plan.ISVC_LABEL: "torch-mnist", "component": "transformer"}), ["gpu-1"]),
    (pod(labels={"component": "predictor"}), ["gpu-1"]),
    (pod(node_name="gpu-4"), ["gpu-1"]),  # bound already: the scheduler will not look
])
def test_left_unchanged(the_pod: dict[str, Any], hostnames: list[str]) -> None:
    assert plan.plan_placement(the_pod, hostnames) is None


# ---- the kopf handler, through kopf's admission entry point --------------------------------------

def review(body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u-1", "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:rs"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "object": body, "namespace": "team-a"}}


async def admit(body: dict[str, Any], index: dict[str, list[plan.WarmModel]],
                registry: kopf.OperatorRegistry | None = None) -> dict[str, Any]:
    """One AdmissionReview through kopf's `serve_admission_request`, as its WebhookServer calls it."""
    from kopf._cogs.structs import ephemera, ids, references
    from kopf._core.engines import admission
    from kopf._core.reactor import inventory

    if registry is None:
        registry = kopf.OperatorRegistry()
        controller.register(None, registry)  # type: ignore[arg-type]  # settings are not read
    insights = references.Insights()
    insights.webhook_resources.add(references.Resource(group="", version="v1", plural="pods", namespaced=True))
    indices: Any = {"placement_warm_models": index}  # kopf reads its indices as a mapping of mappings
    request: Any = review(body)
    response = await admission.serve_admission_request(
        request, webhook=ids.HandlerId(controller.WEBHOOK_ID), settings=kopf.OperatorSettings(),
        memories=inventory.ResourceMemories(), memobase=cast(ephemera.AnyMemo, kopf.Memo()), registry=registry,
        insights=insights, indices=indices)
    return dict(response["response"])


def applied(body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The pod after the API server applies the webhook's JSON patch."""
    import jsonpatch

    assert response["allowed"] is True
    if "patch" not in response:
        return body
    assert response["patchType"] == "JSONPatch"
    return dict(jsonpatch.apply_patch(body, json.loads(base64.b64decode(response["patch"]))))


WARM = {"team-a": [plan.WarmModel("torch-mnist", URI, ("gpu-1", "gpu-2"))]}


def test_kopf_serves_the_handler_under_its_id_and_the_patch_applies() -> None:
    body = pod(affinity={"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}})
    after = applied(body, asyncio.run(admit(copy.deepcopy(body), WARM)))
    assert after["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        plan.warm_term(["gpu-1", "gpu-2"])]
    assert after["spec"]["affinity"]["podAffinity"] == body["spec"]["affinity"]["podAffinity"]
    assert after["metadata"]["annotations"][plan.PREFERRED_ANNOTATION] == "gpu-1,gpu-2"
    again = asyncio.run(admit(copy.deepcopy(after), WARM))  # reinvocationPolicy: IfNeeded
    assert "patch" not in again and again["allowed"] is True


@pytest.mark.parametrize("body", [pod(labels={"app": "web"}), pod(uri="s3://models/cold"),
                                  pod(labels={plan.ISVC_LABEL: "torch-mnist", "component": "transformer"})])
def test_other_pods_are_admitted_unchanged(body: dict[str, Any]) -> None:
    response = asyncio.run(admit(copy.deepcopy(body), WARM))
    assert response["allowed"] is True and "patch" not in response


def test_a_failure_admits_the_pod_unchanged_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    broken = {"team-a": [plan.WarmModel("torch-mnist", URI, None)]}  # type: ignore[arg-type]  # not iterable
    registry = kopf.OperatorRegistry()  # one handler, as in one operator process
    controller.register(None, registry)  # type: ignore[arg-type]
    with caplog.at_level("DEBUG", logger=controller.logger.name):
        for _ in range(3):
            response = asyncio.run(admit(pod(), broken, registry))
            assert response["allowed"] is True and "patch" not in response and "status" not in response
    warnings = [r for r in caplog.records if r.name == controller.logger.name and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "admitted unchanged" in warnings[0].getMessage()


# ---- certificates ----------------------------------------------------------------------------------

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NAMES = certs_client.service_dns_names("kserve-operator-webhook", "kserve-operator")


def test_service_names_are_the_ones_the_api_server_checks() -> None:
    assert NAMES == ("kserve-operator-webhook.kserve-operator.svc",
                     "kserve-operator-webhook.kserve-operator.svc.cluster.local")


def test_a_generated_certificate_serves_a_year_for_both_names() -> None:
    from cryptography import x509

    certs = certs_client.generate(NAMES, NOW)
    assert certs_client.renewal_reason(certs, NAMES, NOW) is None
    cert = x509.load_pem_x509_certificate(certs.cert)
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=365)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == list(NAMES)


def test_renewal_under_30_days_keeps_the_ca() -> None:
    certs = certs_client.generate(NAMES, NOW)
    later = NOW + datetime.timedelta(days=340)
    assert certs_client.renewal_reason(certs, NAMES, later) == "the serving certificate expires within 30 days"
    assert certs_client.renewal_reason(certs, NAMES, NOW + datetime.timedelta(days=300)) is None
    renewed = certs_client.generate(NAMES, later, ca=(certs.ca_cert, certs.ca_key))
    assert renewed.ca_cert == certs.ca_cert and renewed.cert != certs.cert
    assert certs_client.renewal_reason(renewed, NAMES, later) is None


def test_other_names_another_ca_or_garbage_need_a_new_certificate() -> None:
    certs = certs_client.generate(NAMES, NOW)
    other = certs_client.generate(NAMES, NOW)
    assert "does not name" in str(certs_client.renewal_reason(certs, ("x.y.svc",), NOW))
    mixed = certs_client.WebhookCertificates(other.ca_cert, other.ca_key, certs.cert, certs.key)
    assert certs_client.renewal_reason(mixed, NAMES, NOW) == "the serving certificate is not signed by the stored CA"
    garbage = certs_client.WebhookCertificates(b"x", b"y", certs.cert, certs.key)
    assert "cannot be read" in str(certs_client.renewal_reason(garbage, NAMES, NOW))
    late = NOW + datetime.timedelta(days=3640)
    assert certs_client.renewal_reason(certs, NAMES, late) == "the CA expires within 30 days"


def test_the_key_file_is_private(tmp_path: Any) -> None:
    files = certs_client.write_files(certs_client.generate(NAMES, NOW), str(tmp_path))
    assert files.keyfile.stat().st_mode & 0o077 == 0
    assert files.certfile.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_the_ca_bundle_is_patched_only_where_it_differs() -> None:
    configuration = {"webhooks": [{"name": "a", "clientConfig": {"caBundle": "Q0E="}},
                                  {"name": "b", "clientConfig": {"service": {"name": "s"}}}]}
    assert certs_client.ca_bundle_patch(configuration, "Q0E=") == [
        {"op": "test", "path": "/webhooks/1/name", "value": "b"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "Q0E="}]
    assert certs_client.ca_bundle_patch(configuration, "TkVX")[1] == {
        "op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "TkVX"}
    done = {"webhooks": [{"name": "a", "clientConfig": {"caBundle": "Q0E="}}]}
    assert certs_client.ca_bundle_patch(done, "Q0E=") == []
