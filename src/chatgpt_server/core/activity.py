"""What a process is doing right now: open turns (for shutdown and /healthz) and, per request, the
facts its access-log line reports (filled in wherever they become known)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .turns import OpenTurn


@dataclass(slots=True)
class RequestLog:
    route: str = ""
    upstream: str = ""
    upstream_ms: float = 0.0
    store_ms: float = 0.0
    outcome: str = ""
    message: str = ""


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
    open_streams: int = 0
