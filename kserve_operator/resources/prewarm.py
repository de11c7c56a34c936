"""The ModelPrewarm custom resource (serving.serverless.xyz/v1alpha1): vocabulary and typed spec.

The CRD schema rejects malformed input at the API server (nodeCount 0, unknown fields, a missing
storageUri); `parse_spec` turns what it admitted into a typed spec with the defaults applied, so
planning never reads a raw dict. Problems a schema cannot see (a non-S3 URI, a missing Secret) are
planning's to report in status.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar

from kserve_operator.errors import InvalidSpec
from kserve_operator.resources.conditions import Condition, parse_rfc3339
from kserve_operator.resources.fields import required_int_field
from kserve_operator.resources.status_view import StatusView

# Labels and annotations: one spelling each.
LABEL_PREWARM = "serving.serverless.xyz/modelprewarm"  # on Jobs and their Pods: the owner's name
LABEL_SPEC_HASH = "serving.serverless.xyz/prewarm-spec"  # on Jobs: the hash of what the Job runs
ANNOTATION_NODE = "serving.serverless.xyz/prewarm-node"  # on Jobs: the node the Job is pinned to
ANNOTATION_TARGET_VERSION = "serving.serverless.xyz/prewarm-target-version"  # on re-warm Jobs
ANNOTATION_ATTEMPT = "serving.serverless.xyz/prewarm-attempt"  # on retry Jobs: 1, 2, ...
ANNOTATION_OWNER = "serving.serverless.xyz/prewarm-owner"  # on Jobs: <namespace>/<ModelPrewarm>
# On Jobs and copied credentials in the platform's namespace: whose they are. Labels, not owner
# references, since an owner reference cannot cross namespaces.
LABEL_PREWARM_NAMESPACE = "serving.serverless.xyz/prewarm-namespace"
LABEL_PREWARM_UID = "serving.serverless.xyz/prewarm-uid"
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"  # set by the Job controller on its Pods
LABEL_HOSTNAME = "kubernetes.io/hostname"
MANAGED_BY = {"app.kubernetes.io/name": "model-preloader", "app.kubernetes.io/managed-by": "kserve-operator"}

# Opting an InferenceService in, and overriding its node count.
OPT_IN_ANNOTATION = "serverless.xyz/prewarm"
OPT_IN_ANNOTATION_VALUE = "true"
OPT_IN_NAMESPACE_LABEL = "serverless.xyz/prewarm"
OPT_IN_NAMESPACE_VALUE = "enabled"
NODES_ANNOTATION = "serverless.xyz/prewarm-nodes"
# `cpu`: warm the node cache and host memory only (the serving pods hold the GPUs, or the node
# pool has no working CUDA, as the dev cluster's simulated GPU nodes); default: the spec's rule.
DEVICE_ANNOTATION = "serverless.xyz/prewarm-device"
# Any new value retries the failed nodes at once instead of after their backoff.
RETRY_ANNOTATION = "serverless.xyz/prewarm-retry"
# KServe's labels on the predictor's Pods.
LABEL_ISVC = "serving.kserve.io/inferenceservice"
LABEL_COMPONENT = "component"
PREDICTOR = "predictor"

DEFAULT_CACHE_PATH = "/var/cache/kserve-prewarm"
DEFAULT_JOB_NAMESPACE = "kserve-prewarm"
DEFAULT_BACKOFF_LIMIT = 2
DEFAULT_ACTIVE_DEADLINE_SECONDS = 3600
DEFAULT_SERVICE_ACCOUNT = "default"
# `none`: fill the node cache only (runtimes that load their own weights): the Job asks for no GPU.
DEVICE_NONE = "none"
DEVICES = ("cuda", "cpu", DEVICE_NONE)

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


def parse_quantity(value: object, *, field: str = "quantity") -> Decimal:
    """A Kubernetes resource quantity (`2`, `500m`, `16Gi`, `1e3`) as an exact decimal."""
    if isinstance(value, bool):
        raise InvalidSpec(f"{field}: {value!r} is not a quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise InvalidSpec(f"{field}: {value!r} is not a quantity")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * Decimal(10) ** int(suffix[1:])


def parse_size(value: object, *, field: str) -> int:
    """A byte count given as an integer or a quantity (`10Gi`, `500G`)."""
    amount = parse_quantity(value, field=field)
    if amount < 1:
        raise InvalidSpec(f"{field} must be at least one byte, got {value!r}")
    return int(amount)


@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"operator": self.operator}
        if self.key:
            out["key"] = self.key
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One matchExpressions / matchFields entry of a node selector term."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SelectorTerm:
    match_expressions: tuple[Requirement, ...] = ()
    match_fields: tuple[Requirement, ...] = ()


@dataclasses.dataclass(frozen=True)
class PrewarmSpec:
    storage_uri: str
    node_count: int = 1
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    required_terms: tuple[SelectorTerm, ...] | None = None  # None: no required node affinity
    requests: Mapping[str, str] = dataclasses.field(default_factory=dict)
    limits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    service_account_name: str | None = None
    device: str = "cpu"
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE_SECONDS
    revision: str = ""

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        """What the Job's container asks for: the predictor's, without GPUs unless it loads onto one
        (`cpu` and `none` never touch a GPU, so they never wait for or hold one a serving pod needs)."""
        out: dict[str, dict[str, str]] = {}
        for key, values in (("requests", self.requests), ("limits", self.limits)):
            kept = {k: v for k, v in values.items() if not (self.device != "cuda" and k.endswith("/gpu"))}
            if kept:
                out[key] = kept
        return out

    def requested(self) -> dict[str, Decimal]:
        """What a node must have allocatable: requests, and limits where no request is given
        (Kubernetes defaults a missing request to the limit; extended resources are limits only)."""
        wanted = {name: parse_quantity(value, field=f"resources.limits.{name}") for name, value in self.limits.items()}
        wanted.update({name: parse_quantity(value, field=f"resources.requests.{name}")
                       for name, value in self.requests.items()})
        return {name: amount for name, amount in wanted.items() if amount > 0}


def requests_gpu(limits: Mapping[str, object], requests: Mapping[str, object]) -> bool:
    """True when any `*/gpu` extended resource (nvidia.com/gpu, amd.com/gpu) is asked for."""
    for name, value in {**limits, **requests}.items():
        if name.endswith("/gpu"):
            try:
                if parse_quantity(value) > 0:
                    return True
            except InvalidSpec:
                return False
    return False


def _strings(raw: object, field: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidSpec(f"{field} must be a map of strings")
    return {str(key): str(value) for key, value in raw.items()}


def parse_tolerations(raw: object) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise InvalidSpec("tolerations must be a list")
    out = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise InvalidSpec("every toleration must be an object")
        seconds = item.get("tolerationSeconds")
        operator = str(item.get("operator") or "Equal")
        key = str(item.get("key") or "")
        if not key and operator != "Exists":
            raise InvalidSpec("a toleration with an empty key must use operator Exists")
        out.append(Toleration(key=key, operator=operator, value=str(item.get("value") or ""),
                              effect=str(item.get("effect") or ""),
                              toleration_seconds=int(seconds) if isinstance(seconds, int) else None))
    return tuple(out)


def _requirements(raw: object) -> tuple[Requirement, ...]:
    if not isinstance(raw, Sequence):
        return ()
    return tuple(
        Requirement(key=str(item.get("key", "")), operator=str(item.get("operator", "")),
                    values=tuple(str(v) for v in item.get("values") or ()))
        for item in raw if isinstance(item, Mapping)
    )


def parse_required_terms(affinity: object) -> tuple[SelectorTerm, ...] | None:
    """The required node-affinity terms of a Pod-style `affinity`; None when there are none."""
    if not isinstance(affinity, Mapping):
        return None
    node_affinity = affinity.get("nodeAffinity")
    if not isinstance(node_affinity, Mapping):
        return None
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if not isinstance(required, Mapping):
        return None
    return tuple(
        SelectorTerm(_requirements(term.get("matchExpressions")), _requirements(term.get("matchFields")))
        for term in required.get("nodeSelectorTerms") or () if isinstance(term, Mapping)
    )


def parse_spec(spec: Mapping[str, Any] | None) -> PrewarmSpec:
    """The admitted spec as a PrewarmSpec with defaults; InvalidSpec names the field it cannot use."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec is missing")
    uri = spec.get("storageUri")
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidSpec("storageUri is required")
    resources = spec.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidSpec("resources must be an object")
    limits = _strings(resources.get("limits"), "resources.limits")
    requests = _strings(resources.get("requests"), "resources.requests")
    device = spec.get("device") or ("cuda" if requests_gpu(limits, requests) else "cpu")
    if device not in DEVICES:
        raise InvalidSpec(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    account = spec.get("serviceAccountName")
    parsed = PrewarmSpec(
        storage_uri=uri.strip(),
        node_count=required_int_field(spec, "nodeCount", low=1, default=1),
        node_selector=_strings(spec.get("nodeSelector"), "nodeSelector"),
        tolerations=parse_tolerations(spec.get("tolerations")),
        required_terms=parse_required_terms(spec.get("affinity")),
        requests=requests,
        limits=limits,
        service_account_name=str(account) if account else None,
        device=str(device),
        backoff_limit=required_int_field(spec, "backoffLimit", low=0, default=DEFAULT_BACKOFF_LIMIT),
        active_deadline_seconds=required_int_field(spec, "activeDeadlineSeconds", low=1,
                                                   default=DEFAULT_ACTIVE_DEADLINE_SECONDS),
        revision=str(spec.get("revision") or ""),
    )
    parsed.requested()  # every quantity parses, or InvalidSpec now rather than mid-plan
    return parsed


@dataclasses.dataclass(frozen=True)
class PrewarmStatus(StatusView):
    """A ModelPrewarm's status, typed (resources/status_view.py: `parse`, `to_status`, `patch_from`);
    planning.prewarm plans the keys that change (`with_changes` lays them over the status as read)."""

    KEYS: ClassVar[Mapping[str, str]] = {
        "phase": "phase", "desiredNodes": "desired_nodes", "warmNodes": "warm_nodes", "warm": "warm",
        "qualifyingNodes": "qualifying_nodes", "storageUri": "storage_uri", "modelVersion": "model_version",
        "nodes": "nodes", "nextRetryAt": "next_retry_at", "retryRequest": "retry_request",
        "capacityDemand": "capacity_demand", "servingPods": "serving_pods",
        "servingOnWarmNodes": "serving_on_warm_nodes", "conditions": "conditions",
        "observedGeneration": "observed_generation",
    }

    phase: str | None = None
    desired_nodes: int | None = None
    warm_nodes: int | None = None
    warm: str | None = None  # "warm/desired", for kubectl's column
    qualifying_nodes: int | None = None
    storage_uri: str | None = None
    model_version: str | None = None
    nodes: tuple[Mapping[str, Any], ...] | None = None  # one entry per node with a Job or an outcome
    next_retry_at: str | None = None  # RFC 3339: the earliest retry of a failed node
    retry_request: str | None = None  # the RETRY_ANNOTATION value last acted on
    capacity_demand: Mapping[str, Any] | None = None
    serving_pods: int | None = None
    serving_on_warm_nodes: str | None = None
    conditions: tuple[Condition, ...] | None = None
    observed_generation: int | None = None
    unknown: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def retry_in(self, now: datetime.datetime) -> float | None:
        """Seconds until the next scheduled retry of a failed node (None: none scheduled); at least
        one, so a retry the plan holds back past its time is looked at again at most once a second."""
        if not self.next_retry_at:
            return None
        try:
            due = parse_rfc3339(self.next_retry_at)
        except ValueError:
            return None
        return max((due - now).total_seconds(), 1.0)


@dataclasses.dataclass(frozen=True)
class PrewarmPlatform:
    """What the platform team decides, never a tenant: where the Jobs run and the node cache."""

    namespace: str = DEFAULT_JOB_NAMESPACE
    cache_path: str = DEFAULT_CACHE_PATH
    cache_max_bytes: int | None = None
    image: str = ""  # the operator's PRELOADER_IMAGE
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """One entry of `status.nodes` from an earlier reconcile: what a node was warmed with."""

    name: str
    phase: str
    job: str
    version: str

    @classmethod
    def parse_all(cls, status: Mapping[str, Any] | None) -> tuple[NodeRecord, ...]:
        entries = (status or {}).get("nodes") or []
        return tuple(
            cls(name=str(e.get("name", "")), phase=str(e.get("phase", "")), job=str(e.get("job", "")),
                version=str(e.get("version", "")))
            for e in entries if isinstance(e, Mapping) and e.get("name")
        )
