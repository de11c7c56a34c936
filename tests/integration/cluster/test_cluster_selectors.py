"""Label and field selectors: the parser, and list filtering through the API."""

from __future__ import annotations

import pytest

from devcluster import ApiError, ClusterClient
from devcluster.errors import ApiStatusError
from devcluster.label_selectors import Selector, parse_label_selector

CMS = "/api/v1/namespaces/default/configmaps"


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "b"}, True),
    ("a=b", {"a": "c"}, False),
    ("a!=b", {"a": "c"}, True),
    ("a!=b", {}, True),
    ("a!=b", {"a": "b"}, False),
    ("a in (x, y)", {"a": "y"}, True),
    ("a in (x,y)", {"a": "z"}, False),
    ("a notin (x)", {"a": "y"}, True),
    ("a notin (x)", {}, True),
    ("a notin (x)", {"a": "x"}, False),
    ("a", {"a": ""}, True),
    ("a", {}, False),
    ("!a", {}, True),
    ("!a", {"a": "1"}, False),
    ("app=web,tier in (front,back),!canary", {"app": "web", "tier": "front"}, True),
    ("app=web,tier in (front,back),!canary", {"app": "web", "tier": "front", "canary": "1"}, False),
    ("app.kubernetes.io/name=memcached", {"app.kubernetes.io/name": "memcached"}, True),
    ("", {"anything": "goes"}, True),
])
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    obj = {"metadata": {"labels": labels}}
    assert Selector.parse(selector, None, "configmaps").matches(obj) is expected


def test_malformed_label_selector_is_400() -> None:
    with pytest.raises(ApiStatusError) as info:
        parse_label_selector("a in x")
    assert info.value.status == 400


def test_list_filters_by_labels_and_fields(kube: ClusterClient) -> None:
    kube.create(CMS, {"metadata": {"name": "web-1", "labels": {"app": "web", "tier": "front"}}})
    kube.create(CMS, {"metadata": {"name": "web-2", "labels": {"app": "web", "tier": "back"}}})
    kube.create(CMS, {"metadata": {"name": "db", "labels": {"app": "db"}}})

    def names(**kwargs: str) -> list[str]:
        return [o["metadata"]["name"] for o in kube.list(CMS, **kwargs)]

    assert names(label_selector="app=web") == ["web-1", "web-2"]
    assert names(label_selector="app=web,tier!=front") == ["web-2"]
    assert names(label_selector="app in (db)") == ["db"]
    assert names(label_selector="!tier") == ["db"]
    assert names(field_selector="metadata.name=db") == ["db"]
    assert names(field_selector="metadata.name!=db", label_selector="tier") == ["web-1", "web-2"]
    everywhere = kube.list("/api/v1/configmaps", field_selector="metadata.namespace=default")
    assert len(everywhere) == 3
    with pytest.raises(ApiError) as info:
        kube.list(CMS, field_selector="spec.whatever=1")
    assert info.value.status == 400
    with pytest.raises(ApiError) as info:
        kube.list(CMS, label_selector="a in b")
    assert info.value.status == 400
