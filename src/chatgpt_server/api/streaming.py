"""type "2": the reply as server-sent events.

Events (``event:`` name, then one ``data:`` line of JSON):

- ``delta``: ``{"delta", "text", "id", "parentMessageId", "conversationId"}`` for every upstream chunk,
  sent as soon as it arrives (no batching);
- ``done``: the success envelope whose ``data`` is exactly what type "1" returns (after it is stored);
- ``error``: the error envelope, for a failure after the stream began;
- comment lines (``: ping``) every ``heartbeat`` seconds while nothing else is sent.

The response watches for the client leaving: the upstream request is then closed at once and what
arrived is stored, marked incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from ..conversation.service import ReplyStream
from ..errors import ServiceError
from .envelope import error_body, now_ms

log = logging.getLogger("chatgpt_server.api")

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]
HEARTBEAT = b": ping\n\n"


def event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventStreamResponse:
    def __init__(self, stream: ReplyStream, heartbeat_s: float, path: str, language: str):
        self.stream = stream
        self.heartbeat_s = heartbeat_s
        self._last_sent = 0.0
        self.path = path
        self.language = language

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        pump = asyncio.create_task(self._pump(send))
        watcher = asyncio.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():  # the client left: stop the upstream, keep what arrived
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
                await self._keep_partial()
            else:
                pump.result()

    async def _keep_partial(self) -> None:
        stream = self.stream
        if stream.text or stream.turn.request.mode == "1":
            try:
                await stream.finish(incomplete=True)
            except ServiceError as exc:
                log.warning("could not store the partial reply: %s", exc.key)
        else:
            await stream.close()

    async def _pump(self, send: Send) -> None:
        stream = self.stream
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        # Heartbeats come from a task of their own, so the event path stays a plain loop (a task and
        # a timer per event, to interleave pings, cost more than the event itself).
        heartbeat = asyncio.create_task(self._heartbeat(send))
        try:
            async for delta in stream.deltas():
                await _body(send, event("delta", self._progress(delta)))
                self._last_sent = loop.time()
            heartbeat.cancel()
            reply = await stream.finish(incomplete=not stream.complete)
            envelope = {"status": 200, "success": True, "message": "ok", "data": reply.data(),
                        "timestamp": now_ms()}  # fmt: skip
            await _body(send, event("done", envelope))
        except ServiceError as exc:
            if stream.text:
                with contextlib.suppress(ServiceError):
                    await stream.finish(incomplete=True)
            else:
                await stream.close()
            heartbeat.cancel()
            await _body(send, event("error", error_body(exc, self.path, self.language)))
        finally:
            heartbeat.cancel()
            await stream.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _heartbeat(self, send: Send) -> None:
        """A comment line whenever nothing was sent for ``heartbeat_s``."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):  # the client is gone: the pump learns it from the disconnect
            while True:
                quiet_for = loop.time() - self._last_sent
                if quiet_for >= self.heartbeat_s:
                    await _body(send, HEARTBEAT)
                    self._last_sent = loop.time()
                    quiet_for = 0.0
                await asyncio.sleep(self.heartbeat_s - quiet_for)

    def _progress(self, delta: str) -> dict[str, Any]:
        stream = self.stream
        return {
            "delta": delta,
            "text": stream.text,
            "id": stream.reply_id,
            "parentMessageId": stream.user_id,
            "conversationId": stream.conversation_id,
        }


async def _body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
