"""A pure parser for the ChatGPT web backend's reply stream: SSE events in, assistant text out.

Both forms are read:

- classic: every ``data:`` frame carries the whole message so far (cumulative ``parts``);
- ``v1`` delta encoding: JSON-patch-like operations on one growing document; a frame holding only
  ``v`` repeats the previous pointer and operation; ``o: patch`` carries a list of operations;
  frames with a ``type`` are metadata.

The text being written is kept as a list of pieces, so a reply of n characters costs O(n) however it
is split (appending to a str held in a dict would copy it on every frame). Appends to any other string
of the document (metadata, a tool's output) stop at ``MAX_SIDE_TEXT`` characters, which bounds their
copies too.

Total: whatever a frame holds, ``feed`` reads it or raises ``WebReplyError``, a
``BadGateway("upstream_bad_reply")`` naming the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import BadGateway
from .base import label
from .http import scrub
from .sse import SSEEvent

TEXT_POINTER = "/message/content/parts/0"
MAX_SIDE_TEXT = 4096  # appends to strings other than the reply's text stop here
MAX_INDEX_DIGITS = 9  # a list index in a pointer ("/parts/12"); longer runs of digits name nothing


class WebReplyError(BadGateway):
    """The stream reported an error, or a frame could not be read: a 502 naming the host."""

    def __init__(self, detail: str, host: str = "upstream"):
        super().__init__("upstream_bad_reply", host=host, detail=detail)


@dataclass
class WebReplyParser:
    host: str = "upstream"
    secret: str = field(default="", repr=False)  # the request's credential, never repeated in an error
    encoding: str = "classic"
    done: bool = False
    # A stream_handoff frame came: the rest of the reply is only in the conversation, read back (not done
    # here), so what arrived is not the whole reply.
    handed_off: bool = False
    conversation_id: str | None = None
    message_id: str | None = None
    _doc: dict[str, Any] = field(default_factory=dict)
    _pieces: list[str] = field(default_factory=list)
    _pointer: str = ""
    _op: str = "add"

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def feed(self, event: SSEEvent) -> str:
        """Apply one event; return the assistant text it added (often ""). Whatever the frame holds,
        this either reads it or raises WebReplyError."""
        try:
            return self._feed(event)
        except WebReplyError as exc:
            exc.params["host"] = self.host
            raise
        except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as exc:
            raise WebReplyError(f"unreadable frame ({type(exc).__name__})", self.host) from exc

    def _feed(self, event: SSEEvent) -> str:
        if self.done:  # nothing after [DONE] counts, however the bytes happened to arrive
            return ""
        data = event.data.strip()
        if data == "[DONE]":
            self.done = True
            return ""
        if not data:
            return ""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise WebReplyError(f"unreadable frame: {scrub(data[:80], self.secret)!r}") from exc
        if event.event == "delta_encoding":
            self.encoding = value if isinstance(value, str) and len(value) <= 16 else "unknown"
            return ""
        if not isinstance(value, dict):
            return ""
        if value.get("error"):
            raise WebReplyError("the stream reported an error: " + scrub(value["error"], self.secret))
        if "type" in value:  # metadata: title, stream complete, echoed input, ...
            if value["type"] == "error":
                raise WebReplyError("the stream reported an error: " + scrub(value.get("message") or value,
                                                                                 self.secret))  # fmt: skip
            if value["type"] == "stream_handoff":
                self.handed_off = True
            return ""
        if event.event == "delta" or ("v" in value and "message" not in value):
            return self._apply_delta(value)
        return self._classic(value)

    # -- classic ---------------------------------------------------------------------------------
    def _classic(self, frame: dict[str, Any]) -> str:
        self._take_conversation(frame.get("conversation_id"))
        message = frame.get("message")
        if not _is_assistant_text(message):
            return ""
        assert isinstance(message, dict)
        self.message_id = label(message.get("id")) or self.message_id
        return self._set_text(_first_part(message))

    def _take_conversation(self, value: Any) -> None:
        if value is None:
            return
        if label(value) is None:
            raise WebReplyError("conversation_id is not a short string")
        self.conversation_id = value

    def _set_text(self, whole: str) -> str:
        """The text now stands as ``whole``: return what that adds ("" if the backend rewrote it)."""
        old = self.text
        self._pieces[:] = [whole] if whole else []
        return whole[len(old) :] if whole.startswith(old) else ""

    # -- v1 delta encoding -----------------------------------------------------------------------
    def _apply_delta(self, frame: dict[str, Any]) -> str:
        if "p" in frame or "o" in frame:
            pointer, op = frame.get("p", ""), frame.get("o", "add")
            if not isinstance(pointer, str) or not isinstance(op, str):
                raise WebReplyError("a patch pointer or operation is not a string")
        else:  # a bare {"v": ...} repeats the previous pointer and operation
            pointer, op = self._pointer, self._op
        self._pointer, self._op = pointer, op
        return self._operate(pointer, op, frame.get("v"))

    def _operate(self, pointer: str, op: str, value: Any) -> str:
        if op == "patch":
            if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
                raise WebReplyError("a patch is not a list of operations")
            added = []
            for o in value:
                sub_pointer, sub_op = o.get("p", ""), o.get("o", "add")
                if not isinstance(sub_pointer, str) or not isinstance(sub_op, str):
                    raise WebReplyError("a patch pointer or operation is not a string")
                added.append(self._operate(sub_pointer, sub_op, o.get("v")))
            return "".join(added)
        if pointer == TEXT_POINTER and self._assistant():
            if op == "append" and isinstance(value, str):
                self._pieces.append(value)
                return value
            if op == "replace" and isinstance(value, str):
                return self._set_text(value)
        if pointer == "" and op in ("add", "replace"):
            self._doc = value if isinstance(value, dict) else {}
            return self._adopt()
        _apply(self._doc, pointer, op, value)
        if pointer.startswith("/message") and pointer.count("/") <= 1:
            return self._adopt()
        if pointer == "/conversation_id":
            self._take_conversation(value)
        return ""

    def _assistant(self) -> bool:
        return _is_assistant_text(self._doc.get("message"))

    def _adopt(self) -> str:
        """A whole new document or message arrived: take its ids and text; return the text it adds."""
        self._take_conversation(self._doc.get("conversation_id"))
        message = self._doc.get("message")
        if not _is_assistant_text(message):
            return ""
        assert isinstance(message, dict)
        self.message_id = label(message.get("id")) or self.message_id
        return self._set_text(_first_part(message))


def _first_part(message: dict[str, Any]) -> str:
    parts = message["content"].get("parts")
    if parts is None:
        return ""
    if not isinstance(parts, list):
        raise WebReplyError("content.parts is not a list")
    return parts[0] if parts and isinstance(parts[0], str) else ""


def _is_assistant_text(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("author"), dict)
        and message["author"].get("role") == "assistant"
        and isinstance(message.get("content"), dict)
        and message["content"].get("content_type") == "text"
    )


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _apply(doc: dict[str, Any], pointer: str, op: str, value: Any) -> None:
    """Apply one operation to ``doc`` at a JSON pointer; a path that does not exist is ignored."""
    tokens = _tokens(pointer)
    if not tokens:
        return
    parent: Any = doc
    for token in tokens[:-1]:
        parent = _child(parent, token)
        if parent is None:
            return
    last = tokens[-1]
    current = _child(parent, last)
    if op == "append":
        if isinstance(current, str) and isinstance(value, str):
            if len(current) < MAX_SIDE_TEXT:  # past it, the string is left as it stands
                _set(parent, last, (current + value)[:MAX_SIDE_TEXT])
        elif isinstance(current, list):
            current.extend(value if isinstance(value, list) else [value])
        else:
            _set(parent, last, value)
    elif op in ("add", "replace"):
        _set(parent, last, value)
    elif op == "truncate" and isinstance(current, str | list) and isinstance(value, int):
        _set(parent, last, current[:value])
    elif op == "remove":
        if isinstance(parent, dict):
            parent.pop(last, None)
        elif isinstance(parent, list):
            index = _index(last)
            if index is not None and index < len(parent):
                parent.pop(index)


def _index(token: str) -> int | None:
    """A pointer token as a list index: ASCII digits only, and not absurdly many."""
    if token.isascii() and token.isdigit() and len(token) <= MAX_INDEX_DIGITS:
        return int(token)
    return None


def _child(node: Any, token: str) -> Any:
    if isinstance(node, dict):
        return node.get(token)
    if isinstance(node, list):
        index = _index(token)
        if index is not None and index < len(node):
            return node[index]
    return None


def _set(node: Any, token: str, value: Any) -> None:
    if isinstance(node, dict):
        node[token] = value
    elif isinstance(node, list):
        index = len(node) if token == "-" else _index(token)
        if index == len(node):
            node.append(value)
        elif index is not None and index < len(node):
            node[index] = value
