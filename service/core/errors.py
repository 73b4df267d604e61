"""The one error envelope and the domain errors (`error_handlers.py` renders them).

No web framework here: services raise these, and the CLI imports them, without loading it.
"""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import BaseModel, Field

from service.core.clock import utc_timestamp

# Fixed names: HTTPStatus phrases change between Python versions (413 became "Content Too
# Large" in 3.13), and clients match on these.
_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "PreconditionFailed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


# What a 422 says; the field errors are in data.errors.
VALIDATION_MESSAGE = "The request is not valid"


class ErrorEnvelope(BaseModel):
    """Every error response, whatever raised it."""

    success: bool = Field(default=False, examples=[False])
    statusCode: int = Field(examples=[404])
    name: str = Field(examples=["NotFound"])
    message: str = Field(examples=["Not Found"])
    correlationId: str | None = Field(examples=["4bf92f3577b34da6a3ce929d0e0e4736"])
    timestamp: str = Field(examples=["2026-01-01T00:00:00.123456Z"])
    path: str = Field(examples=["/api/v1/articles/unknown"])
    data: dict[str, Any] | None = None


class DomainError(Exception):
    """A business-rule failure with an HTTP meaning; raised by services, rendered here."""

    status_code: int = HTTPStatus.BAD_REQUEST
    message: str = "The request cannot be processed"

    def __init__(
        self,
        message: str | None = None,
        *,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.data = data
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(DomainError):
    status_code = HTTPStatus.BAD_REQUEST


class Unauthorized(DomainError):
    status_code = HTTPStatus.UNAUTHORIZED
    message = "Authentication required"


class Forbidden(DomainError):
    status_code = HTTPStatus.FORBIDDEN
    message = "Not allowed"


class NotFound(DomainError):
    status_code = HTTPStatus.NOT_FOUND
    message = "Not found"


class Conflict(DomainError):
    status_code = HTTPStatus.CONFLICT
    message = "Conflict"


class PreconditionFailed(DomainError):
    status_code = HTTPStatus.PRECONDITION_FAILED
    message = "The resource has changed"


class UnsupportedMediaType(DomainError):
    status_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    message = "Unsupported media type"


class RateLimited(DomainError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS
    message = "Too many requests"

    def __init__(self, retry_after_seconds: int, *, headers: dict[str, str] | None = None) -> None:
        self.retry_after_seconds = max(1, retry_after_seconds)
        merged = {"Retry-After": str(self.retry_after_seconds), **(headers or {})}
        super().__init__(data={"retryAfterSeconds": self.retry_after_seconds}, headers=merged)


def status_name(status_code: int) -> str:
    """`404` -> `NotFound`; 422 is `ValidationError`; others from the status phrase."""
    if status_code in _STATUS_NAMES:
        return _STATUS_NAMES[status_code]
    try:
        phrase = HTTPStatus(status_code).phrase
    except ValueError:
        return "Error"
    return "".join(word.capitalize() for word in phrase.replace("-", " ").split())


def envelope_bytes(
    status_code: int,
    message: str,
    *,
    path: str,
    request_id: str | None,
    name: str | None = None,
    data: dict[str, Any] | None = None,
) -> bytes:
    """Serialise the envelope; used by handlers and by middleware that answers early."""
    envelope = ErrorEnvelope(
        statusCode=status_code,
        name=name or status_name(status_code),
        message=message,
        correlationId=request_id,
        timestamp=utc_timestamp(),
        path=path,
        data=data,
    )
    return orjson.dumps(envelope.model_dump())


_DESCRIPTIONS = {
    304: "Not modified (If-None-Match)",
    400: "Bad request: a cursor or tenant header not valid here, an unreadable body",
    401: "Not authenticated (no, or no longer a valid, token)",
    403: "Not allowed (role, or a suspended tenant)",
    404: "Not found",
    409: "Conflict with what exists",
    412: "Precondition failed (If-Match is stale)",
    413: "Request body too large",
    415: "Unsupported media type (send JSON)",
    422: "Validation error (field errors in data.errors)",
    429: "Too many requests (Retry-After)",
    500: "Internal server error",
    503: "A backing service is unavailable (Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error codes a route really answers, each in the envelope:
    declared per route (from the groups its dependencies bring), so a contract test notices
    a code nobody declared."""
    return {
        code: {"model": ErrorEnvelope, "description": _DESCRIPTIONS.get(code, status_name(code))}
        for code in sorted(set(codes))
    }


# What any route may answer (a crash), declared on every route by the composition root.
ERROR_RESPONSES = error_responses(HTTPStatus.INTERNAL_SERVER_ERROR)
# What inputs bring: parameters (422, which path and query NUL checks answer too), a JSON or
# form body (an unreadable Content-Length is a 400, too large a 413, not JSON a 415).
INPUT_ERRORS = (HTTPStatus.UNPROCESSABLE_ENTITY,)
JSON_BODY_ERRORS = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    HTTPStatus.UNPROCESSABLE_ENTITY,
)
FORM_BODY_ERRORS = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNPROCESSABLE_ENTITY,
)
RATE_LIMITED_ERRORS = (HTTPStatus.TOO_MANY_REQUESTS,)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every error it was raised from or while handling, nearest first."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
