"""A VirtualService's or a ModelPrewarm's informer event wakes exactly the canaries that reference it,
found through the ModelCanary informer's indices (controllers/canary_wakeups.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kserve_operator.clients.informer import Informer, InformerEvent
from kserve_operator.controllers.canary_wakeups import (
    BY_PREWARM,
    BY_VIRTUAL_SERVICE,
    informer_indexes,
    referenced_object_changed,
)
from kserve_operator.planning.backoff import backoff_delay
from kserve_operator.resources.kinds import MODEL_CANARY


class NoServer:
    async def list_with_version(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the test fills the store itself")

    def watch(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the test fills the store itself")


class Woken:
    def __init__(self) -> None:
        self.keys: set[tuple[str, str]] = set()

    def wake(self, keys: Any) -> None:
        self.keys |= set(keys)


def canary(name: str, spec: dict[str, Any], namespace: str = "ml") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": spec}


def test_events_wake_the_canaries_that_reference_the_object() -> None:
    canaries = Informer(NoServer(), [MODEL_CANARY], backoff=backoff_delay, indexes=informer_indexes())
    canaries.offer(canary("a", {"virtualService": {"name": "route"}, "requireWarm": True,
                                "candidate": {"modelPrewarm": "warm-b"}}))
    canaries.offer(canary("b", {"virtualService": {"name": "route", "namespace": "mesh"}}))
    canaries.offer(canary("c", {"virtualService": {"name": "other"}, "requireWarm": False,
                                "candidate": {"modelPrewarm": "warm-b"}}))
    memo = kopf.Memo(canary=Woken())

    def event(type: str | None, namespace: str, name: str, index: str) -> set[tuple[str, str]]:
        memo.canary.keys.clear()
        obj = {"metadata": {"name": name, "namespace": namespace}}
        asyncio.run(referenced_object_changed(memo, [canaries], index, InformerEvent(type, obj)))
        return set(memo.canary.keys)

    assert event("MODIFIED", "ml", "route", BY_VIRTUAL_SERVICE) == {("ml", "a")}
    assert event("DELETED", "mesh", "route", BY_VIRTUAL_SERVICE) == {("ml", "b")}
    assert event("MODIFIED", "ml", "warm-b", BY_PREWARM) == {("ml", "a")}  # c does not require warm
    assert event(None, "ml", "route", BY_VIRTUAL_SERVICE) == set()  # the start-up listing wakes nobody
    assert event("ADDED", "ml", "unrelated", BY_VIRTUAL_SERVICE) == set()

    # The spec moves to another VirtualService: the index follows.
    moved = canary("a", {"virtualService": {"name": "other"}})
    moved["metadata"]["resourceVersion"] = "2"
    canaries.offer(moved)
    assert event("MODIFIED", "ml", "route", BY_VIRTUAL_SERVICE) == set()
    assert event("MODIFIED", "ml", "other", BY_VIRTUAL_SERVICE) == {("ml", "a"), ("ml", "c")}
