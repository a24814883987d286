"""A lean HTTP/1.1 client for upstream POSTs (used when no proxy is set; with one, aiohttp serves).

Why: aiohttp's client was ~22% of the gateway's CPU on a new conversation (request object, writer,
payload, connector, response, stream reader: layers a POST with a known body does not need). Here a
request is one write of head and body, and the answer is parsed by httptools (llhttp, C) straight
into a response that offers the part of aiohttp's response the upstreams use: ``status``,
``headers``, ``content_length``, ``content.iter_any()`` / ``read()`` / ``at_eof()``, ``release()``
and ``close()``.

Connections are kept per scheme, host and port (the most recently used first, 30 s at most idle) and
reused only after an answer that was read to its end and allowed keep-alive; a request on a connection
the upstream closed as idle just as the request went out is sent again once on a new one (the upstream
may, rarely, have read it: OpenAI's SDK takes the same risk on any connection error). A connection whose
answer is given up on (cancelled, closed early) is closed: that is what tells the upstream to stop.
Bounds: the head of an answer at most ``MAX_HEAD`` bytes; reading pauses while ``READ_AHEAD`` bytes
wait unread. Bodies are asked for and accepted without content coding.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from ..settings import netloc_of

MAX_HEAD = 256 * 1024
READ_AHEAD = 256 * 1024
IDLE_S = 30.0
# A reused connection that had been idle this long, and that closes within STALE_S of our request
# before any byte of an answer, was closed as idle by the upstream (its close crossed our request):
# the request is sent again. Servers close idle connections after seconds, never at once.
STALE_IDLE_S = 1.0
STALE_S = 1.0


class ConnectFailed(OSError):
    """No connection to the upstream (refused, unreachable, name unknown, TLS refused)."""


class Disconnected(ConnectionError):
    """The upstream closed the connection before its answer's head."""


class CutOff(Exception):
    """The upstream's answer ended before its declared end."""


class NotHTTP(ValueError):
    """What the upstream sent is not an HTTP answer we accept."""


@functools.lru_cache(maxsize=256)
def _split(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(scheme, host, port), the request target, and the Host header of ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an upstream URL must be http:// or https:// with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.scheme, parts.hostname, port), target, netloc_of(parts.scheme, parts.hostname, parts.port)


class WireResponse:
    """An upstream's answer: its head at once, its body as it arrives."""

    def __init__(self, conn: _Connection, url: str):
        self._conn = conn
        self.url = url
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self.keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False  # the whole body has arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False  # released or closed

    @property
    def content(self) -> WireResponse:
        return self

    # -- fed by the connection --------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_AHEAD:
            self._conn.pause()
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None and not self._eof:
            self._error = error
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller ---------------------------------------------------------------------
    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= READ_AHEAD // 4:
                    self._conn.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._eof:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def release(self) -> None:
        """Done with it: the connection goes back for reuse if the answer was read to its end."""
        if not self._done:
            self._done = True
            self._conn.finished(self, reusable=self._eof and self._error is None and self.keep_alive)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.finished(self, reusable=False)


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Wire, key: tuple[str, str, int]):
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.response: WireResponse | None = None
        self.head: asyncio.Future[None] | None = None
        self._expect()
        self.closed = False
        self.paused = False
        self.idle_since = 0.0

    def _expect(self) -> None:
        """Ready to read a new answer."""
        self.parser = httptools.HttpResponseParser(self)
        self.head_bytes = 0
        self.headers: list[tuple[str, str]] = []
        self.until_close = False  # a body without a length: it ends when the connection does
        self.complete = False  # the answer has ended: anything more on this connection is refused
        self.interim = False  # an informational (1xx) answer is being read: the real one follows
        self.trailer_bytes = 0

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.head is None or self.complete:
            self.close()  # nothing was asked (or it was answered): the connection must stay silent
            return
        if not self.head.done():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self.fail(NotHTTP(f"the head of the answer exceeds {MAX_HEAD} bytes"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(NotHTTP("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self.fail(NotHTTP(f"the answer is not valid HTTP ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.head is not None and not self.head.done():
            self.head.set_exception(Disconnected("the server closed the connection"))
        elif self.response is not None and not self.response._eof:
            if self.until_close and exc is None:
                self.response._end()
            else:
                self.response._end(CutOff("the reply was cut off"))

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: stop reading (the connection is closed)
            raise NotHTTP("more than one answer to a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None and self.head.done():  # a trailer: counted against the bound, not kept
            self.trailer_bytes += len(name) + len(value) + 4
            if self.trailer_bytes > MAX_HEAD:
                raise NotHTTP(f"the trailers of the answer exceed {MAX_HEAD} bytes")
            return
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self.head is not None
        status = self.parser.get_status_code()
        if status < 200:  # informational (103 Early Hints, a stray 100): skipped; 101 is not HTTP anymore
            if status == 101:
                raise NotHTTP("the upstream switched protocols")
            self.headers, self.interim = [], True
            return
        response.status = status
        response.headers = CIMultiDict(self.headers)
        response.keep_alive = bool(self.parser.should_keep_alive())
        length = response.headers.get("Content-Length")
        response.content_length = int(length) if length is not None and length.isdigit() else None
        chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
        self.until_close = response.content_length is None and not chunked
        coding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in ("identity", ""):
            raise NotHTTP(f"a content coding was not asked for ({coding[:40]})")
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.interim:  # the end of an informational answer: the real one comes next
            self.interim = False
            return
        self.complete = True
        if self.response is not None:
            self.response._end()

    # -- use ----------------------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, url: str) -> WireResponse:
        assert self.transport is not None
        self.response = WireResponse(self, url)
        self.head = asyncio.get_running_loop().create_future()
        self._expect()
        if len(body) < 65536:
            self.transport.write(head + body)  # one system call
        else:
            self.transport.writelines((head, body))  # a large body is not copied to be joined
        return self.response

    def fail(self, error: BaseException) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        elif self.response is not None:
            self.response._end(error)
        self.close()

    def finished(self, response: WireResponse, reusable: bool) -> None:
        if response is not self.response:
            return
        self.response, self.head = None, None
        # Not reused while our request is still being sent (the answer came early): the next request
        # would wait behind the rest of it.
        unsent = self.transport is not None and self.transport.get_write_buffer_size() > 0
        if reusable and not self.closed and not self.paused and not unsent:
            self.pool.put_back(self)
        else:
            self.close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _why(exc: OSError) -> str:
    """A connect failure in a few plain words: "Connection refused", "Name or service not known"."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or type(exc).__name__
    return os.strerror(exc.errno)


class Wire:
    """The connections to upstreams, and the one call they serve: ``post``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._tls = tls  # the system's trust store unless given (tests bring their own authority)

    def _ssl(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def post(self, url: str, data: bytes, headers: dict[str, str]) -> WireResponse:
        key, target, host = _split(url)
        lines = [f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n"
                 "Accept-Encoding: identity\r\n"]  # fmt: skip
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError("a header name or value holds a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        conn = self._take(key)
        if conn is not None:
            sent = time.monotonic()
            idle = sent - conn.idle_since
            try:
                return await self._ask(conn, head, data, url)
            except Disconnected:
                # A kept-alive connection that sat idle, closed at once with nothing of an answer: the
                # upstream's idle timer fired as our request went out (uvicorn's is 5 s). Sent again,
                # once, on a new connection, as OpenAI's SDK would. A connection in use moments ago, a
                # later end, or part of an answer is a failure that may have acted on the request.
                if conn.head_bytes or idle < STALE_IDLE_S or time.monotonic() - sent > STALE_S:
                    raise
        return await self._ask(await self._connect(key), head, data, url)

    @staticmethod
    async def _ask(conn: _Connection, head: bytes, data: bytes, url: str) -> WireResponse:
        response = conn.send(head, data, url)
        assert conn.head is not None
        try:
            await conn.head
        except BaseException:
            response.close()
            raise
        return response

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        conn = _Connection(self, key)
        tls: Any = self._ssl() if scheme == "https" else None
        try:
            await loop.create_connection(lambda: conn, host, port, ssl=tls)
        except OSError as exc:
            raise ConnectFailed(exc.errno, _why(exc)) from exc
        return conn

    def put_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
