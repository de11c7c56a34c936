"""Where a predictor pod should prefer to run: the nodes on which its model is warm.

The admission webhook (controllers/placement.py) gives each new predictor pod of an
InferenceService one *preferred* node-affinity term toward the nodes where the matching
ModelPrewarm is Warm. Preferred, never required: a full or lost warm node still lets the pod
run elsewhere. Everything the pod already asks for (required terms, its own preferred terms,
pod (anti-)affinity) is kept.

Pure: the pod and the ModelPrewarms come in as plain mappings, the new affinity goes out.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kserve_operator.resources.prewarm_conditions import PrewarmPhase

#: KServe's labels on a predictor's pods.
ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"
PREDICTOR = "predictor"
#: KServe's annotation carrying the model URI on the pod (set by its storage initializer injector).
SOURCE_URI_ANNOTATION = "serving.kserve.io/storage-initializer-sourceuri"
#: The hostnames this webhook preferred, comma-separated: what a reinvocation must replace, not add to.
PREFERRED_ANNOTATION = "serving.serverless.xyz/warm-nodes-preferred"
HOSTNAME_LABEL = "kubernetes.io/hostname"
#: Constant: the scheduler sums the weights of matching preferred terms; 100 is the most a term can weigh.
WARM_NODE_WEIGHT = 100


@dataclasses.dataclass(frozen=True)
class WarmModel:
    """What the webhook needs of one ModelPrewarm, kept in the operator's in-memory index."""

    name: str
    storage_uri: str
    hostnames: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PlacementPatch:
    """The pod's new `spec.affinity` and the annotation recording which hostnames were preferred."""

    affinity: dict[str, Any]
    annotation: str


def _same_uri(left: str, right: str) -> bool:
    """`s3://b/m` and `s3://b/m/` name the same prefix."""
    return left.rstrip("/") == right.rstrip("/")


def warm_model(name: str, status: Mapping[str, Any] | None) -> WarmModel | None:
    """A ModelPrewarm's status -> its warm hostnames, or None when nothing is warm.

    A node counts when its phase is Warm and it holds the status's `modelVersion` (a node still
    carrying an older version of the same URI is not warm for it). `hostname` (the node's
    kubernetes.io/hostname label) is used when the entry has it, else the node name.
    """
    if not isinstance(status, Mapping):
        return None
    uri = status.get("storageUri")
    if not isinstance(uri, str) or not uri:
        return None
    version = status.get("modelVersion")
    hostnames: list[str] = []
    for node in status.get("nodes") or []:
        if not isinstance(node, Mapping) or node.get("phase") != PrewarmPhase.WARM or node.get("version") != version:
            continue
        hostname = node.get("hostname") or node.get("name")
        if isinstance(hostname, str) and hostname and hostname not in hostnames:
            hostnames.append(hostname)
    if not hostnames:
        return None
    return WarmModel(name=name, storage_uri=uri, hostnames=tuple(sorted(hostnames)))


def warm_hostnames(pod: Mapping[str, Any], models: Iterable[WarmModel]) -> tuple[str, ...]:
    """The hostnames where the pod's model is warm, from the ModelPrewarms of the pod's namespace.

    The model is the pod's storage-initializer URI annotation; a pod without it takes the
    ModelPrewarm named like its InferenceService (the one the operator keeps for it).
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    isvc = labels.get(ISVC_LABEL)
    uri = annotations.get(SOURCE_URI_ANNOTATION)
    found: set[str] = set()
    for model in models:
        matches = _same_uri(model.storage_uri, str(uri)) if uri else model.name == isvc
        if matches:
            found.update(model.hostnames)
    return tuple(sorted(found))


def is_predictor(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(ISVC_LABEL)) and labels.get(COMPONENT_LABEL) == PREDICTOR


def warm_term(hostnames: Sequence[str]) -> dict[str, Any]:
    """The one preferred term: `kubernetes.io/hostname In [...]` (matchFields takes one value only)."""
    return {"weight": WARM_NODE_WEIGHT, "preference": {"matchExpressions": [
        {"key": HOSTNAME_LABEL, "operator": "In", "values": list(hostnames)}]}}


def plan_placement(pod: Mapping[str, Any], hostnames: Sequence[str]) -> PlacementPatch | None:
    """The pod's affinity with the warm-node term added, or None to leave the pod as it is.

    None for: no warm node, a pod already bound (`spec.nodeName`), a pod that is not a
    predictor, and a pod that already carries this very term (a reinvocation). When a
    reinvocation finds the term it added earlier for other hostnames (the warm set moved in
    between), that term is replaced, so the pod never carries two.
    """
    if not hostnames or not is_predictor(pod):
        return None
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return None
    wanted = warm_term(sorted(set(hostnames)))
    affinity = copy.deepcopy(dict(spec.get("affinity") or {}))
    node_affinity = dict(affinity.get("nodeAffinity") or {})
    preferred = list(node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    if wanted in preferred:
        return None
    previous = ((pod.get("metadata") or {}).get("annotations") or {}).get(PREFERRED_ANNOTATION)
    if previous:
        ours = warm_term(previous.split(","))
        preferred = [term for term in preferred if term != ours]
    preferred.append(wanted)
    node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    affinity["nodeAffinity"] = node_affinity
    return PlacementPatch(affinity=affinity, annotation=",".join(sorted(set(hostnames))))
