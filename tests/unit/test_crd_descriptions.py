"""Conventions every shipped CRD keeps: `kubectl explain` has a description for every field,
`conditions` lists are maps keyed by `type` (server-side apply merges them per condition), and
a Ready column shows the Ready condition (`kubectl wait --for=condition=Ready`, GitOps health)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATHS = sorted((ROOT / "manifests" / "crds").glob("*.yaml"))
READY_COLUMN = '.status.conditions[?(@.type=="Ready")].status'


def _versions() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in CRD_PATHS:
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            out.append((f"{crd['spec']['names']['kind']}/{version['name']}", version))
    return out


VERSIONS = _versions()
IDS = [where for where, _ in VERSIONS]


def walk(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every named property below `schema` (array items and map values included), with its path."""
    for name, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        yield here, prop
        yield from walk(prop, here)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        nested = schema.get(key)
        if isinstance(nested, Mapping):
            yield from walk(nested, path + suffix)


def undescribed(schema: Mapping[str, Any]) -> list[str]:
    # metadata's schema is ObjectMeta's; the API server documents it and allows nothing else there.
    return [path for path, prop in walk(schema, "")
            if path != ".metadata" and not str(prop.get("description") or "").strip()]


def unkeyed_conditions(schema: Mapping[str, Any]) -> list[str]:
    problems = []
    for path, prop in walk(schema, ""):
        if path.rsplit(".", 1)[-1] != "conditions":
            continue
        if prop.get("x-kubernetes-list-type") != "map" or prop.get("x-kubernetes-list-map-keys") != ["type"]:
            problems.append(f"{path}: not a list-type map keyed by type")
        elif "type" not in (prop.get("items") or {}).get("required", []):
            problems.append(f"{path}: a map key must be required in its items")
    return problems


@pytest.mark.parametrize(("where", "version"), VERSIONS, ids=IDS)
def test_every_field_has_a_description(where: str, version: dict[str, Any]) -> None:
    schema = version["schema"]["openAPIV3Schema"]
    assert schema.get("description"), "the kind itself"
    assert undescribed(schema) == []


@pytest.mark.parametrize(("where", "version"), VERSIONS, ids=IDS)
def test_conditions_are_list_maps_keyed_by_type(where: str, version: dict[str, Any]) -> None:
    schema = version["schema"]["openAPIV3Schema"]
    assert "conditions" in schema["properties"]["status"]["properties"]
    assert unkeyed_conditions(schema) == []


@pytest.mark.parametrize(("where", "version"), VERSIONS, ids=IDS)
def test_a_ready_column_shows_the_ready_condition(where: str, version: dict[str, Any]) -> None:
    ready = [c for c in version["additionalPrinterColumns"] if c["name"] == "Ready"]
    assert [(c["type"], c["jsonPath"]) for c in ready] == [("string", READY_COLUMN)]


def test_the_checks_catch_what_they_look_for() -> None:
    """A missing description deep in an array's items, and a plain conditions list, are found."""
    schema = {"properties": {"status": {"description": "s", "properties": {
        "nodes": {"description": "n", "items": {"properties": {"bytes": {"type": "integer"}}}},
        "conditions": {"description": "c", "type": "array",
                       "items": {"properties": {"type": {"description": "t"}}}}}}}}
    assert undescribed(schema) == [".status.nodes[].bytes"]
    assert unkeyed_conditions(schema) == [".status.conditions: not a list-type map keyed by type"]
    keyed = {"properties": {"conditions": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                                           "items": {"properties": {}}}}}
    assert unkeyed_conditions(keyed) == [".conditions: a map key must be required in its items"]
