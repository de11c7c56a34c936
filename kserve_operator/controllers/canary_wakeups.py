"""When a ModelCanary must look again at once: the kopf indices and event handlers that wake its daemon.

Two indices map a VirtualService and a ModelPrewarm to the canaries that reference them (the
VirtualService one also answers route claims). The handlers do no API work: they set the
canary's wake-up event (`memo.canary.wake`), and its daemon in controllers.canary reconciles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from kserve_operator.controllers.core import ObjectKey
from kserve_operator.planning import canary as plan


def canaries_by_virtual_service(namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta,
                                **_: Any) -> dict[ObjectKey, plan.Claimant]:
    """(VirtualService namespace, name) -> the canaries that reference it, for wake-ups and claims."""
    assert namespace is not None
    vs = spec.get("virtualService") or {}
    if not isinstance(vs, Mapping) or not vs.get("name"):
        return {}
    key = (str(vs.get("namespace") or namespace), str(vs["name"]))
    return {key: plan.Claimant(namespace, name, str(meta.get("creationTimestamp") or ""), dict(spec),
                               deleting=bool(meta.get("deletionTimestamp")))}


def canaries_by_prewarm(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[ObjectKey, ObjectKey]:
    """(namespace, ModelPrewarm name) -> the requireWarm canaries that wait for it."""
    assert namespace is not None
    if spec.get("requireWarm") is not True:
        return {}
    candidate = spec.get("candidate") or {}
    prewarm = candidate.get("modelPrewarm") or candidate.get("inferenceService") if isinstance(
        candidate, Mapping) else None
    return {(namespace, str(prewarm)): (namespace, name)} if prewarm else {}



# --- wake-ups ---------------------------------------------------------------------------------

async def canary_event(body: kopf.Body, namespace: str | None, name: str | None, type: str | None, memo: Any,
                       **_: Any) -> None:
    """A spec change (generation ahead of what status observed): wake the canary's daemon."""
    if namespace is None or name is None or type is None:
        return
    generation = body.get("metadata", {}).get("generation")
    if generation != (body.get("status") or {}).get("observedGeneration"):
        memo.canary.wake([(namespace, name)])


async def virtual_service_event(namespace: str | None, name: str | None, type: str | None, memo: Any,
                                canaries_by_virtual_service: Any = None, **_: Any) -> None:
    """A referenced VirtualService changed (a hand edit, created, deleted): its canaries look now."""
    if namespace is None or name is None or type is None:
        return
    claimants = (canaries_by_virtual_service or {}).get((namespace, name), [])
    memo.canary.wake([(c.namespace, c.name) for c in claimants])


async def prewarm_event(namespace: str | None, name: str | None, type: str | None, memo: Any,
                        canaries_by_prewarm: Any = None, **_: Any) -> None:
    """The ModelPrewarm a canary waits for changed (e.g. turned Warm): release without waiting."""
    if namespace is None or name is None or type is None:
        return
    memo.canary.wake((canaries_by_prewarm or {}).get((namespace, name), []))
