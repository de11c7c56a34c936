"""The RFCs' own examples: RFC 6902 appendix A (JSON patch) and RFC 7386 appendix A (merge patch).

Both run through ``devcluster.patches`` (what the emulated server applies), and a few through
the HTTP API, so a change of the patch library is caught here.
"""

from __future__ import annotations

from typing import Any

import pytest

from devcluster import ApiError, ClusterClient
from devcluster.patches import PatchError, json_patch, merge_patch

# (section, document, patch, result); result None: the patch must fail.
RFC6902_APPENDIX_A: list[tuple[str, Any, list[dict[str, Any]], Any]] = [
    ("A.1", {"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ("A.2", {"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}],
     {"foo": ["bar", "qux", "baz"]}),
    ("A.3", {"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ("A.4", {"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ("A.5", {"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}],
     {"baz": "boo", "foo": "bar"}),
    ("A.6", {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ("A.7", {"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ("A.8", {"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ("A.9", {"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], None),
    ("A.10", {"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ("A.11", {"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}],
     {"foo": "bar", "baz": "qux"}),
    ("A.12", {"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], None),
    # A.13's duplicate "op" member cannot survive JSON decoding (the last one wins, as in the server's
    # decoder): what remains, a remove of a missing member, must fail.
    ("A.13", {"foo": "bar"}, [{"op": "remove", "path": "/baz", "value": "qux"}], None),
    ("A.14", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ("A.15", {"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}], None),
    ("A.16", {"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
     {"foo": ["bar", ["abc", "def"]]}),
]

RFC7386_APPENDIX_A: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.mark.parametrize(("section", "document", "patch", "result"), RFC6902_APPENDIX_A,
                         ids=[case[0] for case in RFC6902_APPENDIX_A])
def test_rfc6902_appendix_a(section: str, document: Any, patch: list[dict[str, Any]], result: Any) -> None:
    if result is None:
        with pytest.raises(PatchError):
            json_patch(document, patch)
    else:
        assert json_patch(document, patch) == result


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_APPENDIX_A)
def test_rfc7386_appendix_a(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_a_test_of_a_missing_path_against_null_passes_as_on_kube_apiserver() -> None:
    assert json_patch({"a": 1}, [{"op": "test", "path": "/b", "value": None}]) == {"a": 1}
    with pytest.raises(PatchError):
        json_patch({"a": 1}, [{"op": "test", "path": "/b", "value": 0}])


def test_a_failing_patch_changes_nothing_through_the_api(kube: ClusterClient) -> None:
    created = kube.create(CONFIGMAPS, {"metadata": {"name": "c"}, "data": {"a": "1"}})
    with pytest.raises(ApiError) as info:
        kube.patch(f"{CONFIGMAPS}/c", [{"op": "add", "path": "/data/b", "value": "2"},
                                       {"op": "test", "path": "/data/a", "value": "2"}],
                   content_type="application/json-patch+json")
    assert info.value.status == 422
    current = kube.get(f"{CONFIGMAPS}/c")
    assert current["data"] == {"a": "1"}
    assert current["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


@pytest.mark.parametrize("body", [{"op": "add"}, [{"op": "frobnicate", "path": "/data"}], [{"path": "/data"}],
                                  [{"op": "add", "path": "data", "value": {}}], ["not an operation"]])
def test_malformed_json_patches_are_refused(kube: ClusterClient, body: Any) -> None:
    kube.create(CONFIGMAPS, {"metadata": {"name": "c"}})
    with pytest.raises(ApiError) as info:
        kube.patch(f"{CONFIGMAPS}/c", body, content_type="application/json-patch+json")
    assert info.value.status in (400, 422)
