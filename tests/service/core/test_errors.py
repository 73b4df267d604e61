"""Every error leaves in one envelope, over the real middleware stack (SQLite app)."""

from __future__ import annotations

import httpx
import pytest

from service.core.errors import status_name
from tests.service.conftest import MAX_BODY_BYTES, SECRET_IN_CRASH
from tests.support import assert_envelope, json_lines


async def test_unknown_route_is_a_404_envelope(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/api/v1/nothing-here")

    assert_envelope(response, 404, "NotFound", "/api/v1/nothing-here")


async def test_wrong_method_is_a_405_envelope(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.delete("/api/v1/info")

    assert_envelope(response, 405, "MethodNotAllowed", "/api/v1/info")
    assert "GET" in response.headers["allow"]


async def test_declared_oversized_body_is_a_413_envelope(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/test/items",
        content=b"{" + b" " * MAX_BODY_BYTES + b"}",
        headers={"content-type": "application/json"},
    )

    body = assert_envelope(response, 413, "PayloadTooLarge", "/api/v1/test/items")
    assert str(MAX_BODY_BYTES) in body["message"]


@pytest.mark.parametrize("path", ["/api/v1/test/stream", "/api/v1/test/items"])
async def test_streamed_oversized_body_without_length_is_a_413_envelope(
    probe_client: httpx.AsyncClient, path: str
) -> None:
    async def chunks():
        for _ in range(8):
            yield b"x" * 512

    response = await probe_client.post(
        path, content=chunks(), headers={"content-type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert_envelope(response, 413, "PayloadTooLarge", path)


async def test_streamed_body_within_limit_passes(probe_client: httpx.AsyncClient) -> None:
    async def chunks():
        for _ in range(2):
            yield b"x" * 256

    response = await probe_client.post("/api/v1/test/stream", content=chunks())

    assert response.status_code == 200
    assert response.json() == {"id": "512"}


async def test_non_json_body_is_a_415_envelope(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/test/items", content=b"name=a", headers={"content-type": "text/plain"}
    )

    assert_envelope(response, 415, "UnsupportedMediaType", "/api/v1/test/items")


async def test_json_suffix_media_types_are_accepted(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/test/items",
        content=b'{"name": "a", "quantity": 2}',
        headers={"content-type": "application/merge-patch+json; charset=utf-8"},
    )

    assert response.status_code == 200


async def test_invalid_body_is_a_422_with_field_errors_and_no_echo(
    probe_client: httpx.AsyncClient,
) -> None:
    submitted = "a-very-long-name-that-must-not-be-echoed-back"
    response = await probe_client.post(
        "/api/v1/test/items", json={"name": submitted, "quantity": 0}
    )

    body = assert_envelope(response, 422, "ValidationError", "/api/v1/test/items")
    errors = {tuple(e["loc"]): e for e in body["data"]["errors"]}
    assert set(errors) == {("body", "name"), ("body", "quantity")}
    assert all(set(e) == {"loc", "msg", "type"} for e in errors.values())
    assert submitted not in response.text


async def test_malformed_json_is_a_422_envelope(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/test/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )

    body = assert_envelope(response, 422, "ValidationError", "/api/v1/test/items")
    assert body["data"]["errors"][0]["type"] == "json_invalid"


async def test_rate_limited_is_a_429_envelope_with_retry_after(
    probe_client: httpx.AsyncClient,
) -> None:
    response = await probe_client.get("/api/v1/test/limited")

    body = assert_envelope(response, 429, "TooManyRequests", "/api/v1/test/limited")
    assert response.headers["retry-after"] == "7"
    assert body["data"] == {"retryAfterSeconds": 7}


async def test_crash_is_a_500_without_internals_and_logs_the_traceback(
    probe_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await probe_client.get("/api/v1/test/boom", headers={"x-request-id": "crash-1"})

    body = assert_envelope(response, 500, "InternalServerError", "/api/v1/test/boom")
    assert body["message"] == "Internal server error"
    assert SECRET_IN_CRASH not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    errors = [
        line for line in json_lines(capsys.readouterr().out) if line["event"] == "unhandled_error"
    ]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "crash-1"
    assert errors[0]["level"] == "error"
    assert "Traceback" in errors[0]["exception"]
    assert "RuntimeError" in errors[0]["exception"]


def test_status_names_are_camel_case_phrases() -> None:
    assert status_name(404) == "NotFound"
    assert status_name(413) == "PayloadTooLarge"
    assert status_name(507) == "InsufficientStorage"
    assert status_name(422) == "ValidationError"
    assert status_name(599) == "Error"
