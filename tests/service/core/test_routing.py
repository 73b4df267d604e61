"""LeanRoute answers exactly as FastAPI's APIRoute does, for every outcome of a plain graph.

The same endpoints are mounted twice in one app, once per route class, and every request is
sent to both: status, headers that matter and body must be equal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import (
    APIRouter,
    Cookie,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
)
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.core.routing import LeanRoute


async def principal(request: Request) -> str:
    authorization = request.headers.get("authorization")
    if authorization is None:
        raise HTTPException(401, "Authentication required", headers={"WWW-Authenticate": "x"})
    return authorization


async def counted(request: Request) -> int:
    request.state.calls = getattr(request.state, "calls", 0) + 1
    return int(request.state.calls)


async def tenant(x_tenant: Annotated[str, Header(min_length=2)]) -> str:
    return x_tenant


async def reader(
    who: Annotated[str, Depends(principal)],
    calls: Annotated[int, Depends(counted)],
    tenant_slug: Annotated[str, Depends(tenant)],
) -> dict[str, Any]:
    return {"who": who, "tenant": tenant_slug, "calls_seen": calls}


async def item(
    slug: Annotated[str, Path(pattern="^[a-z]+$")],
    request: Request,
    read: Annotated[dict[str, Any], Depends(reader)],
    calls: Annotated[int, Depends(counted)],
    limit: Annotated[int, Query(ge=1)] = 5,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    body = {**read, "slug": slug, "limit": limit, "etag": if_none_match, "calls": calls,
            "path": request.url.path}  # fmt: skip
    return JSONResponse(body, headers={"ETag": '"1"'})


class Window(BaseModel):
    since: int = 0
    until: int | None = None


async def collection(
    tags: Annotated[list[str], Query()],
    window: Annotated[Window, Query()],
    kinds: Annotated[list[int], Query(max_length=3)] = [],  # noqa: B006 (FastAPI copies it)
    page: Annotated[int | None, Query(alias="p")] = None,
    request_ids: Annotated[list[str] | None, Header()] = None,
    trace: Annotated[str, Header(alias="X-Trace", pattern="^t")] = "t0",
    session: Annotated[str | None, Cookie()] = None,
    theme: Annotated[str, Cookie(min_length=3)] = "light",
) -> Response:
    kinds.append(0)  # a mutable default must be a fresh copy on every request
    body = {"tags": tags, "window": window.model_dump(), "kinds": kinds, "page": page,
            "request_ids": request_ids, "trace": trace, "session": session,
            "theme": theme}  # fmt: skip
    return JSONResponse(body)


async def held() -> AsyncIterator[str]:
    yield "held"


async def with_generator(value: Annotated[str, Depends(held)]) -> Response:
    return Response(value)


async def with_scoped(value: Annotated[int, Depends(counted, scope="function")]) -> Response:
    return Response(str(value))


async def uncached(value: Annotated[int, Depends(counted, use_cache=False)]) -> Response:
    return Response(str(value))


def probe_app() -> FastAPI:
    app = FastAPI()
    for prefix, route_class in (("/fastapi", APIRoute), ("/lean", LeanRoute)):
        router = APIRouter(prefix=prefix, route_class=route_class)
        router.add_api_route("/items/{slug}", item, methods=["GET"])
        router.add_api_route("/collection", collection, methods=["GET"])
        router.add_api_route("/held", with_generator, methods=["GET"])
        app.include_router(router)
    return app


@pytest.fixture
async def both() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = probe_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        yield app, client


GOOD = {"Authorization": "Bearer t", "X-Tenant": "acme"}


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/items/abc", GOOD),
        ("/items/abc?limit=7", {**GOOD, "If-None-Match": '"0"'}),
        ("/items/ABC", GOOD),  # the path parameter fails
        ("/items/abc", {"Authorization": "Bearer t"}),  # a dependency's header is missing
        ("/items/abc", {**GOOD, "X-Tenant": "a"}),  # ... or too short
        ("/items/ABC?limit=0", {"Authorization": "Bearer t"}),  # several at once, in order
        ("/items/ABC?limit=0", {"X-Tenant": "acme"}),  # a dependency raises first: 401
        ("/items/abc?limit=x", GOOD),
    ],
    ids=[
        "ok",
        "query-and-header",
        "bad-path",
        "missing-header",
        "short-header",
        "many-errors",
        "unauthenticated",
        "bad-query",
    ],
)
async def test_a_lean_route_answers_as_fastapi_does(
    both: tuple[FastAPI, httpx.AsyncClient], target: str, headers: dict[str, str]
) -> None:
    _, client = both

    expected = await client.get(f"/fastapi{target}", headers=headers)
    lean = await client.get(f"/lean{target}", headers=headers)

    assert lean.status_code == expected.status_code
    assert lean.json() == {**expected.json(), **_path_of(expected, "/lean")}
    for name in ("etag", "www-authenticate", "content-type"):
        assert lean.headers.get(name) == expected.headers.get(name)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("tags=a&tags=b", {}),
        ("tags=a&since=3&until=9&kinds=1&kinds=2&p=4", {"X-Trace": "t1"}),
        ("", {}),  # a required list missing
        ("tags=a&kinds=x&kinds=1&kinds=2&kinds=3", {}),  # a bad item, and too many
        ("tags=a&since=x", {}),  # the parameter model fails
        ("tags=a&page=4", {}),  # the name instead of the alias: ignored
        ("tags=a", {"Request-Ids": "1, 2"}),
        ("tags=a", [("request-ids", "1"), ("request-ids", "2")]),  # a repeated header
        ("tags=a", {"X-Trace": "u1"}),  # an aliased header fails its pattern
        ("tags=a", {"Cookie": "session=s1; theme=dark"}),
        ("tags=a", {"Cookie": "theme=x"}),  # a cookie fails
    ],
    ids=[
        "lists",
        "everything",
        "missing-list",
        "bad-list",
        "bad-model",
        "name-not-alias",
        "header-list",
        "repeated-header",
        "bad-aliased-header",
        "cookies",
        "bad-cookie",
    ],
)
async def test_list_alias_model_and_cookie_parameters_answer_as_fastapi_does(
    both: tuple[FastAPI, httpx.AsyncClient], query: str, headers: Any
) -> None:
    _, client = both

    for _ in range(2):  # twice: a mutable default must not keep the first call's change
        expected = await client.get(f"/fastapi/collection?{query}", headers=headers)
        lean = await client.get(f"/lean/collection?{query}", headers=headers)

        assert (lean.status_code, lean.json()) == (expected.status_code, expected.json())


def _path_of(response: httpx.Response, prefix: str) -> dict[str, str]:
    body = response.json()
    return {"path": body["path"].replace("/fastapi", prefix)} if "path" in body else {}


async def test_a_dependency_named_twice_is_called_once(
    both: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = both

    body = (await client.get("/lean/items/abc", headers=GOOD)).json()

    assert (body["calls"], body["calls_seen"]) == (1, 1)


def test_only_plain_graphs_are_solved_lean() -> None:
    router = APIRouter(route_class=LeanRoute)
    router.add_api_route("/items/{slug}", item, methods=["GET"])
    router.add_api_route("/held", with_generator, methods=["GET"])  # a generator dependency
    router.add_api_route("/scoped", with_scoped, methods=["GET"])
    router.add_api_route("/uncached", uncached, methods=["GET"])
    router.add_api_route("/collection", collection, methods=["GET"])  # so its test compares

    lean = {route.path: route.is_lean for route in router.routes if isinstance(route, LeanRoute)}

    assert lean == {
        "/items/{slug}": True,
        "/held": False,
        "/scoped": False,
        "/uncached": False,
        "/collection": True,
    }


async def test_a_route_that_is_not_plain_is_served_by_fastapi(
    both: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = both

    response = await client.get("/lean/held")

    assert (response.status_code, response.text) == (200, "held")


async def test_dependency_overrides_are_honoured(both: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = both

    async def someone_else(request: Request) -> str:
        return "overridden"

    app.dependency_overrides[principal] = someone_else
    body = (await client.get("/lean/items/abc", headers={"X-Tenant": "acme"})).json()

    assert body["who"] == "overridden"
