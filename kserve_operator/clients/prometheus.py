"""Prometheus instant queries -> one float, or MetricsUnavailable saying why."""

from __future__ import annotations

import math
from typing import Any

import aiohttp

from kserve_operator.errors import MetricsUnavailable, NoSamples


class PrometheusClient:
    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query_scalar(self, promql: str) -> float:
        """Sum the samples of an instant query; no samples, NaN, errors and timeouts all raise."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self._base_url}/api/v1/query", params={"query": promql}) as response:
                if response.status != 200:
                    raise MetricsUnavailable(f"Prometheus answered HTTP {response.status}")
                try:
                    payload = await response.json(content_type=None)
                except ValueError as exc:
                    raise MetricsUnavailable("Prometheus answered something that is not JSON") from exc
        except TimeoutError as exc:
            raise MetricsUnavailable("Prometheus did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise MetricsUnavailable(f"Prometheus is unreachable: {type(exc).__name__}") from exc
        return parse_query_result(payload)


def parse_query_result(payload: Any) -> float:
    """Pure: the number in an /api/v1/query answer (vector or scalar), or MetricsUnavailable."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else None
        raise MetricsUnavailable(f"query failed: {error or 'unexpected answer'}")
    data = payload.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" or kind == "string":
        samples = [result]
    elif kind == "vector" and isinstance(result, list):
        samples = [item.get("value") for item in result if isinstance(item, dict)]
    else:
        raise MetricsUnavailable(f"query returned a {kind!r}, not a number")
    if not samples:
        raise NoSamples("query returned no samples")
    total = 0.0
    for sample in samples:
        try:
            value = float(sample[1])  # type: ignore[index]
        except (TypeError, ValueError, IndexError) as exc:
            raise MetricsUnavailable(f"query returned a value that is not a number: {sample!r}") from exc
        if math.isnan(value) or math.isinf(value):
            raise MetricsUnavailable(f"query returned {value}")
        if value < 0:
            raise MetricsUnavailable(f"query returned a negative count: {value:g}")
        total += value
    if math.isinf(total):
        raise MetricsUnavailable("query returned samples whose sum overflows")
    return total
