"""HTTP for articles: thin; the rules live in service.py, the queries in repository.py."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response

from service.articles.cache import RenderedArticle
from service.articles.schemas import (
    ArticleCreate,
    ArticleFilters,
    ArticleOut,
    ArticlePage,
    ArticlePatch,
    ArticleSlug,
)
from service.articles.service import Actor, ArticleService, etag_matches
from service.articles.wiring import ARTICLES
from service.core.dependencies import RequireJson
from service.core.errors import (
    INPUT_ERRORS,
    JSON_BODY_ERRORS,
    RATE_LIMITED_ERRORS,
    error_responses,
)
from service.core.http import JSON_MEDIA_TYPE
from service.core.pagination import DEFAULT_PAGE_SIZE, CursorParam, PageSize
from service.core.routing import LeanRoute
from service.identity.dependencies import AUTHENTICATED_ERRORS, CurrentPrincipal, WriteRateLimit
from service.tenants.dependencies import TENANT_ERRORS, CurrentTenantReader, CurrentTenantScope

router = APIRouter(prefix="/articles", tags=["articles"], route_class=LeanRoute)
# On the routes with a body only: a router-wide guard is one more dependency every GET pays.
WRITE_GUARDS = [RequireJson, WriteRateLimit]
# Every route needs the principal and the tenant; 403 is also a member editing another's.
READ_ERRORS = (*AUTHENTICATED_ERRORS, *TENANT_ERRORS, *INPUT_ERRORS)
WRITE_ERRORS = (*READ_ERRORS, *JSON_BODY_ERRORS, *RATE_LIMITED_ERRORS)
SlugParam = Annotated[ArticleSlug, Path(description="The article's slug")]
IfMatch = Annotated[str | None, Header(description="ETag the change is based on (412 if stale)")]


def articles_of(request: Request) -> ArticleService:
    # Read from the app's container in the route, not as a dependency: each node of the
    # dependency graph costs ~10 µs per request (docs/benchmarks.md).
    return ARTICLES.of(request)


def actor_of(principal: CurrentPrincipal) -> Actor:
    return Actor(user_id=principal.user_id, role=principal.role)


def _send(article: RenderedArticle, status: int = HTTPStatus.OK) -> Response:
    # The rendered JSON is sent as is: a cache hit costs no model work at all.
    return Response(
        article.body, status, media_type=JSON_MEDIA_TYPE, headers={"ETag": article.etag}
    )


@router.get(
    "",
    response_model=ArticlePage,
    responses=error_responses(*READ_ERRORS),
    summary="List articles (keyset pages)",
)
async def list_articles(
    request: Request,
    reader: CurrentTenantReader,
    filters: Annotated[ArticleFilters, Query()],
    cursor: CursorParam = None,
    limit: PageSize = DEFAULT_PAGE_SIZE,
) -> Response:
    # Rendered once (or cached rendered): returned as a model, FastAPI would validate it again.
    body = await articles_of(request).list_page(reader, filters, cursor, limit)
    return Response(body, media_type=JSON_MEDIA_TYPE)


@router.post(
    "",
    response_model=ArticleOut,
    status_code=HTTPStatus.CREATED,
    dependencies=WRITE_GUARDS,
    responses=error_responses(*WRITE_ERRORS, HTTPStatus.CONFLICT),
    summary="Create an article",
)
async def create_article(
    data: ArticleCreate,
    request: Request,
    scope: CurrentTenantScope,
    principal: CurrentPrincipal,
) -> Response:
    article = await articles_of(request).create(scope, actor_of(principal), data)
    response = _send(article, HTTPStatus.CREATED)
    response.headers["Location"] = f"{request.url.path}/{article.slug}"
    return response


@router.get(
    "/{slug}",
    response_model=ArticleOut,
    responses={
        304: {"description": "Not modified (If-None-Match)"},
        **error_responses(*READ_ERRORS),
    },
    summary="Get an article by slug (cached; ETag)",
)
async def get_article(
    slug: SlugParam,
    request: Request,
    reader: CurrentTenantReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    article = await articles_of(request).get(reader, slug)
    if etag_matches(if_none_match, article.etag):
        return Response(status_code=HTTPStatus.NOT_MODIFIED, headers={"ETag": article.etag})
    return _send(article)


@router.patch(
    "/{slug}",
    response_model=ArticleOut,
    dependencies=WRITE_GUARDS,
    responses=error_responses(*WRITE_ERRORS, HTTPStatus.CONFLICT, HTTPStatus.PRECONDITION_FAILED),
    summary="Change some fields of an article (If-Match for optimistic concurrency)",
)
async def patch_article(
    slug: SlugParam,
    patch: ArticlePatch,
    request: Request,
    scope: CurrentTenantScope,
    principal: CurrentPrincipal,
    if_match: IfMatch = None,
) -> Response:
    return _send(
        await articles_of(request).update(scope, actor_of(principal), slug, patch, if_match)
    )


@router.delete(
    "/{slug}",
    status_code=HTTPStatus.NO_CONTENT,
    response_class=Response,
    dependencies=WRITE_GUARDS,
    responses=error_responses(*READ_ERRORS, *RATE_LIMITED_ERRORS, HTTPStatus.PRECONDITION_FAILED),
    summary="Delete an article",
)
async def delete_article(
    slug: SlugParam,
    request: Request,
    scope: CurrentTenantScope,
    principal: CurrentPrincipal,
    if_match: IfMatch = None,
) -> Response:
    await articles_of(request).delete(scope, actor_of(principal), slug, if_match)
    return Response(status_code=HTTPStatus.NO_CONTENT)
