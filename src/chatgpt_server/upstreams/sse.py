"""Pure, incremental parsers for server-sent events. No I/O: feed bytes, get events.

``SSEDecoder.feed(chunk)`` returns the events completed by that chunk, whatever the chunk boundaries
(a line, a CRLF pair or a UTF-8 character may be split across chunks). Work is linear in the input:
each byte is scanned once.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


class LineDecoder:
    """Bytes in, complete lines out; accepts \\n, \\r\\n and \\r endings (and only those), and drops
    one leading byte order mark (U+FEFF), as the event-stream rules say."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # pieces of an unfinished line, joined once it ends
        self._trailing_cr = False
        self._started = False  # whether any text came yet (a leading byte order mark is dropped)

    def feed(self, chunk: bytes) -> list[str]:
        text = self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._trailing_cr and text:
            # A \r ended the last chunk: a \n starting this one is the same line break.
            self._trailing_cr = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        parts = _NEWLINE.split(text)
        if len(parts) == 1:
            self._pending.append(text)
            return []
        lines = ["".join(self._pending) + parts[0], *parts[1:-1]]
        self._pending = [parts[-1]] if parts[-1] else []
        self._trailing_cr = text.endswith("\r")
        return lines

    def flush(self) -> list[str]:
        rest = "".join(self._pending) + self._text.decode(b"", final=True)
        self._pending = []
        return [rest] if rest else []


class SSEDecoder:
    """Lines in, events out, following the WHATWG event-stream rules (data lines joined by \\n)."""

    def __init__(self) -> None:
        self._lines = LineDecoder()
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._take(self._lines.feed(chunk))

    def flush(self) -> list[SSEEvent]:
        events = self._take(self._lines.flush())
        if self._data:  # a stream that ended without the final blank line
            events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
        return events

    def _take(self, lines: list[str]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
        return events
