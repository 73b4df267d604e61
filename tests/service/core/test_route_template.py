"""Route templates: resolved through a bounded per-app cache, never from unknown paths."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.core.config import Settings
from service.core.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS_INPROGRESS
from service.core.middleware import (
    ROUTE_TEMPLATE_CACHE_SIZE,
    ROUTE_TEMPLATE_SCOPE_KEY,
    RouteTemplateCache,
    _route_caches,
    route_template,
    route_template_cache,
)
from service.main import create_app
from tests.conftest import ClientFactory


def items_app() -> FastAPI:
    app = FastAPI()
    api = APIRouter(prefix="/api/v1")
    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @items.get("")
    async def list_items() -> list[int]:
        return []

    api.include_router(items)
    app.include_router(api)
    return app


def scope(app: Any, path: str, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "app": app,
    }


def test_templated_paths_resolve_to_the_template() -> None:
    app = items_app()

    assert route_template(scope(app, "/api/v1/items/42")) == "/api/v1/items/{item_id}"
    assert route_template(scope(app, "/api/v1/items/43")) == "/api/v1/items/{item_id}"
    assert route_template(scope(app, "/api/v1/items")) == "/api/v1/items"


def test_a_cached_answer_is_the_same_as_a_fresh_one() -> None:
    app = items_app()
    first = scope(app, "/api/v1/items/7")
    again = scope(app, "/api/v1/items/7")

    assert route_template(first) == route_template(again) == "/api/v1/items/{item_id}"
    assert len(route_template_cache(app)) == 1


def test_the_template_is_kept_in_the_scope_for_the_rest_of_the_request() -> None:
    app = items_app()
    request_scope = scope(app, "/api/v1/items/1")

    route_template(request_scope)

    assert request_scope[ROUTE_TEMPLATE_SCOPE_KEY] == "/api/v1/items/{item_id}"


def test_unknown_paths_are_not_cached() -> None:
    app = items_app()

    for n in range(100):
        assert route_template(scope(app, f"/scanner/probe/{n}")) is None

    assert len(route_template_cache(app)) == 0


def test_wrong_method_still_names_the_route_like_upstream() -> None:
    app = items_app()

    # A partial match (405): the instrumentator labels it with the route, not "none".
    assert route_template(scope(app, "/api/v1/items/5", method="DELETE")) == (
        "/api/v1/items/{item_id}"
    )


def test_the_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    app = items_app()
    cache = RouteTemplateCache(size=3)

    for n in range(3):
        cache.resolve(scope(app, f"/api/v1/items/{n}"))
    cache.resolve(scope(app, "/api/v1/items/0"))  # 0 is now the most recently used
    for n in range(3, 10):
        assert cache.resolve(scope(app, f"/api/v1/items/{n}")) == "/api/v1/items/{item_id}"

    assert len(cache) == 3
    assert cache.resolve(scope(app, "/api/v1/items/0")) == "/api/v1/items/{item_id}"


def test_many_distinct_ids_never_grow_the_cache_past_its_size() -> None:
    app = items_app()

    for n in range(ROUTE_TEMPLATE_CACHE_SIZE + 500):
        route_template(scope(app, f"/api/v1/items/{n}"))

    assert len(route_template_cache(app)) == ROUTE_TEMPLATE_CACHE_SIZE


def test_each_app_has_its_own_cache() -> None:
    first = items_app()
    second = FastAPI()

    @second.get("/api/v1/items/{name}/detail")
    async def detail(name: str) -> str:
        return name

    assert route_template(scope(first, "/api/v1/items/1")) == "/api/v1/items/{item_id}"
    assert route_template(scope(second, "/api/v1/items/1")) is None
    assert route_template(scope(second, "/api/v1/items/1/detail")) == (
        "/api/v1/items/{name}/detail"
    )


def test_the_cache_goes_with_its_app() -> None:
    app = items_app()
    route_template(scope(app, "/api/v1/items/1"))
    key = id(app)
    assert key in _route_caches

    del app
    gc.collect()

    assert key not in _route_caches


def test_a_scope_without_an_app_resolves_to_nothing() -> None:
    assert route_template({"type": "http", "method": "GET", "path": "/x", "headers": []}) is None


async def test_metrics_label_templated_requests_with_their_template(
    make_settings: Callable[..., Settings], migrated_sqlite: str, client_for: ClientFactory
) -> None:
    app = create_app(make_settings())
    things = APIRouter(prefix="/api/v1/things")

    @things.get("/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    app.include_router(things)
    client = await client_for(app)
    for n in range(3):
        assert (await client.get(f"/api/v1/things/{n}")).status_code == 200
    await client.get("/api/v1/things/not-a-number")

    samples = [
        sample
        for family in text_string_to_metric_families((await client.get("/metrics")).text)
        for sample in family.samples
    ]
    counts = {
        (s.labels["handler"], s.labels["status"]): s.value
        for s in samples
        if s.name == f"{HTTP_REQUEST_DURATION}_count"
    }
    assert counts[("/api/v1/things/{thing_id}", "200")] == 3
    assert counts[("/api/v1/things/{thing_id}", "422")] == 1
    in_progress = {
        s.labels["handler"]: s.value for s in samples if s.name == HTTP_REQUESTS_INPROGRESS
    }
    assert in_progress["/api/v1/things/{thing_id}"] == 0
