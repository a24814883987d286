"""Items as OpenAI's Responses and Conversations APIs spell them, to and from the core's items.

Shared by the Responses and Conversations doors. Input parsing collects a precise error for the
first thing that is wrong (with its JSON path as ``param``, as OpenAI answers) and never trusts a
client's item ids: every stored id is minted.
"""

from __future__ import annotations

from typing import Any

from ..core.items import REFUSAL_PART, Item, mint, text_of
from ..errors import BadRequest

MAX_TEXT = 4 * 1024 * 1024
MAX_ITEMS = 2048
ROLES = ("user", "assistant", "system", "developer")


IMAGE_DETAILS = ("auto", "low", "high", "original")  # OpenAI's, in Responses and Chat Completions alike


def invalid(param: str, detail: str) -> BadRequest:
    return BadRequest("invalid_param", param=param, detail=detail)


def _string(value: Any, param: str, *, allow_empty: bool = True, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise invalid(param, "expected a string")
    if not allow_empty and not value:
        raise invalid(param, "must not be empty")
    if len(value) > limit:
        raise invalid(param, f"longer than {limit} characters")
    return value


def _parts(content: Any, role: str, param: str) -> tuple[str, list[dict[str, Any]] | None]:
    """A message's content as (text, parts): parts is None when the content is just text."""
    if isinstance(content, str):
        return _string(content, param), None
    if not isinstance(content, list) or not content:
        raise invalid(param, "expected a string or a non-empty list of content parts")
    parts: list[dict[str, Any]] = []
    refusals = 0
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise invalid(where, "expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text_type = "output_text" if role == "assistant" else "input_text"
            parts.append({"type": text_type, "text": _string(part.get("text"), where + ".text")})
        elif kind == "refusal" and role == "assistant":
            parts.append({"type": "output_text", "text": _string(part.get("refusal"), where + ".refusal")})
            refusals += 1
        elif kind == "input_image" and role != "assistant":
            url = part.get("image_url")
            if part.get("file_id") is not None and url is None:
                raise invalid(where + ".file_id", "file ids are not supported here: send image_url")
            url = _string(url, where + ".image_url", allow_empty=False)
            if not url.startswith(("http://", "https://", "data:image/")):
                raise invalid(where + ".image_url", "expected an http(s) URL or a data:image/ URL")
            detail = part.get("detail", "auto")
            if detail not in IMAGE_DETAILS:
                raise invalid(where + ".detail", "expected auto, low, high or original")
            parts.append({"type": "input_image", "image_url": url, "detail": detail})
        else:
            raise invalid(where + ".type", f"unsupported content part {str(kind)[:40]!r} for role {role}")
    text = text_of(parts)
    if refusals == len(parts):  # the model's refusal, given back: kept as one (else its words as text)
        return text, [dict(REFUSAL_PART)]
    if len(parts) == 1 and parts[0]["type"] != "input_image":
        return text, None
    return text, parts


def parse_item(raw: Any, param: str) -> Item | str | None:
    """One input item as a new Item; a referenced id (str) for an item_reference; None to skip."""
    if not isinstance(raw, dict):
        raise invalid(param, "expected an object")
    kind = raw.get("type", "message")
    if "type" not in raw and "role" not in raw and "id" in raw:  # the SDK's ItemReference: its type is optional
        kind = "item_reference"
    if kind == "message":
        role = raw.get("role")
        if role not in ROLES:
            raise invalid(param + ".role", "expected user, assistant, system or developer")
        text, parts = _parts(raw.get("content"), role, param + ".content")
        return Item(mint("msg_"), "message", role, text, parts)
    if kind == "function_call":
        call_id = _string(raw.get("call_id"), param + ".call_id", allow_empty=False, limit=256)
        name = _string(raw.get("name"), param + ".name", allow_empty=False, limit=256)
        arguments = _string(raw.get("arguments", ""), param + ".arguments")
        return Item(mint("fc_"), "function_call", "assistant", arguments, call_id=call_id, name=name)
    if kind == "function_call_output":
        call_id = _string(raw.get("call_id"), param + ".call_id", allow_empty=False, limit=256)
        output = raw.get("output")
        if isinstance(output, list):
            text, parts = _parts(output, "user", param + ".output")
            for index, part in enumerate(parts or []):
                if part["type"] == "input_image":  # a chat-completions tool message holds text only
                    raise invalid(f"{param}.output[{index}].type",
                                  "a function_call_output carries text parts only here (input_text)")  # fmt: skip
        else:
            text = _string(output, param + ".output")
        return Item(mint("fco_"), "function_call_output", "tool", text, call_id=call_id)
    if kind == "item_reference":
        return _string(raw.get("id"), param + ".id", allow_empty=False, limit=256)
    if kind == "reasoning":
        return None  # reasoning state belongs to the upstream that made it; chat upstreams take none
    raise invalid(param + ".type", f"unsupported item type {str(kind)[:40]!r}")


def parse_input(value: Any, param: str = "input") -> list[Item | str]:
    if isinstance(value, str):
        return [Item(mint("msg_"), "message", "user", _string(value, param))]
    if not isinstance(value, list):
        raise invalid(param, "expected a string or a list of items")
    if len(value) > MAX_ITEMS:
        raise invalid(param, f"more than {MAX_ITEMS} items")
    out: list[Item | str] = []
    for index, raw in enumerate(value):
        parsed = parse_item(raw, f"{param}[{index}]")
        if parsed is not None:
            out.append(parsed)
    return out


def copy_of(item: Item) -> Item:
    """A referenced item, as a new input item of this turn."""
    prefix = {"function_call": "fc_", "function_call_output": "fco_"}.get(item.kind, "msg_")
    return Item(mint(prefix), item.kind, item.role, item.text, item.parts, item.call_id, item.name)


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def item_json(item: Item, status: str | None = None) -> dict[str, Any]:
    """An item as the Responses and Conversations APIs show it."""
    status = status or item.status
    if item.kind == "function_call":
        return {"id": item.id, "type": "function_call", "status": status, "call_id": item.call_id, "name": item.name,
                "arguments": item.text}  # fmt: skip
    if item.kind == "function_call_output":
        return {"id": item.id, "type": "function_call_output", "status": status, "call_id": item.call_id,
                "output": item.text}  # fmt: skip
    if item.role == "assistant":
        content = [refusal_part(item.text) if item.refusal else output_text(item.text)]
    elif item.parts is not None:
        content = [dict(p) for p in item.parts]
    else:
        content = [{"type": "input_text", "text": item.text}]
    return {"id": item.id, "type": "message", "status": status, "role": item.role, "content": content}
