"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from ..errors import StoreUnavailable
from .envelope import ok

if TYPE_CHECKING:
    from ..app import Services

READY_WITHIN_S = 0.9


async def healthz(request: Request, services: Services) -> Response:
    """Alive, with this worker's counts that show a leak: tasks, open upstream streams, queues."""
    cache = services.cache
    return ok({
        "alive": True, "pid": os.getpid(), "tasks": len(asyncio.all_tasks()),
        "streams": services.activity.open_streams, "turns": len(services.activity.turns),
        "queues": len(services.turns.queues),
        "historyCache": {"entries": len(cache), "bytes": cache.size, "hits": cache.hits, "misses": cache.misses},
    })  # fmt: skip


async def readyz(request: Request, services: Services) -> Response:
    """Ready when the conversation store answers, within a second whatever the store does (503
    "conversation store unavailable" otherwise)."""
    try:
        async with asyncio.timeout(READY_WITHIN_S):
            await services.store.ping()
    except TimeoutError as exc:
        raise StoreUnavailable(reason="the store did not answer within a second") from exc
    return ok({"store": services.store.kind, "ready": True})
