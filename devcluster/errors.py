"""The Kubernetes `Status` failures the emulated API server answers with.

Each constructor mirrors the reason, code and message wording of kube-apiserver, so that
clients (kopf, the operator, kubectl-like helpers) classify them as they would on a real
cluster. They subclass kmock's ``KubernetesError`` so kmock's error rendering can be reused.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from kmock import KubernetesError


@attrs.frozen
class ApiStatusError(KubernetesError):
    """A failure with a complete Kubernetes ``Status`` body (reason, message, details)."""

    headers: dict[str, str] = attrs.field(factory=dict)

    def status_body(self) -> dict[str, Any]:
        """The ``Status`` object as kube-apiserver renders it (an empty reason or details left out)."""
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message or ""}
        if self.reason:
            body["reason"] = self.reason
        if self.details:
            body["details"] = self.details
        body["code"] = self.status
        return body


@attrs.frozen
class StrictDecodingError(ApiStatusError):
    """The 400 of ``fieldValidation=Strict`` for a decoded body; ``unknown``: the unknown fields' paths."""

    unknown: tuple[str, ...] = ()


def strict_decoding_message(unknown: tuple[str, ...] | list[str]) -> str:
    return "strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in unknown)


def strict_decoding(unknown: list[str], *, kind: str, version: str) -> StrictDecodingError:
    """The 400 of ``fieldValidation=Strict`` on a POST or PUT, as the real server words it: the
    decoding error prefixed with ``KIND in version "V" cannot be handled as a KIND:`` (the body's
    kind and version)."""
    return StrictDecodingError(
        status=400, reason="BadRequest", details={}, unknown=tuple(unknown),
        message=f'{kind} in version "{version}" cannot be handled as a {kind}: {strict_decoding_message(unknown)}')


def strict_patch(patched: Any, unknown: tuple[str, ...]) -> ApiStatusError:
    """The 422 of ``fieldValidation=Strict`` on a PATCH: the real server reports the patched object
    (here its JSON) as an invalid ``patch`` field, with no kind or name."""
    message = f"Invalid value: {json.dumps(json.dumps(patched, separators=(',', ':')))}: " \
              f"{strict_decoding_message(unknown)}"
    return ApiStatusError(status=422, reason="Invalid", message=f' "" is invalid: patch: {message}',
                          details={"causes": [{"reason": "FieldValueInvalid", "message": message,
                                               "field": "patch"}]})


def missing_kind(kind: str, body: str) -> ApiStatusError:
    """The 400 for a custom resource's body without ``kind`` (it is not taken from the URL, as it is
    for built-in kinds); ``body``: the request's body as sent."""
    raw = body.encode()
    summary = raw[:30].decode(errors="replace") + " ..." if len(raw) > 30 else body
    return bad_request(f"the object provided is unrecognized (must be of type {kind}): "
                       f"Object 'Kind' is missing in '{body}' ({summary})")


def _details(name: str | None, group: str, kind: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": kind}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details.update(extra)
    return details


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> ApiStatusError:
    return ApiStatusError(
        status=404,
        reason="NotFound",
        message=f'{_qualified(plural, group)} "{name}" not found',
        details=_details(name, group, plural),
    )


def resource_not_found() -> ApiStatusError:
    return ApiStatusError(
        status=404,
        reason="NotFound",
        message="the server could not find the requested resource",
        details={},
    )


def already_exists(plural: str, group: str, name: str) -> ApiStatusError:
    return ApiStatusError(
        status=409,
        reason="AlreadyExists",
        message=f'{_qualified(plural, group)} "{name}" already exists',
        details=_details(name, group, plural),
    )


def conflict(plural: str, group: str, name: str) -> ApiStatusError:
    return ApiStatusError(
        status=409,
        reason="Conflict",
        message=(
            f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": '
            "the object has been modified; please apply your changes to the latest version and try again"
        ),
        details=_details(name, group, plural),
    )


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiStatusError:
    """422 Invalid; ``causes`` are ``{reason, message, field}`` like the real server's."""
    texts = [f"{cause['field']}: {cause['message']}" if cause.get("field") else cause["message"]
             for cause in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    return ApiStatusError(
        status=422,
        reason="Invalid",
        message=f'{qualified_kind} "{name}" is invalid: {summary}',
        details=_details(name, group, kind, causes=causes),
    )


def bad_request(message: str) -> ApiStatusError:
    return ApiStatusError(status=400, reason="BadRequest", message=message, details={})


def method_not_allowed(
        message: str = "the server does not allow this method on the requested resource") -> ApiStatusError:
    return ApiStatusError(status=405, reason="MethodNotAllowed", message=message, details={})


def unsupported_media_type(content_type: str) -> ApiStatusError:
    return ApiStatusError(
        status=415,
        reason="UnsupportedMediaType",
        message=f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {content_type!r})",
        details={},
    )


def gone(message: str) -> ApiStatusError:
    return ApiStatusError(status=410, reason="Expired", message=message, details={})


def forbidden_new_finalizers(kind: str, group: str, name: str) -> ApiStatusError:
    return invalid(kind, group, name, [{
        "reason": "FieldValueForbidden",
        "message": "Forbidden: no new finalizers can be added if the object is being deleted",
        "field": "metadata.finalizers",
    }])
