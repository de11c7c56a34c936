"""What kinds of objects the emulated cluster serves: built-in kinds and CRDs.

A ``ResourceDef`` is everything the server needs to know about one resource (one group and
plural, served at one or more versions): its kind names for discovery, its scope, whether
it has an isolated ``/status`` subresource, how ``metadata.generation`` moves, and, for
custom resources, the openAPIV3Schema of each served version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class ResourceDef:
    """One resource (group + plural), possibly served at several versions."""

    group: str
    versions: list[str]
    plural: str
    kind: str
    singular: str
    namespaced: bool
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    custom: bool = False
    #: Whether ``metadata.generation`` is kept (custom resources, workload kinds).
    has_generation: bool = False
    #: openAPIV3Schema per served version (custom resources only).
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The CRD object this came from, when it came from one.
    crd: dict[str, Any] | None = None
    #: What DELETE does to dependents without a propagationPolicy (batch/v1 Jobs orphan their Pods).
    default_propagation: str = "Background"
    #: Built-in kinds: the top-level fields of the type (others are unknown fields); empty: not checked.
    top_level: frozenset[str] = frozenset()
    #: Whether a DELETE that removes the object answers with it (the real server's storage of pods,
    #: services, namespaces, service accounts, PVCs; CRDs always wait for their cleanup finalizer)
    #: rather than with a ``Status`` (every other kind, custom resources included).
    returns_deleted_object: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        """``plural.group`` as used in error messages (``deployments.apps``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def base_path(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"

    def collection_path(self, namespace: str | None, version: str | None = None) -> str:
        base = self.base_path(version)
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version ordering key: GA > beta > alpha, higher numbers first (sort ascending)."""
    match = _VERSION_RE.match(version)
    if not match:
        return (3, 0, 0, version)  # non-conventional versions sort last, alphabetically
    major = int(match.group(1))
    stage = {"": 0, None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    minor = int(match.group(3) or 0)
    return (stage, -major, -minor, version)


_SPEC_STATUS = ("spec", "status")
#: The top-level fields of the built-in types (besides apiVersion, kind and metadata).
_TOP_LEVEL: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "namespaces"): _SPEC_STATUS, ("", "nodes"): _SPEC_STATUS, ("", "pods"): _SPEC_STATUS,
    ("", "services"): _SPEC_STATUS, ("", "persistentvolumeclaims"): _SPEC_STATUS,
    ("", "endpoints"): ("subsets",),
    ("", "configmaps"): ("data", "binaryData", "immutable"),
    ("", "secrets"): ("data", "binaryData", "stringData", "type", "immutable"),
    ("", "serviceaccounts"): ("secrets", "imagePullSecrets", "automountServiceAccountToken"),
    ("", "events"): ("involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count",
                     "type", "eventTime", "series", "action", "related", "reportingComponent",
                     "reportingInstance"),
    ("apps", "deployments"): _SPEC_STATUS, ("apps", "replicasets"): _SPEC_STATUS, ("batch", "jobs"): _SPEC_STATUS,
    ("events.k8s.io", "events"): ("eventTime", "series", "reportingController", "reportingInstance", "action",
                                  "reason", "regarding", "related", "note", "type", "deprecatedSource",
                                  "deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount"),
    ("coordination.k8s.io", "leases"): ("spec",),
    ("apiextensions.k8s.io", "customresourcedefinitions"): _SPEC_STATUS,
}


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             shortnames: Iterable[str] = (), categories: Iterable[str] = (), status: bool = False,
             generation: bool = False, default_propagation: str = "Background",
             returns_deleted_object: bool = False) -> ResourceDef:
    fields = _TOP_LEVEL.get((group, plural))
    return ResourceDef(
        group=group, versions=[version], plural=plural, kind=kind, singular=kind.lower(),
        namespaced=namespaced, shortnames=tuple(shortnames), categories=tuple(categories),
        status_subresource=status, has_generation=generation, default_propagation=default_propagation,
        returns_deleted_object=returns_deleted_object,
        top_level=frozenset(("apiVersion", "kind", "metadata", *fields)) if fields else frozenset(),
    )


def builtin_resources() -> list[ResourceDef]:
    """The built-in kinds the operator and its tests use (not schema-validated)."""
    return [
        _builtin("", "v1", "namespaces", "Namespace", namespaced=False, shortnames=["ns"], status=True,
                 returns_deleted_object=True),
        _builtin("", "v1", "nodes", "Node", namespaced=False, shortnames=["no"], status=True),
        _builtin("", "v1", "pods", "Pod", shortnames=["po"], categories=["all"], status=True, generation=True,
                 returns_deleted_object=True),
        _builtin("", "v1", "services", "Service", shortnames=["svc"], categories=["all"], status=True,
                 returns_deleted_object=True),
        _builtin("", "v1", "endpoints", "Endpoints", shortnames=["ep"]),
        _builtin("", "v1", "configmaps", "ConfigMap", shortnames=["cm"]),
        _builtin("", "v1", "secrets", "Secret"),
        _builtin("", "v1", "serviceaccounts", "ServiceAccount", shortnames=["sa"], returns_deleted_object=True),
        _builtin("", "v1", "events", "Event", shortnames=["ev"]),
        _builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", shortnames=["pvc"], status=True,
                 returns_deleted_object=True),
        _builtin("apps", "v1", "deployments", "Deployment", shortnames=["deploy"], categories=["all"],
                 status=True, generation=True),
        _builtin("apps", "v1", "replicasets", "ReplicaSet", shortnames=["rs"], categories=["all"],
                 status=True, generation=True),
        _builtin("batch", "v1", "jobs", "Job", categories=["all"], status=True, generation=True,
                 default_propagation="Orphan"),
        _builtin("events.k8s.io", "v1", "events", "Event", shortnames=["ev"]),
        _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
        _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, shortnames=["crd", "crds"], categories=["api-extensions"], status=True,
                 generation=True, returns_deleted_object=True),
    ]


def resource_from_crd(crd: Mapping[str, Any]) -> ResourceDef:
    """Build the served resource from a ``CustomResourceDefinition`` (apiextensions.k8s.io/v1)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    served = [v for v in spec.get("versions") or [] if v.get("served", True)]
    if not spec.get("group") or not names.get("plural") or not names.get("kind") or not served:
        raise ValueError(f"Not a usable CRD (group, names.plural, names.kind, served versions): {crd!r}")
    storage = [v["name"] for v in served if v.get("storage")]
    ordered = sorted((v["name"] for v in served), key=version_priority)
    versions = storage + [v for v in ordered if v not in storage]
    status = any("status" in (v.get("subresources") or {}) for v in served) or \
        "status" in (spec.get("subresources") or {})
    schemas: dict[str, dict[str, Any]] = {}
    for version in served:
        schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
        if schema:
            schemas[version["name"]] = schema
    return ResourceDef(
        group=spec["group"],
        versions=versions,
        plural=names["plural"],
        kind=names["kind"],
        singular=names.get("singular") or names["kind"].lower(),
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        shortnames=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status_subresource=status,
        custom=True,
        has_generation=True,
        schemas=schemas,
        crd=dict(crd),
    )


#: libyaml's safe loader when PyYAML has it: large CRDs load several times faster, and every
#: test starts a cluster.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_crd_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Read CRDs from YAML files or directories of them (other kinds in those files are skipped)."""
    documents: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        for file in files:
            for doc in yaml.load_all(file.read_text(), Loader=_SAFE_LOADER):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    documents.append(doc)
    return documents
