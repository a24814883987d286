"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from .envelope import ok


async def healthz(request: Request) -> Response:
    """Alive, with the counts that show a leak: tasks, open upstream streams, account queues."""
    chat = request.app.state.services.chat
    return ok(
        {"alive": True, "tasks": len(asyncio.all_tasks()), "streams": chat.open_streams, "queues": len(chat.accounts)}
    )


async def readyz(request: Request) -> Response:
    """Ready when the conversation store answers (503 "conversation store unavailable" otherwise)."""
    store = request.app.state.services.store
    await store.ping()
    return ok({"store": store.kind, "ready": True})
