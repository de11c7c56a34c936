"""`kubectl get`-style tables for `make demo`, from the API server itself: the columns are the
CRD's `additionalPrinterColumns` (what kubectl shows), the rows the objects as listed."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

from devcluster import ClusterClient

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def human_age(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration) for the ages a demo reaches."""
    whole = int(seconds)
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 10:
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if hours < 8 and minutes else f"{hours}h"


_STEP = re.compile(r"[^.\[]+(?:\[[^\]]*\])?")  # `.a.b[?(@.x=="y")].c` -> a, b[?(@.x=="y")], c
_FILTER = re.compile(r'^(?P<key>[^\[]+)\[\?\(@\.(?P<field>\w+)==["\'](?P<value>[^"\']*)["\']\)\]$')


def _lookup(obj: Mapping[str, Any], json_path: str) -> Any:
    """A printer column's JSONPath as the CRDs here use it: `.a.b.c`, and a list filtered by one
    field (`.status.conditions[?(@.type=="Ready")].status`, the first match, as kubectl shows it)."""
    value: Any = obj
    for key in _STEP.findall(json_path):
        found = _FILTER.match(key)
        if found is not None:
            items = value.get(found["key"]) if isinstance(value, Mapping) else None
            value = next((item for item in items or () if isinstance(item, Mapping)
                          and str(item.get(found["field"])) == found["value"]), None)
            continue
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _cell(value: Any, column_type: str, now: datetime.datetime) -> str:
    if value is None:
        return ""  # kubectl leaves a CRD column empty when its path is absent
    if column_type == "date":
        created = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return human_age((now - created).total_seconds())
    return str(value)


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, three spaces apart, as kubectl prints them."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    return ["   ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in (headers, *rows)]


def get_table(kube: ClusterClient, crd: str, list_path: str) -> list[str]:
    """`kubectl get <kind>` for a custom resource: `crd` is the CRD's name (plural.group)."""
    definition = kube.get(f"{CRDS}/{crd}")
    version = list_path.split("/")[3]
    served = next(v for v in definition["spec"]["versions"] if v["name"] == version)
    columns = [c for c in served.get("additionalPrinterColumns") or [] if not c.get("priority")]
    now = datetime.datetime.now(datetime.UTC)
    rows = [[obj["metadata"]["name"], *(_cell(_lookup(obj, c["jsonPath"]), c["type"], now) for c in columns)]
            for obj in sorted(kube.list(list_path), key=lambda o: str(o["metadata"]["name"]))]
    return render(["NAME", *(c["name"].upper() for c in columns)], rows)
