"""Domain exceptions. Only the reconcile core turns them into kopf.TemporaryError / kopf.PermanentError."""

from __future__ import annotations


class OperatorError(Exception):
    """Base of the operator's own errors."""


class InvalidSpec(OperatorError):
    """A spec the schema let through but that cannot be acted on: permanent until the user edits it."""


class MetricsUnavailable(OperatorError):
    """Prometheus could not answer with a usable number: hold the current state, do not flap."""


class NoSamples(MetricsUnavailable):
    """The query matched no series: expected while a cache runs no pods, a problem otherwise."""


class ApiError(OperatorError):
    """A Kubernetes API call failed; `status` is the HTTP status (0 when no answer came back).

    `retry_after` carries the server's Retry-After (seconds) on 429 and some 5xx answers.
    """

    def __init__(
        self, status: int, reason: str, message: str, *, method: str = "", path: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def temporary(self) -> bool:
        """Conflicts, throttling, server errors and lost connections are worth retrying."""
        return self.status in (0, 409, 429) or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409
