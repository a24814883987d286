"""What a process is doing right now: open turns (for shutdown and /healthz) and, per request, the
facts its access-log line reports (filled in wherever they become known)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ClientGone

if TYPE_CHECKING:
    from .turns import OpenTurn


# The scope key of what the server calls when the client leaves before its answer began (App.http sets
# it, the HTTP protocol calls it).
GONE = "chatgpt_server.client_left"


@dataclass(slots=True)
class RequestLog:
    route: str = ""
    upstream: str = ""
    upstream_ms: float = 0.0
    store_ms: float = 0.0
    outcome: str = ""
    message: str = ""
    # The request's credentials (its key, token, password): masked wherever a message quotes the client.
    secrets: tuple[str, ...] = ()
    turn: OpenTurn | None = None  # the turn it is waiting for, if any
    gone: bool = False
    task: asyncio.Task[None] | None = None  # the server's task answering it
    stopping: bool = False  # cancelled by us at the end of the shutdown's grace period: answer 503

    def client_left(self) -> None:
        """The client closed the connection before its answer began (the server calls this): the turn
        it waits for is stopped, whatever it was waiting for (a queue, the upstream's head or words),
        and lets go of its conversation; nothing is bought for nobody."""
        self.gone = True
        if self.turn is not None:
            self.turn.abort(ClientGone("client_left"))
        elif self.task is not None and not self.task.done():
            self.task.cancel()  # whatever else it waits for (a pass-through's upstream): see stopped_here

    def stop(self) -> None:
        """The shutdown's grace period is over and this request waits on something that is not a turn
        (a pass-through, a sign-in): cancel what it waits for; the server answers 503."""
        if self.turn is None and self.task is not None and not self.task.done() and not self.stopping:
            self.stopping = True
            self.task.cancel()

    def stopped_here(self) -> bool:
        """A cancellation is ours alone (``stop`` or ``client_left``, not the server's own): it is taken
        back, and the request is answered as stopped (503) or as left (499, to nobody)."""
        return (self.stopping or self.gone) and self.task is not None and self.task.uncancel() == 0


_current: contextvars.ContextVar[RequestLog] = contextvars.ContextVar("request_log")
_detached = RequestLog()


def current_log() -> RequestLog:
    """This request's log entry (a throw-away one outside requests, e.g. for ``ask``)."""
    return _current.get(_detached)


def begin_log() -> RequestLog:
    entry = RequestLog()
    _current.set(entry)
    return entry


@dataclass
class Activity:
    turns: set[OpenTurn] = field(default_factory=set)
    requests: dict[asyncio.Task[None], RequestLog] = field(default_factory=dict)  # every request in flight
    open_streams: int = 0
    storing: int = 0  # turns being finished (stored); they may have left ``turns`` already
    _quiet: asyncio.Event | None = field(default=None, repr=False)

    def changed(self) -> None:
        """A turn left ``turns`` or finished storing: wake whoever waits for quiet."""
        if self._quiet is not None and not self.turns and not self.storing:
            self._quiet.set()

    async def quiet(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until no turn is open or being stored."""
        if not self.turns and not self.storing:
            return
        self._quiet = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._quiet.wait()
