"""What a process is doing right now: open turns (for shutdown and /healthz) and, per request, the
facts its access-log line reports (filled in wherever they become known)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ClientGone, ServiceError, ShuttingDown

if TYPE_CHECKING:
    from .turns import OpenTurn


# The scope key of what the server calls when the client leaves before its answer began (App.http sets
# it, the HTTP protocol calls it).
GONE = "chatgpt_server.client_left"
# scope key: the connection's transport (a stream whose client stopped reading is dropped with it)
TRANSPORT = "chatgpt_server.transport"
# scope key: (status, request id) of the answer the HTTP protocol gave a request whose body it refused
REFUSED = "chatgpt_server.refused"


@dataclass(slots=True, eq=False)  # by identity: a member of its Activity's ``stoppable``
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
    # The server's task answering it, while it waits on an upstream or issuer and nothing else (a
    # pass-through, a sign-in): then it may be cancelled when its client leaves or the shutdown's grace
    # period ends. A request that writes to the store never is (a write that landed, told 503, would be
    # repeated by the client's retry).
    task: asyncio.Task[None] | None = None
    stopped: ServiceError | None = None  # why we cancelled it (once at most)
    pool: set[RequestLog] | None = None  # where a stoppable request is found at shutdown (App.http sets it)

    def stoppable(self) -> None:
        """This request only waits on an upstream or issuer from here on: it may be stopped."""
        self.task = asyncio.current_task()
        if self.pool is not None:
            self.pool.add(self)

    def answering(self) -> None:
        """Its handler has returned or raised: what remains is writing the answer, which is not stopped."""
        if self.task is not None:
            self.task = None
            if self.pool is not None:
                self.pool.discard(self)

    def client_left(self) -> None:
        """The client closed the connection before its answer began (the server calls this): the turn
        it waits for is stopped, whatever it was waiting for (a queue, the upstream's head or words),
        and lets go of its conversation; nothing is bought for nobody."""
        self.gone = True
        if self.turn is not None:
            self.turn.abort(ClientGone("client_left"))
        else:
            self._cancel(ClientGone("client_left"))

    def stop(self) -> None:
        """The shutdown's grace period is over: a stoppable request still waiting is answered 503."""
        if self.turn is None:
            self._cancel(ShuttingDown())

    def _cancel(self, why: ServiceError) -> None:
        task = self.task
        if task is None or task.done() or self.stopped is not None:
            return
        self.stopped = why
        task.cancel()

    def stopped_here(self) -> ServiceError | None:
        """Why we cancelled this request, when the cancellation being raised is ours alone (not also the
        server's own forced stop): it is taken back, and the request answered with that error."""
        task = self.task
        if self.stopped is None or task is None or task.cancelling() != 1:
            return None
        task.uncancel()
        return self.stopped


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
    stoppable: set[RequestLog] = field(default_factory=set)  # requests that wait on an upstream or issuer
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
