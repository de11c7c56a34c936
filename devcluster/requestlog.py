"""The record of every HTTP request the emulated API server answered.

Tests use it to assert API traffic, above all "a settled reconcile makes 0 write calls".
Records are appended on the server's thread and read from the test's thread, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class RequestRecord:
    """One request: what was asked, by whom, and the response status (None while in flight)."""

    timestamp: float  # time.time() when it arrived
    method: str
    path: str
    query: str
    content_type: str
    user_agent: str
    resource: str | None = None  # the plural, for Kubernetes resource requests
    subresource: str | None = None
    name: str | None = None  # the object's: from the path, or a create's body (its generateName + "*")
    watch: bool = False
    status: int | None = None

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


class RequestLog:
    """A thread-safe, bounded list of ``RequestRecord``s."""

    def __init__(self, limit: int = 200_000) -> None:
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._limit = limit

    def add(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(record)
            if len(self._records) > self._limit:
                del self._records[: len(self._records) - self._limit]
        return record

    def set_status(self, record: RequestRecord, status: int) -> None:
        with self._lock:
            record.status = status

    def snapshot(self) -> list[RequestRecord]:
        """Copies of all records so far (safe to keep while the server goes on)."""
        with self._lock:
            return [replace(record) for record in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def writes(self, *, user_agent: str | None = None, since: float | None = None,
               exclude_resources: Iterable[str] = ("events",),
               resources: Iterable[str] | None = None) -> list[RequestRecord]:
        """Write calls (POST/PUT/PATCH/DELETE), optionally by user-agent prefix, time and resource."""
        excluded = set(exclude_resources)
        included = set(resources) if resources is not None else None
        return [
            record for record in self.snapshot()
            if record.is_write
            and (user_agent is None or record.user_agent.startswith(user_agent))
            and (since is None or record.timestamp >= since)
            and record.resource not in excluded
            and (included is None or record.resource in included)
        ]

    def last_writes(self, count: int, *, user_agent: str | None = None,
                    exclude_resources: Iterable[str] = ("events",)) -> list[RequestRecord]:
        """The latest ``count`` matching write calls, oldest first (cheap: scans from the end)."""
        excluded = set(exclude_resources)
        found: list[RequestRecord] = []
        with self._lock:
            for record in reversed(self._records):
                if record.is_write and record.resource not in excluded \
                        and (user_agent is None or record.user_agent.startswith(user_agent)):
                    found.append(replace(record))
                    if len(found) >= count:
                        break
        return found[::-1]


def now() -> float:
    return time.time()
