"""A route class that solves plain dependency graphs without FastAPI's generic solver.

FastAPI 0.165 spends ~10-15 µs per dependency node and request on machinery a plain graph
does not use (overrides, generator and thread-pool dispatch, scope checks, cache keys, a
`Response` and a `SolvedDependency` per node), and its request handler extracts an endpoint
context and opens telemetry and operation scopes on every call: an article GET from the
local cache spent about half of its time in the app there (docs/benchmarks.md).

`LeanRoute` keeps FastAPI for everything it declares (OpenAPI, parameter validation with the
same errors, the route's exit stacks, exception handling) and only solves the graph itself
when every node is plain:

- an `async def` (or an object with an async `__call__`), not a generator;
- parameters from the path, query, headers, cookies and the `Request`, no body, no
  `Response`, `BackgroundTasks`, `SecurityScopes` or WebSocket parameter, no OAuth scopes,
  no concurrency limit, no `scope=` and the dependency cache on;
- and the endpoint returns a `Response` (it is sent as is, as FastAPI sends one).

Sub-dependencies are solved in declaration order before a node's own parameters; a node
whose sub-dependencies or parameters fail is not called, and every error is collected into
one `RequestValidationError`, as FastAPI does. A dependency is called once per request
(FastAPI's cache, keyed by the callable). Any other route, and every route while
`app.dependency_overrides` is set, goes through FastAPI's own handler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi._compat import ModelField, Undefined, field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import (
    _get_param_aliases,
    _get_param_model,
    _is_json_field,
    _validate_value_with_model_field,
    get_typed_return_annotation,
    request_params_to_args,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.routing import _effective_route_context_var as effective_route_context
from starlette.datastructures import Headers, ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


@dataclass(frozen=True, slots=True)
class _Param:
    """One path, query, header or cookie parameter, with what FastAPI's
    `request_params_to_args` works out from the field on every request worked out once:
    its aliases, whether it is read as a list, and where its errors point."""

    field: ModelField
    aliases: tuple[tuple[str, str], ...]  # (validation alias, request key), preferred first
    location: str
    reads_list: bool
    is_sequence: bool

    @classmethod
    def of(cls, field: ModelField) -> _Param:
        is_sequence = field_annotation_is_sequence(field.field_info.annotation)
        location = field.field_info.in_.value  # type: ignore[attr-defined]
        aliases = tuple(_get_param_aliases(field))
        return cls(field, aliases, location, is_sequence and not _is_json_field(field), is_sequence)

    def read(self, received: Any, values: dict[str, Any]) -> tuple[Any, list[Any]]:
        """The validated value and its errors, as `request_params_to_args` gives them."""
        _, alias = next((pair for pair in self.aliases if pair[1] in received), self.aliases[0])
        value: Any
        if self.reads_list and isinstance(received, ImmutableMultiDict | Headers):
            value = received.getlist(alias)
        else:
            value = received.get(alias, None)
        if value is None or (self.is_sequence and len(value) == 0):
            value = Undefined  # the default is applied by the validation
        return _validate_value_with_model_field(
            field=self.field, value=value, values=values, loc=(self.location, alias)
        )


@dataclass(frozen=True, slots=True)
class _Params:
    """The parameters of one source (path, query, headers or cookies) of a node.

    FastAPI's `request_params_to_args` recomputes each field's aliases, parameter model and
    list-ness on every request: ~4 µs for a path parameter, ~6.6 µs for an optional header
    that is absent, three of them per article GET (docs/benchmarks.md). A source with a
    parameter model (`Annotated[Model, Query()]`) is left to FastAPI whole.
    """

    fields: tuple[ModelField, ...]
    params: tuple[_Param, ...] | None  # None: FastAPI's own function reads them

    @classmethod
    def of(cls, fields: list[ModelField]) -> _Params:
        if any(_get_param_model(field) is not None for field in fields):
            return cls(tuple(fields), None)
        return cls(tuple(fields), tuple(_Param.of(field) for field in fields))

    def read(self, received: Any) -> tuple[dict[str, Any], list[Any]]:
        if self.params is None:
            return request_params_to_args(self.fields, received)
        values: dict[str, Any] = {}
        errors: list[Any] = []
        for param in self.params:
            value, field_errors = param.read(received, values)
            if field_errors:
                errors.extend(field_errors)
            else:
                values[param.field.name] = value
        return values, errors


@dataclass(frozen=True)
class Node:
    """One plain dependency (or the endpoint) and what it is called with."""

    call: Callable[..., Any]
    name: str | None
    subs: tuple[Node, ...]
    dependant: Dependant
    path_params: _Params | None = None  # None: the node has none of that source
    query_params: _Params | None = None
    header_params: _Params | None = None
    cookie_params: _Params | None = None

    async def solve(
        self, request: Request, solved: dict[Callable[..., Any], Any], errors: list[Any]
    ) -> dict[str, Any] | None:
        """The keyword arguments to call this node with; None when any of them failed."""
        values: dict[str, Any] = {}
        failed = False
        for sub in self.subs:
            if sub.call in solved:
                value = solved[sub.call]
            else:
                sub_values = await sub.solve(request, solved, errors)
                if sub_values is None:
                    failed = True
                    continue
                value = solved[sub.call] = await sub.call(**sub_values)
            if sub.name is not None:
                values[sub.name] = value
        return None if self._add_params(request, values, errors) or failed else values

    def _add_params(self, request: Request, values: dict[str, Any], errors: list[Any]) -> bool:
        dependant = self.dependant
        failed = False
        for params, source in (
            (self.path_params, request.path_params),
            (self.query_params, request.query_params),
            (self.header_params, request.headers),
            (self.cookie_params, request.cookies),
        ):
            if params is None:
                continue
            found, field_errors = params.read(source)
            values.update(found)
            if field_errors:
                errors.extend(field_errors)
                failed = True
        if dependant.request_param_name is not None:
            values[dependant.request_param_name] = request
        if dependant.http_connection_param_name is not None:
            values[dependant.http_connection_param_name] = request
        return failed


def _is_async_function(call: Any) -> bool:
    target = call if inspect.isfunction(call) or inspect.ismethod(call) else call.__call__
    return inspect.iscoroutinefunction(target) and not inspect.isasyncgenfunction(target)


def plain_node(dependant: Dependant) -> Node | None:
    """The graph below `dependant` as `Node`s, or None when any node is not plain."""
    call = dependant.call
    if call is None or not _is_async_function(call):
        return None
    if (
        dependant.body_params
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
        or dependant.websocket_param_name
        or dependant.own_oauth_scopes
        or dependant.parent_oauth_scopes
        or dependant.concurrency is not None
        or not dependant.use_cache
        # `scope=` is part of a dependency's cache key (the endpoint's own is "function").
        or any(sub.scope is not None for sub in dependant.dependencies)
    ):
        return None
    subs = [plain_node(sub) for sub in dependant.dependencies]
    if any(sub is None for sub in subs):
        return None
    return Node(
        call,
        dependant.name,
        tuple(sub for sub in subs if sub is not None),
        dependant,
        *(
            _Params.of(fields) if fields else None
            for fields in (
                dependant.path_params,
                dependant.query_params,
                dependant.header_params,
                dependant.cookie_params,
            )
        ),
    )


def _returns_response(endpoint: Callable[..., Any]) -> bool:
    annotation = get_typed_return_annotation(endpoint)
    return isinstance(annotation, type) and issubclass(annotation, Response)


class LeanRoute(APIRoute):
    """An APIRoute that solves a plain dependency graph itself (see the module)."""

    is_lean: bool = False

    def get_route_handler(self) -> Handler:
        fastapi_handler = super().get_route_handler()
        # A route included in the app is served under FastAPI's effective context (the
        # router's dependencies added): FastAPI's handler is built from that dependant too.
        context = effective_route_context.get()
        route = context if context is not None and context.original_route is self else self
        root = plain_node(route.dependant) if _returns_response(self.endpoint) else None
        if root is None:
            return fastapi_handler
        self.is_lean = True

        async def lean_handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await fastapi_handler(request)
            errors: list[Any] = []
            values = await root.solve(request, {}, errors)
            if values is None:
                raise RequestValidationError(errors)
            response: Response = await root.call(**values)
            return response

        return lean_handler
