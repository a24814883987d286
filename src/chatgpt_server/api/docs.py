"""Swagger UI at /api, its assets served from the swagger-ui-bundle package (no CDN, works offline),
and the OpenAPI document at /api-json."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .envelope import JSONBody
from .openapi import openapi_document

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
    window.ui = SwaggerUIBundle({url: "/api-json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""


async def swagger_page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def openapi_json(request: Request) -> Response:
    return JSONBody(openapi_document())
