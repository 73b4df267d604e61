"""API docs served from the image: Swagger UI's files come from a pinned package
(`swagger-ui-bundle-v2`), not from a CDN, so `/docs` works in an air-gapped cluster too.

ReDoc is not served: no kept package ships its bundle, and a CDN is what this avoids.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_ASSETS_PATH = "/docs/assets"
# The files of the bundle the page loads; the test fetches each of them from the app.
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
FAVICON = "favicon-32x32.png"


def install_docs(app: FastAPI, docs_path: str) -> None:
    """Swagger UI at `docs_path` for the app's OpenAPI document, with its assets beside it."""
    assert app.openapi_url is not None, "docs need the OpenAPI document"
    openapi_url = app.openapi_url
    oauth2_redirect_url = f"{docs_path}/oauth2-redirect"
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/{FAVICON}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.add_api_route(docs_path, swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(oauth2_redirect_url, oauth2_redirect, methods=["GET"],
                      include_in_schema=False)  # fmt: skip
