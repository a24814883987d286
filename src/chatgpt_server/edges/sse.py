"""Server-sent events out: one ASGI response for every door that streams.

It sends what a producer yields as soon as it yields it (no batching), a comment line whenever
nothing was sent for ``heartbeat_s``, and races the producer against the client leaving: a client
that goes away cancels the producer at once (and so the upstream request), and ``on_leave`` keeps
what had arrived. A client that stops reading (its socket's buffers full, a send blocked) for
``stall_s`` is taken as gone: otherwise it would hold the turn, the upstream connection and the
conversation's lock for as long as it liked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from ..core.activity import TRANSPORT, current_log

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
]


LS, PS = "\u2028".encode(), "\u2029".encode()


def event(name: str, data: Any) -> bytes:
    body = orjson.dumps(data)
    if LS in body or PS in body:  # a line end to JavaScript's regex . and $: a naive client splits on it
        body = body.replace(LS, b"\\u2028").replace(PS, b"\\u2029")
    return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"


class EventStream:
    def __init__(
        self,
        produce: AsyncIterator[bytes],
        heartbeat_s: float,
        on_leave: Callable[[], Awaitable[None]],
        heartbeat: bytes = b": ping\n\n",
        stall_s: float = 120.0,
    ):
        self.produce = produce
        self.heartbeat_s = heartbeat_s
        self.on_leave = on_leave
        self.heartbeat = heartbeat
        self.stall_s = stall_s
        self._sending_since: float | None = None  # a send not yet done began (or last made progress) then
        self._buffered = 0  # bytes the connection still had to send at the last look
        self._transport: Any = None
        self._stalled: Callable[[], None] | None = None
        self._last_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.Future[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The events go out from this task. A watcher task cancels it when the client leaves, and a
        # timer (not a task: most streams end long before a heartbeat is due) sends the heartbeats.
        await send({"type": "http.response.start", "status": 200, "headers": list(HEADERS)})
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        left = over = False

        def gone(watcher: asyncio.Task[None]) -> None:
            nonlocal left
            # ``over``: this call has ended, so the task (the server's) is no longer ours to cancel.
            if not over and not watcher.cancelled():
                left = True
                turn = current_log().turn
                if turn is not None:
                    turn.leaving()
                task.cancel()

        def stalled() -> None:
            nonlocal left
            if not over:
                left = True
                log = current_log()
                log.outcome, log.message = "client left", f"read nothing for {self.stall_s:g} s"
                task.cancel()

        self._stalled = stalled
        self._transport = scope.get(TRANSPORT)
        watcher = asyncio.create_task(_wait_disconnect(receive))
        watcher.add_done_callback(gone)
        self._last_sent = loop.time()
        self._timer = loop.call_at(self._last_sent + min(self.heartbeat_s, self.stall_s), self._beat, send)
        try:
            async for chunk in self.produce:
                self._sending_since, self._buffered = loop.time(), 1 << 62
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_sent = loop.time()
                self._sending_since = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (asyncio.CancelledError, Exception) as exc:
            left = left or current_log().gone  # the server learnt it first (the stream was just starting)
            if not left and not isinstance(exc, asyncio.CancelledError):
                raise  # the producer failed while its client was there
            # The client left, or the server cancelled what still ran at the end of its shutdown (a
            # stream blocked on a client that stopped reading, which the grace period's abort cannot
            # reach): either way the producer, and so the upstream request, stopped. What arrived is
            # kept and the turn let go; the cancellation ends here, as the response has nothing more
            # to say (passed on, the server would only log it as a traceback).
            while task.uncancel():
                pass
            log = current_log()
            if left:
                log.outcome = "client left"
            else:
                log.outcome, log.message = "error", "cancelled at shutdown"
            await self.on_leave()
            if self._transport is not None and self._sending_since is not None:  # what is owed is never read
                self._transport.abort()
                await asyncio.sleep(0)  # the connection's loss reaches the server before this call returns
        finally:
            over = True
            watcher.cancel()
            self._timer.cancel()
            if self._beating is not None:
                self._beating.cancel()

    def _beat(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = self._sending_since
        if since is not None and self._transport is not None:  # a client reading slowly is still reading
            buffered = _unread(self._transport)
            if buffered < self._buffered:
                since = self._sending_since = now
            self._buffered = buffered
        if since is not None and now - since >= self.stall_s and self._stalled is not None:
            self._stalled()
            return
        due = self._last_sent + self.heartbeat_s
        if now >= due:
            if since is None and (self._beating is None or self._beating.done()):
                self._beating = asyncio.ensure_future(self._send_beat(send))
            due = now + self.heartbeat_s
        if since is not None:  # a send is blocked: look again when it would have stalled
            due = min(due, since + self.stall_s)
        self._timer = loop.call_at(due, self._beat, send)

    async def _send_beat(self, send: Send) -> None:
        with contextlib.suppress(OSError):  # the client is gone: the watcher learns it from the disconnect
            await send({"type": "http.response.body", "body": self.heartbeat, "more_body": True})
            self._last_sent = asyncio.get_running_loop().time()


def _unread(transport: Any) -> int:
    """Bytes sent that the client has not taken yet: the transport's buffer and the socket's send queue
    (Linux wakes a writer only once much of a send buffer of megabytes has drained, so the transport's
    buffer alone can stand still while a slow client reads on)."""
    size = int(transport.get_write_buffer_size())
    sock = transport.get_extra_info("socket")
    if sock is not None and _OUTQ is not None:
        with contextlib.suppress(OSError, ValueError):  # not a socket it knows (or closed): the buffer alone
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    return size


_OUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None  # SIOCOUTQ on a socket


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
