"""A transport that sends what one pass of the event loop wrote as one write.

Used where several small writes follow one another on the same connection: uvicorn writes a
response's head and its body separately (two system calls per response, ~9% of the CPU of a new
conversation), and the Redis client sends the commands of many requests that run in the same pass.
"""

from __future__ import annotations

import asyncio
from typing import Any


class OneSend:
    __slots__ = ("_loop", "_out", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            if not self._transport.is_closing():
                self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Close at once; what was written in this pass is not sent."""
        self._out = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)
