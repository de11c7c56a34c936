"""The informer's store (clients/informer.py): objects kept as compact JSON text beside their
resourceVersion, indexes that file keys by value. Reads hand out fresh objects; an index is
re-filed when an object changes; counting and waking by index decode nothing."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from kserve_operator.clients.informer import Informer, InformerEvent, StoredObject, label_index, label_index_name
from kserve_operator.resources.kinds import DEPLOYMENT

BY_APP = label_index_name("app")


def deployment(name: str, version: str, app: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"namespace": "ns", "name": name, "resourceVersion": version, "labels": {"app": app}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}


def informer() -> Informer:
    return Informer(None, [DEPLOYMENT], backoff=lambda n: 0.0,  # type: ignore[arg-type]  # never started
                    indexes={BY_APP: label_index("app")})


def test_every_read_is_a_fresh_object_the_caller_may_change() -> None:
    store = informer()
    store.offer(deployment("a", "1", "web"))
    first = store.get("ns", "a")
    assert first is not None
    first["spec"]["replicas"] = 9
    first["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    again = store.get("ns", "a")
    assert again == deployment("a", "1", "web") and again is not first
    assert store.by_index(BY_APP, "web") == [deployment("a", "1", "web")]
    assert store.items() == [deployment("a", "1", "web")]


def test_the_offered_object_is_not_kept_by_reference() -> None:
    obj = deployment("a", "1", "web")
    store = informer()
    store.offer(obj)
    obj["spec"]["replicas"] = 5  # the caller's object changes later: the store does not
    assert store.get("ns", "a") == deployment("a", "1", "web")


def test_an_index_follows_a_change_and_counts_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    store = informer()
    for name, app in (("a", "web"), ("b", "web"), ("c", "db")):
        store.offer(deployment(name, "1", app))
    store.offer(deployment("b", "2", "db"))  # relabelled: filed under its new value only
    store.offer(deployment("a", "1", "db"))  # not newer: ignored
    store.discard("ns", "c")

    def no_decoding(self: StoredObject) -> dict[str, Any]:
        raise AssertionError("decoded")

    monkeypatch.setattr(StoredObject, "decode", no_decoding)
    assert store.keys_by_index(BY_APP, "web") == [("ns", "a")]
    assert store.keys_by_index(BY_APP, "db") == [("ns", "b")]
    assert (store.count_by_index(BY_APP, "web"), store.count_by_index(BY_APP, "db")) == (1, 1)
    assert store.count_by_index(BY_APP, "none") == 0 and len(store) == 2
    assert sorted(store.object_keys()) == [("ns", "a"), ("ns", "b")]


def test_an_event_decodes_the_replaced_copy_only_when_asked() -> None:
    stored = StoredObject.of(deployment("a", "1", "web"))
    event = InformerEvent("MODIFIED", deployment("a", "2", "web", replicas=2), stored)
    assert stored.version == "1"
    assert event.old == deployment("a", "1", "web")
    assert InformerEvent("ADDED", deployment("a", "1", "web")).old is None


def test_the_text_kept_is_a_fraction_of_the_parsed_object() -> None:
    """Why the store keeps text: a parsed Deployment takes several times the memory of its JSON."""
    obj = deployment("a", "1", "web")
    obj["status"] = {"conditions": [{"type": t, "status": "True", "reason": "R" * 20, "message": "m" * 60,
                                     "lastUpdateTime": "2026-12-07T10:00:05Z"} for t in ("Available", "Progressing")]}

    def deep_size(value: Any) -> int:
        if isinstance(value, dict):
            return sys.getsizeof(value) + sum(deep_size(k) + deep_size(v) for k, v in value.items())
        if isinstance(value, list):
            return sys.getsizeof(value) + sum(deep_size(v) for v in value)
        return sys.getsizeof(value)

    kept = StoredObject.of(obj)
    assert json.loads(kept.text) == obj
    assert deep_size(obj) > 3 * sys.getsizeof(kept.text)
