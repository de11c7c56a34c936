"""The object store and the write semantics of kube-apiserver (the emulated cluster's etcd).

It owns: the global resourceVersion counter, uid / generation / creationTimestamp /
generateName, resourceVersion preconditions (409 Conflict), the isolated ``/status``
subresource, finalizers and ``deletionTimestamp``, deletion propagation (Background,
Foreground, Orphan), owner-reference garbage collection, namespaces (existence, termination),
admission (validation.py; CRDs must have structural schemas, structural.py; CEL rules unless
``cel_rules`` is off, cel.py), what typed decoding drops (``_as_typed``) and the per-resource watch
history that watch streams replay from.

All methods are synchronous and run on the server's event loop only, so each write is atomic.
Stored objects are never mutated in place: every write stores a fresh copy, so an object in
the watch history is a faithful snapshot of that moment.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from devcluster import errors, patches, structural, validation
from devcluster.label_selectors import Selector
from devcluster.resources import ResourceDef, builtin_resources, resource_from_crd

logger = logging.getLogger("devcluster.store")

ResourceKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)
ObjectRef = tuple[ResourceKey, str, str]  # (resource, namespace or "", name)
Obj = dict[str, Any]

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's generateName alphabet


#: ObjectMeta's fields that the real server, serialising a typed ObjectMeta, leaves out when empty.
_OMITTED_WHEN_EMPTY = ("labels", "annotations", "finalizers", "ownerReferences", "managedFields", "generateName")


def _as_typed(resource: ResourceDef, obj: Obj) -> None:
    """What typed decoding and encoding do on the real server: empty metadata maps and lists go;
    for Secrets, ``stringData`` is merged into ``data`` (base64) and ``type`` defaults to Opaque;
    empty ``data`` / ``binaryData`` of ConfigMaps and Secrets go."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in _OMITTED_WHEN_EMPTY:
            if key in meta and meta[key] in (None, "", [], {}):
                del meta[key]
    if resource.key == ("", "secrets"):
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict) and string_data:
            data = dict(obj.get("data") or {})
            data.update({key: base64.b64encode(str(value).encode()).decode() for key, value in string_data.items()})
            obj["data"] = data
        obj.setdefault("type", "Opaque")
    if resource.key in (("", "secrets"), ("", "configmaps")):
        for key in ("data", "binaryData"):
            if key in obj and obj[key] in (None, {}):
                del obj[key]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One change in the history: the object after it and, for MODIFIED, before it."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None = None


@dataclass
class EventLog:
    """A bounded history of one resource's changes plus the queues of its live watchers."""

    history: int
    events: deque[WatchEvent] = field(default_factory=deque)
    compacted_rv: int = 0  # events at or below this resourceVersion may have been dropped
    watchers: set[asyncio.Queue[WatchEvent | None]] = field(default_factory=set)

    def append(self, event: WatchEvent) -> None:
        self.events.append(event)
        while len(self.events) > self.history:
            self.compacted_rv = self.events.popleft().rv
        for queue in self.watchers:
            queue.put_nowait(event)


class ObjectStore:
    """Objects of every served resource, with the API server's write semantics."""

    def __init__(self, *, history: int = 2000, cel_rules: bool = True) -> None:
        """``cel_rules``: evaluate the CRDs' CEL rules (``x-kubernetes-validations``) on writes, as
        the real server does (the default)."""
        self.rv = 0
        self.history = history
        self.cel_rules = cel_rules
        self.resources: dict[ResourceKey, ResourceDef] = {}
        self.objects: dict[ResourceKey, dict[ObjectKey, Obj]] = {}
        self.logs: dict[ResourceKey, EventLog] = {}
        self.uids: dict[str, ObjectRef] = {}
        self.dependents: dict[str, set[ObjectRef]] = {}
        self.schemas: dict[tuple[str, str, str], validation.CustomResourceSchema] = {}
        self.listeners: list[Callable[[ResourceDef, WatchEvent], None]] = []
        self.on_resources_changed: list[Callable[[], None]] = []
        self._foreground: set[str] = set()  # uids of owners waiting for their dependents
        for resource in builtin_resources():
            self.register(resource)
        for namespace in ("default", "kube-system", "kube-public"):
            self.create(self.resources[("", "namespaces")], None, {"metadata": {"name": namespace}})

    # ---- resources -------------------------------------------------------------------------------

    def register(self, resource: ResourceDef) -> None:
        """Serve a resource (a built-in or a CRD); re-registering replaces its definition."""
        self.resources[resource.key] = resource
        self.objects.setdefault(resource.key, {})
        self.logs.setdefault(resource.key, EventLog(self.history))
        for version, openapi in resource.schemas.items():
            self.schemas[(resource.group, resource.plural, version)] = validation.CustomResourceSchema(openapi)
        for callback in self.on_resources_changed:
            callback()

    def unregister(self, group: str, plural: str) -> None:
        resource = self.resources.pop((group, plural), None)
        if resource is None:
            return
        for obj in self.objects.pop(resource.key, {}).values():
            self.uids.pop(obj["metadata"]["uid"], None)
        for version in resource.versions:
            self.schemas.pop((group, plural, version), None)
        log = self.logs.pop(resource.key, None)
        for queue in log.watchers if log else ():
            queue.put_nowait(None)
        for callback in self.on_resources_changed:
            callback()

    def find(self, group: str, version: str, plural: str) -> ResourceDef | None:
        resource = self.resources.get((group, plural))
        return resource if resource is not None and version in resource.versions else None

    def find_kind(self, api_version: str, kind: str) -> tuple[ResourceDef, str] | None:
        group, _, version = api_version.rpartition("/")
        for resource in self.resources.values():
            if resource.group == group and resource.kind == kind and version in resource.versions:
                return resource, version
        return None

    # ---- reading ---------------------------------------------------------------------------------

    def render(self, resource: ResourceDef, obj: Obj, version: str | None) -> Obj:
        """The object as served at a version (a shallow copy with that apiVersion)."""
        return {**obj, "apiVersion": resource.api_version(version), "kind": resource.kind}

    def get(self, resource: ResourceDef, namespace: str | None, name: str) -> Obj:
        obj = self.objects[resource.key].get(self._key(resource, namespace, name))
        if obj is None:
            raise errors.not_found(resource.plural, resource.group, name)
        return obj

    def list_objects(self, resource: ResourceDef, namespace: str | None, selector: Selector) -> list[Obj]:
        items = [
            obj for (ns, _), obj in self.objects[resource.key].items()
            if (namespace is None or not resource.namespaced or ns == namespace) and selector.matches(obj)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def _key(self, resource: ResourceDef, namespace: str | None, name: str) -> ObjectKey:
        return ((namespace or "") if resource.namespaced else "", name)

    # ---- writing: create ---------------------------------------------------------------------------

    def create(self, resource: ResourceDef, namespace: str | None, body: Any, *, version: str | None = None,
               field_validation: str = "Warn", dry_run: bool = False) -> tuple[Obj, list[str]]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        self._check_type(resource, obj, version)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if resource.namespaced:
            body_ns = meta.get("namespace")
            if namespace is None:
                raise errors.method_not_allowed("create needs a namespace in the URL for a namespaced resource")
            if body_ns and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = namespace
            ns_obj = self.objects[("", "namespaces")].get(("", namespace))
            if ns_obj is None:
                raise errors.not_found("namespaces", "", namespace)
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise errors.ApiStatusError(
                    status=403, reason="Forbidden",
                    message=f'{resource.plural} "{meta.get("name") or meta.get("generateName")}" is forbidden: '
                            f"unable to create new content in namespace {namespace} because it is being terminated",
                    details={"kind": resource.plural, "group": resource.group})
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):  # the real server answers 500 with no reason
            raise errors.ApiStatusError(status=500, reason="", details={},
                                        message="resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if meta.get("generateName"):
                suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
                meta["name"] = f"{meta['generateName']}{suffix}"
            else:
                raise errors.invalid(resource.kind, resource.group, "", [{
                    "reason": "FieldValueRequired", "field": "metadata.name",
                    "message": "Required value: name or generateName is required"}])
        name = meta["name"]
        for system_field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                             "generation", "managedFields", "selfLink"):
            meta.pop(system_field, None)
        if resource.status_subresource:
            obj.pop("status", None)
        if resource.key == ("", "namespaces"):
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        if resource.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            obj["status"] = {"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}],
                "acceptedNames": (obj.get("spec") or {}).get("names", {}),
                "storedVersions": [v.get("name") for v in (obj.get("spec") or {}).get("versions", [])
                                   if v.get("storage")]}
        obj, warnings = self._admit(resource, obj, version, field_validation)
        key = self._key(resource, namespace, name)
        if key in self.objects[resource.key]:
            raise errors.already_exists(resource.plural, resource.group, name)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if resource.has_generation:
            meta["generation"] = 1
        if resource.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            new_resource = resource_from_crd(obj)  # fail before storing an unusable CRD
            if not dry_run:
                self.register(new_resource)
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj, warnings
        self._commit(resource, key, obj, None)
        return obj, warnings

    def _check_type(self, resource: ResourceDef, obj: Obj, version: str | None) -> None:
        """The body's apiVersion and kind against the URL's. A built-in kind's may be left out (taken
        from the URL); a custom resource's may not: without ``kind`` the server cannot decode it (see
        server.py, which words that with the raw body), and an empty apiVersion does not match."""
        api_version = resource.api_version(version)
        if resource.custom and not obj.get("kind"):
            raise errors.missing_kind(resource.kind, json.dumps(obj))
        if obj.get("apiVersion") not in (("",) if resource.custom else (None, "")) + (api_version,):
            raise errors.bad_request(
                f"the API version in the data ({obj.get('apiVersion') or ''}) does not match the expected API version "
                f"({api_version})")
        if obj.get("kind") not in (None, "", resource.kind):
            raise errors.bad_request(
                f"the kind in the data ({obj['kind']}) does not match the expected kind ({resource.kind})")
        obj["apiVersion"] = api_version
        obj["kind"] = resource.kind

    def _admit(self, resource: ResourceDef, obj: Obj, version: str | None,
               field_validation: str, old: Obj | None = None) -> tuple[Obj, list[str]]:
        """Decoding (unknown fields), then validation: metadata, a CRD's schema, a custom resource's
        schema and CEL rules; and what the real server's typed decoding drops or converts."""
        if field_validation not in ("Strict", "Warn", "Ignore", ""):
            validation.check_field_validation(field_validation, "CreateOptions" if old is None else "UpdateOptions")
        name = obj["metadata"].get("name", "")
        kind_version = version or resource.storage_version
        schema = self.schemas.get((resource.group, resource.plural, kind_version))
        if schema is not None:
            obj, warnings = validation.admit_custom(
                schema, obj, field_validation=field_validation, kind=resource.kind, group=resource.group, name=name,
                old=old, metadata_causes=lambda o: validation.validate_metadata(resource, o),
                cel_rules=self.cel_rules)
        else:
            unknown = validation.prune_metadata(obj)
            if resource.top_level:
                extra = sorted(key for key in obj if key not in resource.top_level)
                for key in extra:
                    del obj[key]
                unknown += extra
            warnings = validation.unknown_fields(unknown, field_validation, kind=resource.kind,
                                                 version=resource.api_version(version).rpartition("/")[2])
            causes = validation.validate_metadata(resource, obj)
            if causes:
                raise errors.invalid(resource.kind, resource.group, name, causes)
            if resource.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                causes = structural.crd_causes(obj)
                if causes:
                    raise errors.invalid(resource.kind, resource.group, name, causes)
        _as_typed(resource, obj)
        return obj, warnings

    # ---- writing: update, patch ----------------------------------------------------------------------

    def replace(self, resource: ResourceDef, namespace: str | None, name: str, body: Any, *,
                version: str | None = None, subresource: str | None = None, field_validation: str = "Warn",
                dry_run: bool = False) -> tuple[Obj, list[str]]:
        """PUT: a full replacement with an optional (for custom resources, required) resourceVersion."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        current = self.get(resource, namespace, name)
        candidate = copy.deepcopy(body)
        meta = candidate.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
        precondition = meta.get("resourceVersion")
        if not precondition and resource.custom:
            raise errors.invalid(resource.kind, resource.group, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0x0: must be specified for an update"}])
        return self._update(resource, namespace, name, current, candidate, precondition=precondition,
                            version=version, subresource=subresource, field_validation=field_validation,
                            dry_run=dry_run)

    def patch(self, resource: ResourceDef, namespace: str | None, name: str, patch: Any, content_type: str, *,
              version: str | None = None, subresource: str | None = None, field_validation: str = "Warn",
              dry_run: bool = False) -> tuple[Obj, list[str]]:
        """PATCH: unconditional unless the patched object carries another metadata.resourceVersion.

        As kube-apiserver does for every patch type: the patch is applied to the current object,
        and a resourceVersion in the result that is not the current one (a merge patch carrying
        it, a JSON patch replacing it) is a precondition that fails with 409.
        """
        current = self.get(resource, namespace, name)
        served = self.render(resource, current, version)
        candidate = patches.apply_patch(content_type, served, patch, custom=resource.custom)
        precondition = (candidate.get("metadata") or {}).get("resourceVersion")
        try:
            return self._update(resource, namespace, name, current, candidate, precondition=precondition,
                                version=version, subresource=subresource, field_validation=field_validation,
                                dry_run=dry_run)
        except errors.StrictDecodingError as exc:  # a patch's unknown fields are a 422 naming the patched object
            patched = patches.apply_patch(content_type, served, patch, custom=resource.custom)  # as it was
            raise errors.strict_patch(patched, exc.unknown) from None

    def _update(self, resource: ResourceDef, namespace: str | None, name: str, current: Obj, candidate: Obj, *,
                precondition: str | None, version: str | None, subresource: str | None, field_validation: str,
                dry_run: bool) -> tuple[Obj, list[str]]:
        if subresource not in (None, "status") or (subresource == "status" and not resource.status_subresource):
            raise errors.resource_not_found()
        if precondition and str(precondition) != current["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.plural, resource.group, name)
        cur_meta = current["metadata"]
        new_meta = candidate.get("metadata")
        if not isinstance(new_meta, dict):
            new_meta = {}
        new_namespace = new_meta.get("namespace", cur_meta.get("namespace"))
        if new_meta.get("name", name) != name or \
                (resource.namespaced and new_namespace != cur_meta.get("namespace")):
            raise errors.bad_request("the name or namespace of the object does not match the one on the URL")
        self._check_type(resource, candidate, version)
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            if resource.status_subresource:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
            meta = dict(new_meta)
            for system_field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                                 "generation", "name", "namespace"):
                if system_field in cur_meta:
                    meta[system_field] = cur_meta[system_field]
                else:
                    meta.pop(system_field, None)
            new["metadata"] = meta
            if cur_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
                if added:
                    raise errors.forbidden_new_finalizers(resource.kind, resource.group, name)
        new["apiVersion"] = resource.api_version(version)
        new["kind"] = resource.kind
        new["metadata"]["resourceVersion"] = cur_meta["resourceVersion"]
        new, warnings = self._admit(resource, new, version, field_validation, old=current)
        new["apiVersion"] = resource.api_version()  # stored at the storage version
        if resource.has_generation and self._spec_changed(resource, current, new):
            new["metadata"]["generation"] = int(cur_meta.get("generation", 1)) + 1
        if new == current:
            return current, warnings  # a no-op write: no new resourceVersion, no watch event
        if dry_run:
            return new, warnings
        key = self._key(resource, namespace, name)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            # The last finalizer of a deleting object went: the real server deletes it instead of
            # storing the update (one DELETED event, of the last stored state), and answers with the
            # object as the update made it.
            self._remove(resource, key)
            self._settle()
            return new, warnings
        if resource.key == ("apiextensions.k8s.io", "customresourcedefinitions") and subresource is None:
            self.register(resource_from_crd(new))
        self._commit(resource, key, new, current)
        self._settle()
        return new, warnings

    def _spec_changed(self, resource: ResourceDef, old: Obj, new: Obj) -> bool:
        if not resource.custom:
            return old.get("spec") != new.get("spec")
        ignored = {"metadata", "apiVersion", "kind"} | ({"status"} if resource.status_subresource else set())
        return {k: v for k, v in old.items() if k not in ignored} != \
            {k: v for k, v in new.items() if k not in ignored}

    def write_status(self, resource: ResourceDef, namespace: str | None, name: str, status: Obj) -> Obj | None:
        """Replace the status the way a controller's ``/status`` PUT does (used by the simulations)."""
        try:
            current = self.get(resource, namespace, name)
        except errors.ApiStatusError:
            return None
        candidate = copy.deepcopy(current)
        candidate["status"] = status
        obj, _ = self._update(resource, namespace, name, current, candidate, precondition=None, version=None,
                              subresource="status" if resource.status_subresource else None,
                              field_validation="Ignore", dry_run=False)
        return obj

    # ---- writing: delete ----------------------------------------------------------------------------

    def delete(self, resource: ResourceDef, namespace: str | None, name: str, *,
               propagation: str | None = None, preconditions: dict[str, Any] | None = None,
               dry_run: bool = False) -> Obj:
        current = self.get(resource, namespace, name)
        meta = current["metadata"]
        preconditions = preconditions or {}
        for precondition, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if preconditions.get(precondition) and preconditions[precondition] != meta[precondition]:
                raise errors.ApiStatusError(
                    status=409, reason="Conflict",
                    message=f"Precondition failed: {label} in precondition: {preconditions[precondition]}, "
                            f"{label} in object meta: {meta[precondition]}",
                    details={"name": name, "group": resource.group, "kind": resource.plural})
        propagation = propagation or resource.default_propagation
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise errors.bad_request(f"propagationPolicy: Unsupported value: {propagation!r}")
        if dry_run:  # what the answer would be: held by finalizers, the object marked for deletion
            if meta.get("deletionTimestamp") or not meta.get("finalizers"):
                return current
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if resource.has_generation:
                marked["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            return marked
        key = self._key(resource, namespace, name)
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        if meta.get("deletionTimestamp"):
            return current
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and self._live_dependents(meta["uid"]):
            if "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            self._foreground.add(meta["uid"])
        if resource.key == ("", "namespaces"):
            return self._terminate_namespace(resource, current)
        if not finalizers:
            self._remove(resource, key)
            self._settle()
            return current
        new = copy.deepcopy(current)
        new["metadata"]["finalizers"] = finalizers
        new["metadata"]["deletionTimestamp"] = now_rfc3339()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if resource.has_generation:
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
        self._commit(resource, key, new, current)
        if propagation == "Foreground":
            for ref in list(self.dependents.get(meta["uid"], ())):
                self._delete_ref(ref)
        self._settle()
        return new

    def delete_collection(self, resource: ResourceDef, namespace: str | None, selector: Selector, *,
                          propagation: str | None = None) -> list[Obj]:
        deleted = []
        for obj in self.list_objects(resource, namespace, selector):
            meta = obj["metadata"]
            try:
                deleted.append(self.delete(resource, meta.get("namespace"), meta["name"], propagation=propagation))
            except errors.ApiStatusError:
                continue  # already gone through garbage collection of an earlier one
        return deleted

    def _terminate_namespace(self, resource: ResourceDef, current: Obj) -> Obj:
        new = copy.deepcopy(current)
        new["metadata"]["deletionTimestamp"] = now_rfc3339()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new["status"] = {"phase": "Terminating"}
        name = current["metadata"]["name"]
        self._commit(resource, ("", name), new, current)
        for other in list(self.resources.values()):
            if other.namespaced:
                for (ns, obj_name) in list(self.objects.get(other.key, {})):
                    if ns == name:
                        self._delete_ref((other.key, ns, obj_name))
        self._settle()
        return new

    def _delete_ref(self, ref: ObjectRef) -> None:
        resource_key, namespace, name = ref
        resource = self.resources.get(resource_key)
        if resource is None or (namespace, name) not in self.objects[resource_key]:
            return
        self.delete(resource, namespace or None, name, propagation="Background")

    def _remove(self, resource: ResourceDef, key: ObjectKey) -> None:
        """The object is gone for good: a DELETED event, then garbage collection of its dependents."""
        current = self.objects[resource.key].pop(key)
        uid = current["metadata"]["uid"]
        self.uids.pop(uid, None)
        self._index_owners(current, None, (resource.key, key[0], key[1]))
        self._foreground.discard(uid)
        self.rv += 1
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self._record(resource, WatchEvent(self.rv, "DELETED", final, current))
        if resource.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            spec = current.get("spec") or {}
            self.unregister(spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        self._collect_dependents(uid)

    def _live_dependents(self, uid: str) -> set[ObjectRef]:
        return {ref for ref in self.dependents.get(uid, set())
                if (ref[1], ref[2]) in self.objects.get(ref[0], {})}

    def _collect_dependents(self, owner_uid: str) -> None:
        """The garbage collector: dependents without another live owner are deleted (Background)."""
        for ref in sorted(self._live_dependents(owner_uid)):
            resource = self.resources.get(ref[0])
            obj = self.objects.get(ref[0], {}).get((ref[1], ref[2]))
            if resource is None or obj is None:
                continue
            owners = obj["metadata"].get("ownerReferences") or []
            alive = [o for o in owners if o.get("uid") != owner_uid and o.get("uid") in self.uids]
            if alive:
                dangling = [o for o in owners if o.get("uid") not in self.uids]
                if dangling:
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [o for o in owners if o.get("uid") in self.uids]
                    self._commit(resource, (ref[1], ref[2]), new, obj)
            else:
                logger.debug("Garbage-collecting %s %s/%s (owner %s is gone)", resource.kind, ref[1], ref[2],
                             owner_uid)
                self._delete_ref(ref)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for ref in sorted(self._live_dependents(owner_uid)):
            resource = self.resources[ref[0]]
            obj = self.objects[ref[0]][(ref[1], ref[2])]
            new = copy.deepcopy(obj)
            remaining = [o for o in obj["metadata"].get("ownerReferences") or [] if o.get("uid") != owner_uid]
            if remaining:
                new["metadata"]["ownerReferences"] = remaining
            else:
                new["metadata"].pop("ownerReferences", None)
            self._commit(resource, (ref[1], ref[2]), new, obj)

    def _settle(self) -> None:
        """Finish deletions that were waiting: foreground owners and terminating namespaces."""
        changed = True
        while changed:
            changed = False
            for uid in list(self._foreground):
                ref = self.uids.get(uid)
                if ref is None:
                    self._foreground.discard(uid)
                    continue
                if self._live_dependents(uid):
                    continue
                self._foreground.discard(uid)
                resource = self.resources[ref[0]]
                obj = self.objects[ref[0]][(ref[1], ref[2])]
                remaining = [f for f in obj["metadata"].get("finalizers") or [] if f != "foregroundDeletion"]
                if remaining:
                    new = copy.deepcopy(obj)
                    new["metadata"]["finalizers"] = remaining
                    self._commit(resource, (ref[1], ref[2]), new, obj)
                else:  # the garbage collector's update empties the finalizers: deleted (as in _update)
                    self._remove(resource, (ref[1], ref[2]))
                changed = True
            namespaces = self.resources[("", "namespaces")]
            for (_, ns_name), ns_obj in list(self.objects[namespaces.key].items()):
                if not ns_obj["metadata"].get("deletionTimestamp"):
                    continue
                if any(ns == ns_name for res in self.resources.values() if res.namespaced
                       for (ns, _) in self.objects.get(res.key, {})):
                    continue
                self._remove(namespaces, ("", ns_name))
                changed = True

    # ---- bookkeeping ----------------------------------------------------------------------------------

    def _commit(self, resource: ResourceDef, key: ObjectKey, new: Obj, old: Obj | None) -> None:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[resource.key][key] = new
        self.uids[new["metadata"]["uid"]] = (resource.key, key[0], key[1])
        self._index_owners(old, new, (resource.key, key[0], key[1]))
        self._record(resource, WatchEvent(self.rv, "ADDED" if old is None else "MODIFIED", new, old))

    def _index_owners(self, old: Obj | None, new: Obj | None, ref: ObjectRef) -> None:
        def owner_uids(obj: Obj | None) -> set[str]:
            return {str(o["uid"]) for o in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
                    if isinstance(o, dict) and o.get("uid")}
        old_uids, new_uids = owner_uids(old), owner_uids(new)
        for uid in old_uids - new_uids:
            self.dependents.get(uid, set()).discard(ref)
        for uid in new_uids:
            self.dependents.setdefault(uid, set()).add(ref)

    def _record(self, resource: ResourceDef, event: WatchEvent) -> None:
        self.logs[resource.key].append(event)
        for listener in self.listeners:
            try:
                listener(resource, event)
            except Exception:
                logger.exception("A store listener failed on %s %s", event.type, resource.kind)

    def subscribe(self, resource: ResourceDef, since: int | None) -> tuple[asyncio.Queue[WatchEvent | None],
                                                                            list[WatchEvent]]:
        """Register a watcher; returns its queue and the backlog after ``since`` (410 if too old)."""
        log = self.logs[resource.key]
        backlog: list[WatchEvent] = []
        if since is not None:
            if since < log.compacted_rv:
                raise errors.gone(f"too old resource version: {since} ({log.compacted_rv + 1})")
            backlog = [event for event in log.events if event.rv > since]
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        log.watchers.add(queue)
        return queue, backlog

    def unsubscribe(self, resource: ResourceDef, queue: asyncio.Queue[WatchEvent | None]) -> None:
        log = self.logs.get(resource.key)
        if log is not None:
            log.watchers.discard(queue)

    def compact_history(self) -> None:
        """As an etcd compaction at the current revision with every watch stream cut: the history is
        dropped and open streams end without delivering what they had queued, so a watcher resuming
        from an older resourceVersion gets 410 Gone and must relist."""
        for log in self.logs.values():
            log.events.clear()
            log.compacted_rv = self.rv
            for queue in log.watchers:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    def close_watchers(self) -> None:
        for log in self.logs.values():
            for queue in log.watchers:
                queue.put_nowait(None)

    def all_objects(self) -> Iterable[tuple[ResourceDef, Obj]]:
        for key, objects in self.objects.items():
            for obj in objects.values():
                yield self.resources[key], obj
