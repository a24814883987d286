"""The one item model every door and every upstream speaks, and the ids we mint for it.

A conversation is a tree of items. An item is a message (a role and its parts: text, images), a
function call the model made, or the output a client sent back for one. Every id that is stored is
minted here: an upstream's ids are labels kept in ``meta``, never keys (Ollama, for one, repeats
them within a few dozen replies).

Each item also carries its chat-completions form, encoded once when the item is made (``chat``), so
building an upstream request from a long history is a join of bytes.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .tokens import PER_MESSAGE, count

Kind = Literal["message", "function_call", "function_call_output"]
ROLES = ("user", "assistant", "system", "developer")
IMAGE_COST = 765  # a high-detail 512x512 image, as OpenAI prices one; an estimate for any image
# The parts of an assistant message that is a refusal (its text is the refusal's): a marker, kept with
# the item, so every door shows it as one (Responses: a ``refusal`` content part).
REFUSAL_PART: dict[str, Any] = {"type": "refusal"}


# Ids need to be unique, not secret: every lookup is also checked against its owner, so knowing an id
# grants nothing. A generator seeded from the OS (again in every forked child) gives 128 random bits
# for a fraction of a system call to os.urandom per id, which a turn would otherwise make four times.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def random_hex(bits: int) -> str:
    return f"{_random.getrandbits(bits):0{bits // 4}x}"


def mint(prefix: str) -> str:
    """A new id: ``prefix`` and 128 bits, the first 48 the time in milliseconds, then 80 random ones
    (``uuid`` gives a UUID of version 7, the same layout in the UUID form the original used).

    Ids that grow with time land at the end of the store's indexes instead of anywhere in them: a
    write then touches the same few pages as the writes just before it, which keeps SQLite's WAL (and
    so its checkpoints) several times smaller, as llm's ULIDs do."""
    stamp = time.time_ns() // 1_000_000
    if prefix == "uuid":
        bits = (stamp << 80) | _random.getrandbits(80)
        bits = (bits & ~(0xF << 76)) | (0x7 << 76)  # version 7
        bits = (bits & ~(0x3 << 62)) | (0x2 << 62)  # the RFC 4122 variant
        return str(uuid.UUID(int=bits))
    return f"{prefix}{stamp:012x}{_random.getrandbits(80):020x}"


_HEX = frozenset("0123456789abcdef")


MINTED_SINCE_MS = 1_735_689_600_000  # 2025-01-01: no id of ours is older
# The prefixes ``mint`` is called with for items (a UUID's form aside): an id with another is not ours.
_PREFIXES = ("msg_", "chatcmpl-", "fc_", "fco_", "call_")


def minted_at(item_id: str) -> float | None:
    """When ``mint`` made this id (epoch seconds, to the millisecond), read from the id itself; None for
    an id it did not make (a store's older data: the original's random UUIDs, an upstream's ids)."""
    if len(item_id) == 36 and item_id[8] == "-" and item_id[13] == "-":
        digits = item_id.replace("-", "")
        if digits[12] != "7":  # a UUID of another version: not ours
            return None
    elif item_id.startswith(_PREFIXES):
        digits = item_id[-32:]
    else:
        return None
    if len(digits) != 32 or not _HEX.issuperset(digits):
        return None
    stamp = int(digits[:12], 16)
    if not MINTED_SINCE_MS <= stamp <= time.time_ns() // 1_000_000 + 86_400_000:
        return None
    return stamp / 1000


@dataclass(slots=True)
class Item:
    """A neutral item. ``text`` is a message's text (its text parts joined), a call's arguments, or an
    output's text; ``parts`` holds a message's parts when they are not just one text."""

    id: str
    kind: str = "message"
    role: str = "user"
    text: str = ""
    parts: list[dict[str, Any]] | None = None
    call_id: str | None = None
    name: str | None = None
    status: str = "completed"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def refusal(self) -> bool:
        """An assistant message that is the model declining: its text is the refusal."""
        return self.parts is not None and self.parts[:1] == [REFUSAL_PART]

    def extra(self) -> dict[str, Any] | None:
        """What the stored row keeps beyond kind, role and text (None for a plain text message)."""
        out: dict[str, Any] = {}
        if self.parts is not None:
            out["parts"] = self.parts
        if self.call_id is not None:
            out["call_id"] = self.call_id
        if self.name is not None:
            out["name"] = self.name
        if self.meta:
            out["meta"] = self.meta
        return out or None

    @classmethod
    def from_row(cls, id: str, kind: str, role: str, text: str, extra: dict[str, Any] | None, status: str) -> Item:
        extra = extra or {}
        return cls(
            id, kind, role, text, extra.get("parts"), extra.get("call_id"), extra.get("name"), status,
            extra.get("meta") or {},
        )  # fmt: skip

    # -- the chat-completions form -------------------------------------------------------------
    def chat(self) -> bytes:
        """This item as chat-completions JSON: a message, or (for a function call) one entry of an
        assistant message's ``tool_calls``, which ``chat_messages`` groups."""
        if self.kind == "function_call":
            call = {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.text}}
            return orjson.dumps(call)
        if self.kind == "function_call_output":
            return orjson.dumps({"role": "tool", "tool_call_id": self.call_id, "content": self.text})
        if self.parts is None or self.role == "assistant":  # an assistant's parts: its text (or refusal)
            return orjson.dumps({"role": self.role, "content": self.text})
        return orjson.dumps({"role": self.role, "content": [_chat_part(p) for p in self.parts]})

    def cost(self, encoding: str) -> int:
        """What this item costs in a prompt, counted with ``encoding`` (images estimated)."""
        if self.kind == "function_call":
            return PER_MESSAGE + count(self.name or "", encoding) + count(self.text, encoding) + 3
        base = PER_MESSAGE + count(self.text, encoding)
        if self.parts:
            base += IMAGE_COST * sum(1 for p in self.parts if p.get("type") == "input_image")
        return max(base, 1)


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "input_image":
        image: dict[str, Any] = {"url": part.get("image_url")}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    return {"type": "text", "text": part.get("text", "")}


def text_of(parts: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in parts if p.get("type") in ("input_text", "output_text", "text"))


ASSISTANT_CHAT = b'{"role":"assistant"'  # how a stored assistant message's chat JSON begins
_ASSISTANT_TEXT = ASSISTANT_CHAT + b',"content":"'


def chat_messages(items: list[tuple[str, bytes]]) -> list[bytes]:
    """(kind, chat JSON) pairs, oldest first, as the ``messages`` of a chat-completions request.

    Plain messages pass through as they are; consecutive function calls become one assistant
    message whose ``tool_calls`` lists them, as chat completions wants every tool message to follow
    the assistant message that called it. The assistant's text around the calls goes in that message
    too: the text just before them, and text the model said after them (a streamed reply may) when
    the calls' outputs follow it, where a message of its own would stand between call and output.
    """
    out: list[bytes] = []
    i, n = 0, len(items)
    while i < n:
        kind, chat = items[i]
        if kind != "function_call":
            out.append(chat)
            i += 1
            continue
        texts: list[str] = []
        if out and out[-1].startswith(_ASSISTANT_TEXT):
            texts.append(orjson.loads(out.pop())["content"])
        calls: list[bytes] = []
        while i < n:
            kind, chat = items[i]
            if kind == "function_call":
                calls.append(chat)
            elif (chat.startswith(_ASSISTANT_TEXT) and i + 1 < n
                  and items[i + 1][0] in ("function_call", "function_call_output")):  # fmt: skip
                texts.append(orjson.loads(chat)["content"])
            else:
                break
            i += 1
        content = orjson.dumps("".join(texts)) if texts else b"null"
        out.append(b'{"role":"assistant","content":' + content + b',"tool_calls":[' + b",".join(calls) + b"]}")
        i = _outputs_first(items, i, calls, out)
    return out


def _outputs_first(items: list[tuple[str, bytes]], i: int, calls: list[bytes], out: list[bytes]) -> int:
    """The calls' outputs right after the calling message, as chat completions requires, even where the
    client put a message before them (Responses input may say ``[message, function_call_output]``): such
    messages follow the outputs. Returns where the scan stopped."""
    waiting = {orjson.loads(call).get("id") for call in calls}
    held: list[bytes] = []
    n = len(items)
    while i < n and waiting:
        kind, chat = items[i]
        if kind == "function_call_output":
            waiting.discard(orjson.loads(chat).get("tool_call_id"))
            out.append(chat)
        elif kind == "message" and not chat.startswith(ASSISTANT_CHAT):
            held.append(chat)
        else:
            break
        i += 1
    out.extend(held)
    return i
