"""OpenAPI: described, tagged, every route with a response model and the error envelope."""

from __future__ import annotations

from typing import Any

import httpx

from service import package_version

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
# Routes that take credentials rather than a bearer token: they answer 401 unsecured.
CREDENTIAL_ROUTES = {"/api/v1/auth/login", "/api/v1/auth/token", "/api/v1/auth/refresh"}
BEARER = [{"OAuth2PasswordBearer": []}]


def operations_of(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


async def test_openapi_is_titled_versioned_and_tagged(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()

    assert schema["info"]["title"] == "berth"
    assert schema["info"]["version"] == package_version()
    assert schema["info"]["description"]
    assert {tag["name"] for tag in schema["tags"]} >= {"health", "info"}


async def test_every_route_declares_a_response_model_and_the_error_envelope(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    operations = operations_of(schema)

    assert operations
    for path, method, operation in operations:
        responses = operation["responses"]
        [success_code] = [code for code in responses if code.startswith("2")]
        if success_code != "204":  # No Content has no body to model
            success = responses[success_code]["content"]["application/json"]["schema"]
            assert "$ref" in success, f"{method} {path} has no response model"
        errors = {code: r for code, r in responses.items() if code[0] in "45"}
        assert "500" in errors, f"{method} {path} does not declare a crash"
        assert not {"4XX", "5XX"} & set(errors), f"{method} {path}: blanket codes"
        for code, response in errors.items():
            ref = response["content"]["application/json"]["schema"]["$ref"]
            expected = (
                "/ReadyResponse" if path.endswith("/ready") and code == "503" else "/ErrorEnvelope"
            )
            assert ref.endswith(expected), f"{method} {path} {code}"
        assert operation["tags"], f"{method} {path} has no tag"


async def test_routes_that_need_a_bearer_token_are_secured_and_declare_401(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()

    assert list(schema["components"]["securitySchemes"]) == ["OAuth2PasswordBearer"]
    for path, method, operation in operations_of(schema):
        secured = operation.get("security") == BEARER
        declares_401 = "401" in operation["responses"]
        if secured:
            assert declares_401, f"{method} {path} needs a token but does not declare 401"
        elif declares_401:
            assert path in CREDENTIAL_ROUTES, f"{method} {path} answers 401 but is not secured"


async def test_docs_are_served_locally(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert "swagger" in response.text.lower()
