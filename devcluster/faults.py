"""Failures the emulated API server answers on demand, for tests of a client's error handling.

A real kube-apiserver answers 429 with ``Retry-After`` under API Priority and Fairness, 409 or
422 when a write races another, 5xx when etcd is slow; none of them on request. A ``FaultRule``
makes the next ``count`` requests that match a method and an exact path (and, optionally, a
User-Agent prefix) fail as told, before the store sees them: the request is recorded in the
request log with the status it got, and the object is not changed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from devcluster import errors

#: The reason kube-apiserver gives with each status a test is likely to inject.
REASONS = {409: "Conflict", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}


@dataclass
class FaultRule:
    """Answer the next ``count`` matching requests with ``status`` (and ``Retry-After``, if given)."""

    method: str
    path: str
    count: int
    status: int = 429
    retry_after: int | None = None  # whole seconds, as the header carries them
    user_agent: str | None = None  # a prefix; None matches every client
    message: str = "injected by the test"
    answered: int = 0  # how many requests this rule has failed so far
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a fault rule needs count >= 1, not {self.count}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"a fault rule answers an error status (400-599), not {self.status}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"Retry-After cannot be negative: {self.retry_after}")
        if not self.path.startswith("/"):
            raise ValueError(f"a fault rule's path is absolute (starts with /): {self.path!r}")
        self.method = self.method.upper()

    @property
    def exhausted(self) -> bool:
        return self.answered >= self.count

    def take(self, method: str, path: str, user_agent: str) -> bool:
        """True (and one fewer left) when this request matches and the rule has failures left."""
        if method.upper() != self.method or path.rstrip("/") != self.path.rstrip("/"):
            return False
        if self.user_agent is not None and not user_agent.startswith(self.user_agent):
            return False
        with self._lock:
            if self.exhausted:
                return False
            self.answered += 1
            return True

    def error(self) -> errors.ApiStatusError:
        """The ``Status`` failure as kube-apiserver renders it, ``Retry-After`` in header and details."""
        headers: dict[str, str] = {}
        details: dict[str, object] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
            details["retryAfterSeconds"] = self.retry_after
        return errors.ApiStatusError(status=self.status, reason=REASONS.get(self.status, "Unknown"),
                                     message=self.message, details=details, headers=headers)


class FaultInjector:
    """The rules in force; the server asks it about every request (thread-safe)."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def match(self, method: str, path: str, user_agent: str) -> FaultRule | None:
        """The first rule with failures left that takes this request; exhausted rules are dropped."""
        with self._lock:
            self._rules = [rule for rule in self._rules if not rule.exhausted]
            rules = list(self._rules)
        for rule in rules:
            if rule.take(method, path, user_agent):
                return rule
        return None
