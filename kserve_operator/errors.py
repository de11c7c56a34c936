"""Domain exceptions. Controllers translate them into kopf.TemporaryError / kopf.PermanentError."""

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
    """A Kubernetes API call failed; `status` is the HTTP status (0 when no answer came back)."""

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        """Conflicts, throttling, server errors and lost connections are worth retrying."""
        return self.status in (0, 409, 429) or self.status >= 500
