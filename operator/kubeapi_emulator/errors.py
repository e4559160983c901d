"""API errors rendered as Kubernetes ``Status`` objects, the way clients expect them.

Clients (kopf, the official client, kubectl) read ``reason`` and ``code`` from the body,
not only the HTTP status, so every error carries a complete ``Status``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` with the given code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers: dict[str, str] = {}  # sent with the Status (e.g. an admission webhook's Warning)

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def qualified_resource(group: str, plural: str) -> str:
    """``pods`` for the core group, ``gpuworkloads.gpuadmit.io`` otherwise (as the real server words it)."""
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{qualified_resource(group, plural)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{qualified_resource(group, plural)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {qualified_resource(group, plural)} "{name}": '
        "the object has been modified; please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": plural},
    )


def forbidden(group: str, plural: str, name: str, cause: str) -> ApiError:
    """``apierrors.NewForbidden``: 403, ``pods "p" is forbidden: CAUSE`` (no name: ``pods is forbidden``)."""
    subject = f'{qualified_resource(group, plural)} "{name}"' if name else qualified_resource(group, plural)
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {cause}", {"name": name, "group": group, "kind": plural})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def invalid(group: str, kind: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """422 Invalid naming every offending field, e.g. ``spec.gpus: Invalid value: 0: ...``."""
    texts = [f"{cause['field']}: {cause['message']}" for cause in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    return ApiError(
        422, "Invalid", f'{qualified_kind} "{name}" is invalid: {summary}',
        {"name": name, "group": group, "kind": kind, "causes": causes},
    )
