"""What an informer keeps of an object: its transform, applied before the object enters the store.

Every kind loses the API server's bookkeeping, which no reconcile reads and which is often the
larger half of an object on a real server (controller-runtime's `TransformStripManagedFields`):
`metadata.managedFields` (server-side apply's field owners) and kubectl's
`last-applied-configuration` annotation (a second copy of the object as applied). A few kinds
lose more, each only fields the operator provably never reads (tests/unit/operator/
test_stored_objects.py runs the readers on the full object and on the kept one and compares):

- Node: `status.images` (every image on the node, tens of KiB on a busy one). Qualification reads
  the labels, taints, `unschedulable`, `status.allocatable` and the deletion mark.
- Pod (the pre-warm Jobs' pods and the predictors'): the spec but `nodeName`. The plans read the
  metadata (labels, creation time, deletion mark), `spec.nodeName` and the status (phase, the
  preloader's termination message); a predictor's containers, volumes and probes are never read.

What stays is always enough for a conditional write: `metadata.resourceVersion`, `uid`, `generation`,
labels, the other annotations, owner references and finalizers are kept as they came. The object
handed in is never changed (a write's answer goes back to its caller whole): a transform copies
the parts it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kserve_operator.resources.kinds import NODE, POD, Kind

Object = dict[str, Any]
Transform = Callable[[Mapping[str, Any]], Object]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def strip_bookkeeping(obj: Mapping[str, Any]) -> Object:
    """Without `metadata.managedFields` and kubectl's last-applied annotation (every kind)."""
    kept = dict(obj)
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or ("managedFields" not in meta and LAST_APPLIED not in
                                         (meta.get("annotations") or {})):
        return kept
    meta = {key: value for key, value in meta.items() if key != "managedFields"}
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping) and LAST_APPLIED in annotations:
        meta["annotations"] = {key: value for key, value in annotations.items() if key != LAST_APPLIED}
    kept["metadata"] = meta
    return kept


def node_for_store(obj: Mapping[str, Any]) -> Object:
    """A Node without the bookkeeping and without `status.images`."""
    kept = strip_bookkeeping(obj)
    status = kept.get("status")
    if isinstance(status, Mapping) and "images" in status:
        kept["status"] = {key: value for key, value in status.items() if key != "images"}
    return kept


def pod_for_store(obj: Mapping[str, Any]) -> Object:
    """A Pod without the bookkeeping and with only `spec.nodeName` of its spec."""
    kept = strip_bookkeeping(obj)
    spec = kept.get("spec")
    if isinstance(spec, Mapping):
        kept["spec"] = {"nodeName": spec["nodeName"]} if spec.get("nodeName") else {}
    return kept


_BY_KIND: dict[Kind, Transform] = {NODE: node_for_store, POD: pod_for_store}


def transform_for(kind: Kind) -> Transform:
    """The transform an informer of `kind` applies (the bookkeeping only, unless the kind has its own)."""
    return _BY_KIND.get(kind, strip_bookkeeping)
