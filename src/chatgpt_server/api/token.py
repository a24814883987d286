"""GET and POST /api/v1/token/getInfo: a ChatGPT access token from email and password.

GET takes the query string, as the original did; POST takes a JSON or form body and is the one to
use, since a password in a URL ends up in proxy and server logs.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .body import read_values
from .envelope import ok
from .validation import parse_token


async def get_info(request: Request) -> Response:
    state = request.app.state
    if request.method == "GET":
        values = dict(request.query_params)
        status = 200
    else:
        values = await read_values(request, state.settings.max_body_bytes, form=True)
        if not isinstance(values, dict):
            values = {}
        status = 201
    query = parse_token(values)
    access_token = await state.services.tokens.token(query.email, query.password, query.refresh)
    return ok(access_token, status=status)
