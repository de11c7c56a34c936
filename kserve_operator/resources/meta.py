"""The typed view of `metadata` every resource shares, parsed once from the raw dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from kserve_operator.resources.kinds import Kind


@dataclasses.dataclass(frozen=True)
class OwnerRef:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool = False

    def to_dict(self) -> dict[str, Any]:
        ref: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid}
        if self.controller:
            ref["controller"] = True
            ref["blockOwnerDeletion"] = True
        return ref


@dataclasses.dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str | None
    uid: str
    generation: int | None
    resource_version: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner_references: tuple[OwnerRef, ...]
    deleting: bool

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> ObjectMeta:
        raw = raw or {}
        refs = tuple(
            OwnerRef(
                api_version=str(ref.get("apiVersion", "")), kind=str(ref.get("kind", "")),
                name=str(ref.get("name", "")), uid=str(ref.get("uid", "")),
                controller=bool(ref.get("controller")),
            )
            for ref in raw.get("ownerReferences") or []
            if isinstance(ref, Mapping)
        )
        generation = raw.get("generation")
        return cls(
            name=str(raw.get("name", "")),
            namespace=raw.get("namespace"),
            uid=str(raw.get("uid", "")),
            generation=int(generation) if isinstance(generation, int) else None,
            resource_version=raw.get("resourceVersion"),
            labels=dict(raw.get("labels") or {}),
            annotations=dict(raw.get("annotations") or {}),
            owner_references=refs,
            deleting=bool(raw.get("deletionTimestamp")),
        )

    @property
    def controller(self) -> OwnerRef | None:
        return next((ref for ref in self.owner_references if ref.controller), None)

    def controller_reference_for(self, kind: Kind) -> OwnerRef:
        """The controller owner reference a child of this object carries."""
        return OwnerRef(kind.api_version, kind.kind, self.name, self.uid, controller=True)
