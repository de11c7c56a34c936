"""KServe's InferenceService (serving.kserve.io/v1beta1) as the pre-warm watcher reads it.

Only the predictor matters: its model URI (`model.storageUri` or a legacy framework field such as
`pytorch.storageUri`, plus `storageUris[]`), the container's resources, its node selection and
service account, and `minReplicas`. `desired_prewarm` turns an opted-in service into the
ModelPrewarm the operator keeps for it; it never changes the InferenceService itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.resources.kinds import INFERENCE_SERVICE, MODEL_PREWARM
from kserve_operator.resources.meta import ObjectMeta
from kserve_operator.resources.prewarm import (
    DEVICE_ANNOTATION,
    DEVICE_NONE,
    DEVICES,
    NODES_ANNOTATION,
    OPT_IN_ANNOTATION,
    OPT_IN_ANNOTATION_VALUE,
    OPT_IN_NAMESPACE_LABEL,
    OPT_IN_NAMESPACE_VALUE,
    RETRY_ANNOTATION,
)

FRAMEWORKS = ("model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
              "lightgbm", "paddle")
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")
# Set on the derived ModelPrewarm when the predictor cannot be pre-warmed as a whole; the
# ModelPrewarm controller turns it into its Ready condition (planning.prewarm reads the same key).
ANNOTATION_UNSUPPORTED = "serving.serverless.xyz/prewarm-unsupported"
LABEL_SOURCE = "serving.serverless.xyz/inferenceservice"  # on derived ModelPrewarms: the service's name
# Runtimes that read the weights themselves (vLLM, Hugging Face TGI and KServe's huggingface
# server): only the node cache helps them, so their ModelPrewarm warms the cache alone
# (`device: none`) and its Jobs ask for no GPU.
SELF_LOADING_FORMATS = ("huggingface", "vllm", "tgi")


@dataclasses.dataclass(frozen=True)
class Predictor:
    storage_uris: tuple[str, ...]
    resources: Mapping[str, Any]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    affinity: Mapping[str, Any] | None
    service_account_name: str | None
    min_replicas: int
    self_loading: bool = False  # its runtime loads its own weights (see SELF_LOADING_FORMATS)

    @classmethod
    def parse(cls, isvc: Mapping[str, Any]) -> Predictor:
        predictor = (isvc.get("spec") or {}).get("predictor") or {}
        uris: list[str] = []
        resources: Mapping[str, Any] = {}
        self_loading = False
        for field in FRAMEWORKS:
            section = predictor.get(field)
            if not isinstance(section, Mapping):
                continue
            model_format = str((section.get("modelFormat") or {}).get("name") or "").lower()
            runtime = str(section.get("runtime") or "").lower()
            self_loading = self_loading or field == "huggingface" or model_format in SELF_LOADING_FORMATS \
                or any(name in runtime for name in SELF_LOADING_FORMATS)
            if section.get("storageUri"):
                uris.append(str(section["storageUri"]))
            uris += _uris(section.get("storageUris"))
            if isinstance(section.get("resources"), Mapping) and not resources:
                resources = section["resources"]
        uris += _uris(predictor.get("storageUris"))
        node_affinity = (predictor.get("affinity") or {}).get("nodeAffinity") or {}
        required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        min_replicas = predictor.get("minReplicas")
        return cls(
            storage_uris=tuple(dict.fromkeys(uris)),
            resources={k: dict(v) for k, v in resources.items()
                       if k in ("limits", "requests") and isinstance(v, Mapping)},
            node_selector={str(k): str(v) for k, v in (predictor.get("nodeSelector") or {}).items()},
            tolerations=tuple({k: t[k] for k in TOLERATION_FIELDS if k in t}
                              for t in predictor.get("tolerations") or () if isinstance(t, Mapping)),
            affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
            if isinstance(required, Mapping) else None,
            service_account_name=str(predictor["serviceAccountName"]) if predictor.get("serviceAccountName") else None,
            min_replicas=min_replicas if isinstance(min_replicas, int) and not isinstance(min_replicas, bool) else 1,
            self_loading=self_loading,
        )


def _uris(raw: object) -> list[str]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    return [str(item["uri"]) for item in raw if isinstance(item, Mapping) and item.get("uri")]


def opted_in(isvc: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> bool:
    """The service's annotation `serverless.xyz/prewarm: "true"`, or its namespace's label
    `serverless.xyz/prewarm: "enabled"`. An explicit annotation "false" opts a service out."""
    annotation = ObjectMeta.parse(isvc.get("metadata")).annotations.get(OPT_IN_ANNOTATION)
    if annotation is not None:
        return annotation.strip().lower() == OPT_IN_ANNOTATION_VALUE
    return namespace_labels.get(OPT_IN_NAMESPACE_LABEL) == OPT_IN_NAMESPACE_VALUE


@dataclasses.dataclass(frozen=True)
class DesiredPrewarm:
    body: dict[str, Any] | None  # None: nothing to warm (no model URI)
    problems: tuple[str, ...] = ()  # for Warning events on the InferenceService


def node_count(isvc: Mapping[str, Any], predictor: Predictor) -> tuple[int, str | None]:
    """`max(1, minReplicas)`, or the `serverless.xyz/prewarm-nodes` annotation when it is a count."""
    default = max(1, predictor.min_replicas)
    raw = ObjectMeta.parse(isvc.get("metadata")).annotations.get(NODES_ANNOTATION)
    if raw is None:
        return default, None
    text = raw.strip()
    if text.isdigit() and 1 <= int(text) <= 1000:
        return int(text), None
    return default, f"annotation {NODES_ANNOTATION}={raw!r} is not a node count from 1 to 1000; using {default}"


def desired_prewarm(isvc: Mapping[str, Any]) -> DesiredPrewarm:
    """The ModelPrewarm of the same name, owned by the InferenceService, following its predictor."""
    meta = ObjectMeta.parse(isvc.get("metadata"))
    predictor = Predictor.parse(isvc)
    if not predictor.storage_uris:
        return DesiredPrewarm(None, ("the predictor names no storageUri: nothing to pre-warm",))
    count, problem = node_count(isvc, predictor)
    problems = [problem] if problem else []
    spec: dict[str, Any] = {"storageUri": predictor.storage_uris[0], "nodeCount": count}
    device = meta.annotations.get(DEVICE_ANNOTATION)
    if device is not None and device.strip() in DEVICES:
        spec["device"] = device.strip()
    elif device is not None:
        problems.append(f"annotation {DEVICE_ANNOTATION}={device!r} is not one of {', '.join(DEVICES)}; ignored")
    if "device" not in spec and predictor.self_loading:
        spec["device"] = DEVICE_NONE
    if predictor.node_selector:
        spec["nodeSelector"] = dict(predictor.node_selector)
    if predictor.tolerations:
        spec["tolerations"] = [dict(t) for t in predictor.tolerations]
    if predictor.affinity is not None:
        spec["affinity"] = predictor.affinity
    if predictor.resources:
        spec["resources"] = dict(predictor.resources)
    if predictor.service_account_name:
        spec["serviceAccountName"] = predictor.service_account_name
    annotations: dict[str, str] = {}
    if meta.annotations.get(RETRY_ANNOTATION) is not None:
        annotations[RETRY_ANNOTATION] = meta.annotations[RETRY_ANNOTATION]
    if len(predictor.storage_uris) > 1:
        annotations[ANNOTATION_UNSUPPORTED] = (
            f"pre-warm does not support several storageUris ({len(predictor.storage_uris)}: "
            f"{', '.join(predictor.storage_uris)}); it warms one model per service"
        )
    body: dict[str, Any] = {
        "apiVersion": MODEL_PREWARM.api_version,
        "kind": MODEL_PREWARM.kind,
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "labels": {LABEL_SOURCE: meta.name},
            "annotations": annotations,
            "ownerReferences": [meta.controller_reference_for(INFERENCE_SERVICE).to_dict()],
        },
        "spec": spec,
    }
    return DesiredPrewarm(body, tuple(problems))
