"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .envelope import ok


async def healthz(request: Request) -> Response:
    return ok({"alive": True})


async def readyz(request: Request) -> Response:
    """Ready when the conversation store answers (503 "conversation store unavailable" otherwise)."""
    store = request.app.state.store
    await store.ping()
    return ok({"store": store.kind, "ready": True})
