"""Swagger UI at /api, its assets served from the swagger-ui-bundle package (no CDN, works offline),
and the OpenAPI document at /api-json."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .http import JSONBody
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..app import Services

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>chatgpt-server API</title>
  <link rel="stylesheet" href="/api/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/api-json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: "none"});
  </script>
</body>
</html>
"""


async def swagger_page(request: Request, services: Services) -> Response:
    return HTMLResponse(PAGE)


async def openapi_json(request: Request, services: Services) -> Response:
    return JSONBody(openapi_document())


async def root(request: Request, services: Services) -> Response:
    """``/`` leads to the API's documentation. The target is a fixed relative path: never a URL built
    from request headers."""
    return RedirectResponse("/api", status_code=302)
