"""A streamed reply read as server-sent events, within the reply's byte cap: the one loop that chat
completions and Codex replies share (their parsers differ, the reading does not)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ..errors import BadGateway
from .base import Event, ParsedReply, ParsedStream
from .http import TRANSPORT_ERRORS, Answer, finish_response, transport_error, under_limit
from .sse import SSEDecoder, SSEEvent


class EventParser(ParsedStream, Protocol):
    done: bool  # the upstream said the reply is finished

    def step(self, event: SSEEvent) -> list[Event]:
        """What one event adds; a malformed event raises the error tree's BadGateway."""
        ...

    def end(self) -> None:
        """The body ended: ``done`` if what arrived is a whole reply all the same."""
        ...


class StreamedReply(ParsedReply):
    parser: EventParser
    response: Answer
    limit: int
    unfinished = "the stream ended before its end"  # the error's detail when it stops short

    async def events(self) -> AsyncIterator[Event]:
        decoder = SSEDecoder()
        step = self.parser.step
        try:
            async for chunk in self.response.content.iter_any():
                self.received += len(chunk)
                over = self.received > self.limit
                for event in decoder.feed(under_limit(chunk, self.received, self.limit) if over else chunk):
                    for out in step(event):
                        yield out
                if self.parser.done:
                    return
                if over:  # cut at the cap: what arrived before it stands
                    self.truncated = True
                    return
            for event in decoder.flush():
                for out in step(event):
                    yield out
            self.parser.end()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.host, 0, idle=True) from exc
        if not self.parser.done:
            raise BadGateway("upstream_bad_reply", host=self.host, detail=self.unfinished)

    async def aclose(self) -> None:
        finish_response(self.response, complete=self.parser.done)
