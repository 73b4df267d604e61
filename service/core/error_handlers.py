"""How FastAPI renders every error: HTTP exceptions, validation errors, domain errors and
crashes all leave as the one envelope of `errors.py`."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import VALIDATION_MESSAGE, DomainError, envelope_bytes, status_name
from service.core.http import JSON_MEDIA_TYPE, kept_response_headers, request_id_of
from service.core.logging import get_logger

log = get_logger(__name__)


def error_response(
    request: Request,
    status_code: int,
    message: str,
    *,
    data: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = envelope_bytes(
        status_code, message, path=request.url.path, request_id=request_id_of(request.scope),
        data=data,
    )  # fmt: skip
    merged = {**kept_response_headers(request.scope), **(headers or {})}
    return Response(body, status_code, headers=merged, media_type=JSON_MEDIA_TYPE)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo what was submitted: keep where, what and why, drop `input` and `ctx`.
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else status_name(exc.status_code)
    data = exc.detail if isinstance(exc.detail, dict) else None
    return error_response(request, exc.status_code, message, data=data, headers=exc.headers)


async def _handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(
        request,
        HTTPStatus.UNPROCESSABLE_ENTITY,
        VALIDATION_MESSAGE,
        data={"errors": _validation_errors(exc)},
    )


async def _handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(request, exc.status_code, exc.message, data=exc.data, headers=exc.headers)


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    # Last resort for errors raised outside the router (the middleware catches the rest).
    log.error("unhandled_error", path=request.url.path, exc_info=exc)
    return error_response(request, HTTPStatus.INTERNAL_SERVER_ERROR, "Internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(Exception, _handle_unexpected)
