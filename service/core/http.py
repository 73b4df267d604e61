"""Small HTTP facts shared by the middleware, the error handlers and the dependencies."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Scope

API_PREFIX = "/api/v1"  # every route of the API is under it
JSON_MEDIA_TYPE = "application/json"
# Where the request-context middleware keeps the request id. Not scope["state"]: that dict
# is the lifespan state, which some servers share across requests.
REQUEST_ID_SCOPE_KEY = "berth.request_id"
# Headers that belong on every answer to this request, an error envelope included (the rate
# limit left, Cache-Control for tokens): FastAPI builds error responses afresh, so what a
# dependency set on the route's `Response` would be lost on a 401.
RESPONSE_HEADERS_SCOPE_KEY = "berth.response_headers"


def request_id_of(scope: Scope) -> str | None:
    """The id the request-context middleware gave this request (None outside it)."""
    value = scope.get(REQUEST_ID_SCOPE_KEY)
    return value if isinstance(value, str) else None


def is_json_media_type(content_type: str | bytes) -> bool:
    """`application/json` or a `+json` type, parameters (charset) ignored."""
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    media_type = text.split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or media_type.endswith("+json")


def keep_response_headers(scope: Scope, headers: Mapping[str, str]) -> None:
    """Have `headers` on the answer to this request, whichever answer it is."""
    scope.setdefault(RESPONSE_HEADERS_SCOPE_KEY, {}).update(headers)


def kept_response_headers(scope: Scope) -> dict[str, str]:
    kept: dict[str, str] = scope.get(RESPONSE_HEADERS_SCOPE_KEY, {})
    return kept
