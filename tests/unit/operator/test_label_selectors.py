"""Label selectors evaluated in memory (resources/label_selectors.py), as the API server evaluates
them, and `implies`, which decides whether a LIST may be answered from an informer's store."""

from __future__ import annotations

import pytest

from kserve_operator.resources.label_selectors import LabelSelector, SelectorError

LABELS = {"app": "web", "tier": "front", "serving.kserve.io/inferenceservice": "mnist"}


@pytest.mark.parametrize(("raw", "admitted"), [
    ("", True), ("app=web", True), ("app==web", True), ("app!=web", False), ("app!=db", True),
    ("app in (db, web)", True), ("app notin (db,web)", False), ("missing notin (x)", True),
    ("missing!=x", True), ("tier", True), ("!tier", False), ("!missing", True),
    ("app=web,tier=back", False), ("serving.kserve.io/inferenceservice=mnist,component", False),
    ("serving.kserve.io/inferenceservice in (mnist),app", True),
])
def test_matches_like_the_api_server(raw: str, admitted: bool) -> None:
    assert LabelSelector.parse(raw).matches(LABELS) is admitted


@pytest.mark.parametrize("raw", ["app=", "=web", "app in web", "a b", "app in (x"])
def test_a_selector_the_server_refuses_is_an_error_naming_it(raw: str) -> None:
    if raw == "app=":  # an empty value is allowed by the API server
        assert LabelSelector.parse(raw).matches({"app": ""})
        return
    with pytest.raises(SelectorError, match="label selector"):
        LabelSelector.parse(raw)


@pytest.mark.parametrize(("narrow", "wide", "implied"), [
    ("a=1", "", True), ("", "a=1", False), ("a=1,b=2", "a", True), ("a in (1,2)", "a", True),
    ("a in (1)", "a=1", True), ("a in (1,2)", "a=1", False), ("a=1", "a in (1,2)", True),
    ("b=1", "a", False), ("a", "a=1", False), ("a=1", "a!=2", True), ("a=2", "a!=2", False),
    ("!a", "a!=2", True), ("a=1,c in (x,y)", "c,a", True),
])
def test_implies_only_when_every_admitted_object_is_in_the_wider_scope(narrow: str, wide: str,
                                                                        implied: bool) -> None:
    assert LabelSelector.parse(narrow).implies(LabelSelector.parse(wide)) is implied


def test_equal_values_names_what_an_index_can_answer() -> None:
    selector = LabelSelector.parse("a=1,b in (x,y),c")
    assert selector.equal_values("a") == {"1"}
    assert selector.equal_values("b") == {"x", "y"}
    assert selector.equal_values("c") is None
