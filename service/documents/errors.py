"""MongoDB outages as the 503 envelope, wherever a route or dependency meets one."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pymongo.errors import PyMongoError

from service.core.error_handlers import error_response
from service.core.logging import get_logger
from service.documents.client import as_domain_error

log = get_logger(__name__)


async def _handle_mongo_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PyMongoError)
    unavailable = as_domain_error(exc)
    if unavailable is None:
        raise exc  # not an outage: the unexpected-error path answers (500) and logs it
    log.warning("mongo_unavailable", path=request.url.path, error=type(exc).__name__)
    return error_response(
        request, unavailable.status_code, unavailable.message, headers=unavailable.headers
    )


def install_document_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PyMongoError, _handle_mongo_error)
