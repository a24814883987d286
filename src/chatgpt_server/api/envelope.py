"""The contract's envelope, for every answer, and the one place errors become responses."""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import MethodNotAllowed, NotFound, ServiceError
from .messages import error_message, pick_language

log = logging.getLogger("chatgpt_server.api")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class JSONBody(Response):
    """orjson-encoded JSON: measurably cheaper than the stdlib encoder on every reply."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(data: Any, status: int = 200) -> JSONBody:
    return JSONBody({"status": 200, "success": True, "message": "ok", "data": data, "timestamp": now_ms()},
                    status_code=status)  # fmt: skip


def error_body(error: ServiceError, path: str, language: str) -> dict[str, Any]:
    return {
        "status": error.status,
        "success": False,
        "message": error_message(error, language),
        "data": {},
        "timestamp": now_ms(),
        "path": path,  # scope["path"] never carries the query string (the original echoed passwords)
    }


def language_of(request: Request) -> str:
    default: str = request.app.state.settings.language
    return pick_language(request.headers.get("accept-language"), default)


def error_response(request: Request, error: ServiceError) -> JSONBody:
    body = error_body(error, request.url.path, language_of(request))
    return JSONBody(body, status_code=error.status, headers=error.headers or None)


async def on_service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.key)
    return error_response(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    error: ServiceError
    if exc.status_code == 405:
        error = MethodNotAllowed("method_not_allowed", method=method, path=path)
    elif exc.status_code == 404:
        error = NotFound("not_found", method=method, path=path)
    else:
        error = ServiceError("internal")
        error.status = exc.status_code
    return error_response(request, error)


class CatchAll:
    """Innermost guard: an unexpected exception becomes a 500 envelope and is not re-raised, so no
    traceback text (which may quote request data) reaches the logs; only its type and place do."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            frames = traceback.format_list(traceback.extract_tb(exc.__traceback__)[-4:])
            log.error("unexpected %s on %s %s\n%s", type(exc).__name__, scope["method"], scope["path"],
                      "".join(frames).rstrip())  # fmt: skip
            if not started:
                await error_response(Request(scope), ServiceError("internal"))(scope, receive, send)
