"""The small protocol every upstream speaks, whatever its wire format.

An upstream turns a ``Prompt`` (instructions, the history as stored, the new items, the model and
its parameters) into a request, and gives back a ``Reply`` once the upstream has answered with a
status of success: ``events()`` yields what arrives (text, tool-call pieces, or a sign of life), and
the reply keeps what it assembled (text, tool calls, usage, the upstream's own ids as labels).

Failures are the one error tree's: an upstream never raises anything else out of ``open`` or
``events`` (its parsers map whatever an upstream sends to ``BadGateway("upstream_bad_reply")``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from ..core.items import Item
from ..stores import HistoryRow

MAX_LABEL = 200  # an upstream id longer than this is not kept (it is a label, never a key)
MAX_TOOL_CALLS = 128  # tool calls in one reply: more is a hostile reply, not a model's answer


def label(value: Any) -> str | None:
    """An upstream-given id, kept for show only if it is a short printable string."""
    if isinstance(value, str) and 0 < len(value) <= MAX_LABEL and value.isprintable():
        return value
    return None


_REASON = re.compile(r"[A-Za-z0-9_.:-]{1,40}")


def reason_label(value: Any) -> str | None:
    """An upstream's finish reason, kept only as a short word ("stop", "tool_calls", "end_turn"): it is
    shown to clients, so no line breaks, quotes or anything else an upstream may have put there."""
    return value if isinstance(value, str) and _REASON.fullmatch(value) else None


def is_count(value: Any) -> TypeGuard[int]:
    """An upstream-given number worth keeping: a whole count, not a bool, within JavaScript's safe range."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


@dataclass(frozen=True, slots=True)
class Target:
    """Where a turn goes and with which credential."""

    upstream: str  # "chat" (chat completions), "web" (ChatGPT web, legacy), "codex"
    url: str  # a base URL, the conversation URL, or the Codex base URL
    credential: str
    organization: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    account_id: str | None = None  # Codex: the ChatGPT-Account-Id
    project: str | None = None  # chat: OpenAI-Project, as the client sent it

    @property
    def host(self) -> str:
        from .http import host_of

        return host_of(self.url)


@dataclass(slots=True)
class Prompt:
    model: str
    instructions: str | None
    history: list[HistoryRow]  # oldest first
    inputs: list[Item]
    input_chats: list[bytes]
    params: dict[str, Any] = field(default_factory=dict)  # sampling and other chat-completions fields
    max_output_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None  # function tools, in the Responses API's flat form
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", "name": ...}
    parallel_tool_calls: bool | None = None
    stream: bool = False  # whether the client reads a stream (some upstreams always stream)
    session_id: str = ""
    web_parent: tuple[str, str] | None = None  # web backend: (its conversation id, its message id)
    plain: bool = False  # every history row is a message (known from the history cache): no scan needed


class ToolCall:
    """A tool call of the reply: ``index`` is its place among the reply's tool calls, as its events
    name it. Its arguments arrive in pieces and are kept as a list, joined when read, so a call whose
    arguments come in n pieces costs O(n) (appending to a str attribute would copy it every time)."""

    __slots__ = ("_pieces", "call_id", "index", "name", "upstream_id")

    def __init__(self, index: int, call_id: str, name: str, arguments: str = "", upstream_id: str | None = None):
        self.index = index
        self.call_id = call_id
        self.name = name
        self._pieces: list[str] = [arguments] if arguments else []
        self.upstream_id = upstream_id

    @property
    def arguments(self) -> str:
        pieces = self._pieces
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0] if pieces else ""

    @arguments.setter
    def arguments(self, value: str) -> None:
        self._pieces = [value] if value else []

    def add(self, piece: str) -> None:
        """More argument text."""
        self._pieces.append(piece)

    def mark(self) -> int:
        """Where the arguments are now, for ``cut`` to go back to (no read of them in between)."""
        return len(self._pieces)

    def cut(self, mark: int) -> None:
        del self._pieces[mark:]

    def __repr__(self) -> str:
        return f"ToolCall({self.index}, {self.call_id!r}, {self.name!r}, {self.arguments!r}, {self.upstream_id!r})"


@dataclass(slots=True)
class Event:
    """What arrived: ``text`` added, or a piece of tool call ``index`` (its id and name on the first
    piece, then argument text), or neither (the upstream is alive and working). The core sets
    ``item_id``: the id the tool call's item will be stored under."""

    text: str = ""
    tool_index: int = -1
    tool_id: str | None = None
    tool_name: str | None = None
    arguments: str = ""
    item_id: str | None = None


ALIVE = Event()


class Reply(ABC):
    """An upstream reply whose status was success."""

    host: str = ""
    received: int = 0  # bytes read so far
    truncated: bool = False  # cut at the size cap
    instant: bool = False  # everything already arrived (a whole reply): no waiting, so no timer needed
    created: int | None = None
    _meta: dict[str, Any] | None = None

    @property
    @abstractmethod
    def text(self) -> str:
        """All the text so far."""

    @property
    @abstractmethod
    def complete(self) -> bool:
        """Whether the upstream said the reply is finished."""

    @property
    @abstractmethod
    def usage(self) -> dict[str, Any] | None: ...

    @property
    @abstractmethod
    def upstream_id(self) -> str | None: ...

    @property
    @abstractmethod
    def model(self) -> str | None: ...

    @property
    @abstractmethod
    def finish_reason(self) -> str | None: ...

    @property
    @abstractmethod
    def tool_calls(self) -> list[ToolCall]: ...

    @property
    def meta(self) -> dict[str, Any]:
        """What an upstream adds for the client (rate-limit windows, its own ids)."""
        return self._meta or {}

    @property
    def refusal(self) -> bool:
        """The text is the model declining (chat completions' ``refusal``, a Responses refusal part)."""
        return False

    @abstractmethod
    def events(self) -> AsyncIterator[Event]:
        """What arrives, as it arrives. Ends when the reply is complete; a reply cut after text ends
        with ``complete`` false; failures raise the error tree's errors."""

    @abstractmethod
    async def aclose(self) -> None:
        """Let go of the upstream (closing the connection if the reply did not complete)."""


class ParsedStream(Protocol):
    """What a stream parser keeps as it reads: the text in pieces, and the upstream's labels."""

    pieces: list[str]
    usage: dict[str, Any] | None
    id: str | None
    model: str | None
    refusal: bool


class ParsedReply(Reply):
    """A streamed reply whose parser keeps the text and the labels (chat completions, Codex)."""

    parser: ParsedStream

    @property
    def text(self) -> str:
        """The pieces joined once when asked (and kept joined): linear in the reply."""
        pieces = self.parser.pieces
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]
        return pieces[0] if pieces else ""

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.parser.usage

    @property
    def upstream_id(self) -> str | None:
        return self.parser.id

    @property
    def model(self) -> str | None:
        return self.parser.model

    @property
    def refusal(self) -> bool:
        return self.parser.refusal


class Upstream(Protocol):
    name: str

    async def open(self, prompt: Prompt, target: Target) -> Reply:
        """Send the request and wait for the upstream to start answering; errors before that raise."""
        ...
