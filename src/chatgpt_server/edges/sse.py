"""Server-sent events out: one ASGI response for every door that streams.

It sends what a producer yields as soon as it yields it (no batching), a comment line whenever
nothing was sent for ``heartbeat_s``, and races the producer against the client leaving: a client
that goes away cancels the producer at once (and so the upstream request), and ``on_leave`` keeps
what had arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from ..core.activity import current_log

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]


def event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventStream:
    def __init__(
        self,
        produce: AsyncIterator[bytes],
        heartbeat_s: float,
        on_leave: Callable[[], Awaitable[None]],
        heartbeat: bytes = b": ping\n\n",
    ):
        self.produce = produce
        self.heartbeat_s = heartbeat_s
        self.on_leave = on_leave
        self.heartbeat = heartbeat
        self._last_sent = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(HEADERS)})
        pump = asyncio.create_task(self._pump(send))
        watcher = asyncio.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():  # the client left: stop the upstream, keep what arrived
                current_log().outcome = "client left"
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
                await self.on_leave()
            else:
                pump.result()

    async def _pump(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        # Heartbeats come from a task of their own, so the event path stays a plain loop (a task and
        # a timer per event, to interleave pings, cost more than the event itself).
        heartbeat = asyncio.create_task(self._beat(send))
        try:
            async for chunk in self.produce:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_sent = loop.time()
        finally:
            heartbeat.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _beat(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # the client is gone: the pump learns it from the disconnect
            while True:
                quiet_for = loop.time() - self._last_sent
                if quiet_for >= self.heartbeat_s:
                    await send({"type": "http.response.body", "body": self.heartbeat, "more_body": True})
                    self._last_sent = loop.time()
                    quiet_for = 0.0
                await asyncio.sleep(self.heartbeat_s - quiet_for)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
