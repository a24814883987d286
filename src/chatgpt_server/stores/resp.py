"""A small Redis client: one pipelined connection, the commands this gateway sends, nothing else.

Why not redis-py's asyncio client: per command it takes a connection from a pool under a lock, wraps
the read in ``asyncio.timeout`` and encodes arguments in Python; measured on a new conversation (two
commands) that was 28% of the gateway's CPU. Here every caller shares one connection: a command is
packed by hiredis (C), queued with the others sent in the same loop iteration (one write for all),
and its reply, parsed by hiredis, is handed to the oldest waiting caller (Redis answers in order).

Faults: a command not answered within ``timeout_s`` fails with ``TimeoutError`` and the connection is
dropped (a late reply would answer nobody); a connection that goes away fails what waits on it with
``ConnectionError``, and the next command connects anew. ``call`` retries once after a connection
error: every command and script this gateway sends is idempotent.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

from ..one_send import OneSend

Reply = Any  # bytes, int, None, a list of replies, or a ReplyError (an error reply)


class RespError(Exception):
    """Redis answered with an error (``-ERR ...``)."""


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float):
        self.loop = loop
        self.timeout_s = timeout_s
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Reply], asyncio.TimerHandle]] = deque()
        self.transport: OneSend | None = None  # the commands of one loop pass leave in one write
        self.lost: BaseException | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's
        self.transport = OneSend(cast(asyncio.Transport, transport), self.loop)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not self.waiting:  # nothing asked for this: the stream cannot be trusted
                    raise hiredis.ProtocolError("a reply nobody asked for")
                future, timer = self.waiting.popleft()
                timer.cancel()
                if not future.done():
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"connection to Redis lost: {exc}" if exc else "connection to Redis closed"))

    # -- use ----------------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self.loop.create_future()
        if self.lost is not None or self.transport is None:
            future.set_exception(self.lost or ConnectionError("not connected to Redis"))
            return future
        self.transport.write(packed)
        self.waiting.append((future, self.loop.call_later(self.timeout_s, self._expired)))
        return future

    def _expired(self) -> None:
        # Everything behind it waits on the same stalled server: it all fails now, none of it retried.
        self.fail(TimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))

    def fail(self, error: BaseException) -> None:
        """Fail everything waiting and close: nothing more is read from or sent on this connection."""
        if self.lost is None:
            self.lost = error
        while self.waiting:
            future, timer = self.waiting.popleft()
            timer.cancel()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()  # what was not sent yet is not sent


class Script:
    """A Lua script, sent by digest (EVALSHA) and by text only when the server does not know it."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()  # the name Redis gives it


class Resp:
    """Commands over one shared connection to ``redis://`` or ``rediss://`` URL's server."""

    def __init__(self, url: str, timeout_s: float, connect_timeout_s: float):
        parts = urlsplit(url)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:  # never shown: the message would hold part of the password
            raise ValueError(
                "the Redis URL cannot be read (percent-encode special characters in the password)"
            ) from None
        if not host:
            raise ValueError("the Redis URL names no host")
        self.host = host
        self.port = port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the Redis database must be a number, not {path!r}")
        self.db = int(path) if path else 0
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "rediss" else None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            task = self._connecting = asyncio.ensure_future(self._connect())
            task.add_done_callback(self._connected)  # forgotten when done, whether anyone still waits
        return await asyncio.shield(self._connecting)  # one caller cancelled does not cancel the others'

    def _connected(self, task: asyncio.Future[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left to

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self.timeout_s)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl)
        except TimeoutError:
            raise TimeoutError(f"no connection to Redis within {self.connect_timeout_s:g} s") from None
        hello: list[tuple[Any, ...]] = []
        if self.password is not None:
            hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        try:
            for reply in await _all([conn.send(hiredis.pack_command(c)) for c in hello]):
                _checked(reply)
        except BaseException:
            conn.fail(ConnectionError("Redis refused the connection"))
            raise
        if self._conn is not None:
            self._conn.fail(ConnectionError("replaced"))
        self._conn = conn
        return conn

    async def call(self, *args: Any) -> Reply:
        """One command's reply; an error reply raises ``RespError``."""
        return _checked(await self._send(hiredis.pack_command(args)))

    async def _send(self, packed: bytes) -> Reply:
        try:
            return await (await self._connection()).send(packed)
        except ConnectionError:
            return await (await self._connection()).send(packed)  # once: Redis may have restarted

    async def many(self, commands: list[tuple[Any, ...]]) -> list[Reply]:
        """Several commands in one write; their replies in order (error replies raise)."""
        packed = [hiredis.pack_command(c) for c in commands]
        for attempt in (0, 1):
            conn = await self._connection()
            try:
                return [_checked(r) for r in await _all([conn.send(p) for p in packed])]
            except ConnectionError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def run(self, script: Script, args: list[Any]) -> Reply:
        """A script's reply (no keys declared: every key is built from ARGV)."""
        reply = await self._send(hiredis.pack_command(("EVALSHA", script.sha, 0, *args)))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._send(hiredis.pack_command(("EVAL", script.text, 0, *args)))
        return _checked(reply)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.fail(ConnectionError("closed"))
            self._conn = None


async def _all(futures: list[asyncio.Future[Reply]]) -> list[Reply]:
    """Every future's result, in order; the first failure raises once all are settled (so none is left
    with an exception nobody retrieved)."""
    replies = await asyncio.gather(*futures, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException) and not isinstance(reply, hiredis.ReplyError):  # not a reply: a fault
            raise reply
    return replies


def _checked(reply: Reply) -> Reply:
    if isinstance(reply, hiredis.ReplyError):
        raise RespError(str(reply))
    return reply
