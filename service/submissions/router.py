"""HTTP for submissions: thin; the rules live in service.py, the queries in repository.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.core.errors import (
    INPUT_ERRORS,
    JSON_BODY_ERRORS,
    RATE_LIMITED_ERRORS,
    UnsupportedMediaType,
    error_responses,
)
from service.core.http import JSON_MEDIA_TYPE, is_json_media_type
from service.core.logging import SUBMISSION_ID
from service.core.pagination import DEFAULT_PAGE_SIZE, CursorParam, PageSize
from service.core.routing import LeanRoute
from service.identity.dependencies import AUTHENTICATED_ERRORS, CurrentPrincipal, WriteRateLimit
from service.submissions.metrics import ContentKind
from service.submissions.models import SUBMISSION_MODELS
from service.submissions.parsing import parse_json_declaration, parse_xml_declaration
from service.submissions.repository import SubmissionRepository
from service.submissions.schemas import (
    IDEMPOTENCY_KEY_MAX,
    DeclarationIn,
    SubmissionFilters,
    SubmissionOut,
    SubmissionPage,
    SubmissionStats,
)
from service.submissions.service import SubmissionScope, SubmissionService
from service.submissions.wiring import SUBMISSIONS
from service.tenants.dependencies import TENANT_ERRORS, CurrentTenant
from service.tenants.wiring import TENANCY

router = APIRouter(prefix="/submissions", tags=["submissions"], route_class=LeanRoute)
XML_MEDIA_TYPES = frozenset({"application/xml", "text/xml"})
READ_ERRORS = (*AUTHENTICATED_ERRORS, *TENANT_ERRORS, *INPUT_ERRORS)
WRITE_ERRORS = (*READ_ERRORS, *JSON_BODY_ERRORS, *RATE_LIMITED_ERRORS)
IdParam = Annotated[uuid.UUID, Path(description="The submission's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry safely: the same key and body within 24 h return the first "
        "submission; the same key with another body is a 409",
    ),
]
# The body is read and parsed by the route (JSON or XML), so OpenAPI is told what it takes.
_DECLARATION_SCHEMA = {"$ref": "#/components/schemas/DeclarationIn"}
DECLARATION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON_MEDIA_TYPE: {"schema": _DECLARATION_SCHEMA},
            "application/xml": {"schema": {"type": "string",
                                           "description": "<declaration> with the same fields"}},
        },
    }
}  # fmt: skip


async def submission_scope(
    request: Request, tenant: CurrentTenant
) -> AsyncIterator[SubmissionScope]:
    """The tenant's own document database, leased for the request, with its bound classes."""
    tenancy = TENANCY.of(request)
    tenancy.metrics.count_request(tenant.slug)
    async with tenancy.documents.lease(tenant) as database:
        models = await database.models(SUBMISSION_MODELS)
        yield SubmissionScope(tenant=tenant, repository=SubmissionRepository(models))


async def get_submission_service(request: Request) -> SubmissionService:
    return SUBMISSIONS.of(request).service


Scope = Annotated[SubmissionScope, Depends(submission_scope, scope="function")]
Submissions = Annotated[SubmissionService, Depends(get_submission_service)]


async def read_declaration(request: Request) -> tuple[DeclarationIn, ContentKind]:
    """The body as a validated declaration: 415 for another type, 400 malformed, 422 invalid."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if is_json_media_type(content_type):
        kind, parse = ContentKind.JSON, parse_json_declaration
    elif media_type in XML_MEDIA_TYPES:
        kind, parse = ContentKind.XML, parse_xml_declaration
    else:
        raise UnsupportedMediaType("Send the declaration as application/json or application/xml")
    data = parse(await request.body())  # the body limit holds while it is read
    try:
        return DeclarationIn.model_validate(data), kind
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def _about(submission_id: uuid.UUID) -> None:
    # On every later line of the request, the access log's included.
    structlog.contextvars.bind_contextvars(**{SUBMISSION_ID: str(submission_id)})


def _json(body: str, status: int = HTTPStatus.OK) -> Response:
    return Response(body, status, media_type=JSON_MEDIA_TYPE)


@router.post(
    "",
    response_model=SubmissionOut,
    status_code=HTTPStatus.ACCEPTED,
    dependencies=[WriteRateLimit],
    openapi_extra=DECLARATION_BODY,
    responses=error_responses(*WRITE_ERRORS, HTTPStatus.CONFLICT),
    summary="Submit a declaration (JSON or XML); processed in the background",
)
async def submit(
    request: Request,
    submissions: Submissions,
    scope: Scope,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    declaration, kind = await read_declaration(request)
    accepted = await submissions.submit(scope, principal, declaration, kind, idempotency_key)
    _about(accepted.submission.id)
    response = _json(SubmissionOut.model_validate(accepted.submission.model_dump())
                     .model_dump_json(), HTTPStatus.ACCEPTED)  # fmt: skip
    response.headers["Location"] = f"{request.url.path}/{accepted.submission.id}"
    if not accepted.is_new:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@router.get(
    "",
    response_model=SubmissionPage,
    responses=error_responses(*READ_ERRORS),
    summary="List submissions (keyset pages, no line items)",
)
async def list_submissions(
    submissions: Submissions,
    scope: Scope,
    principal: CurrentPrincipal,
    filters: Annotated[SubmissionFilters, Query()],
    cursor: CursorParam = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    page = await submissions.list_page(scope, principal, filters, cursor, limit)
    return _json(page.model_dump_json())


@router.get(
    "/stats",
    response_model=SubmissionStats,
    responses=error_responses(*READ_ERRORS),
    summary="Counts by status and day, totals per currency (one aggregation)",
)
async def submission_stats(
    submissions: Submissions,
    scope: Scope,
    principal: CurrentPrincipal,
    days: Annotated[int, Query(ge=1, le=366, description="Window, in days up to today")] = 30,
) -> Response:
    return _json((await submissions.stats(scope, principal, days)).model_dump_json())


@router.get(
    "/{submission_id}",
    response_model=SubmissionOut,
    responses=error_responses(*READ_ERRORS),
    summary="Get a submission with its line items and derived totals",
)
async def get_submission(
    submission_id: IdParam, submissions: Submissions, scope: Scope, principal: CurrentPrincipal
) -> Response:
    _about(submission_id)
    return _json((await submissions.get(scope, principal, submission_id)).model_dump_json())


@router.delete(
    "/{submission_id}",
    status_code=HTTPStatus.NO_CONTENT,
    response_class=Response,
    dependencies=[WriteRateLimit],
    responses=error_responses(*READ_ERRORS, *RATE_LIMITED_ERRORS, HTTPStatus.CONFLICT),
    summary="Delete a PENDING or FAILED submission",
)
async def delete_submission(
    submission_id: IdParam, submissions: Submissions, scope: Scope, principal: CurrentPrincipal
) -> Response:
    _about(submission_id)
    await submissions.delete(scope, principal, submission_id)
    return Response(status_code=HTTPStatus.NO_CONTENT)
