"""The Codex backend (upstreams.md §4): a ChatGPT account, spoken to in the Responses API's shape.

The backend keeps nothing for us (``store`` must be false), so every request carries the whole
history, from our own store, in ``input``. Only the keys the backend accepts are sent: it refuses
``temperature``, ``max_output_tokens`` and the like. Its stream is parsed by ``CodexParser``, pure and
total: any frame is read or becomes ``BadGateway("upstream_bad_reply")``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from .. import __version__
from ..core.items import mint
from ..errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    NotFound,
    ServiceError,
    TooManyRequests,
    Unauthorized,
)
from .base import ALIVE, MAX_TOOL_CALLS, Event, Prompt, Reply, Target, ToolCall, is_count, label
from .chat_completions import arguments_text
from .http import (
    TRANSPORT_ERRORS,
    Answer,
    HTTPClient,
    post,
    read_error,
    retry_after,
    scrub,
    transport_error,
)
from .sse import SSEEvent
from .streamed import StreamedReply

ORIGINATOR = "chatgpt_server"
USER_AGENT = f"chatgpt-server/{__version__}"
# Headers the protocol sets: a client's own of the same name (any spelling) gives way.
# Compared with "_" read as "-": many servers take session_id and Session-Id for one header.
OWN_HEADERS = frozenset({"authorization", "content-type", "accept", "originator", "user-agent", "chatgpt-account-id",
                         "session-id"})  # fmt: skip
_PARSE_ERRORS = (orjson.JSONDecodeError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError)
RATE_HEADERS = {
    "x-codex-primary-used-percent": "primaryUsedPercent",
    "x-codex-primary-window-minutes": "primaryWindowMinutes",
    "x-codex-primary-reset-at": "primaryResetAt",
    "x-codex-primary-reset-after-seconds": "primaryResetAfterSeconds",
    "x-codex-secondary-used-percent": "secondaryUsedPercent",
    "x-codex-secondary-window-minutes": "secondaryWindowMinutes",
    "x-codex-secondary-reset-at": "secondaryResetAt",
    "x-codex-secondary-reset-after-seconds": "secondaryResetAfterSeconds",
    "x-codex-credits-balance": "creditsBalance",
}


def _bad(host: str, detail: str) -> BadGateway:
    return BadGateway("upstream_bad_reply", host=host, detail=detail)


# -- the request ---------------------------------------------------------------------------------
def input_item(kind: str, chat: bytes) -> dict[str, Any]:
    """A stored item's chat-completions JSON as a Responses input item."""
    value = orjson.loads(chat)
    if kind == "function_call":
        function = value.get("function") or {}
        return {"type": "function_call", "call_id": value.get("id"), "name": function.get("name"),
                "arguments": function.get("arguments") or ""}  # fmt: skip
    if kind == "function_call_output":
        return {"type": "function_call_output", "call_id": value.get("tool_call_id"), "output": value.get("content")}
    role = value.get("role", "user")
    text_type = "output_text" if role == "assistant" else "input_text"
    content = value.get("content")
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": text_type, "text": content}]
    else:
        parts = []
        for part in content or []:
            if part.get("type") == "image_url":
                image = part.get("image_url") or {}
                parts.append(
                    {"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail", "auto")}
                )
            else:
                parts.append({"type": text_type, "text": part.get("text", "")})
    return {"type": "message", "role": role, "content": parts}


def build_body(prompt: Prompt, instructions: str) -> dict[str, Any]:
    items = [input_item(row[1], row[2]) for row in prompt.history]
    items += [input_item(item.kind, chat) for item, chat in zip(prompt.inputs, prompt.input_chats, strict=True)]
    tools = [{"type": "function", **{k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}}
             for t in prompt.tools or []]  # fmt: skip
    choice = prompt.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        # The backend takes auto, none, required or one function (upstreams.md): the allowed tools are the
        # ones sent, chosen among by the mode (the calls earlier turns made still read from the history).
        allowed = {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)}
        tools = [t for t in tools if t["name"] in allowed]
        choice = choice.get("mode", "auto")
    body: dict[str, Any] = {
        "model": prompt.model,
        "instructions": instructions,
        "input": items,
        "store": False,
        "stream": True,
        "tools": tools,
        "tool_choice": choice if tools and choice is not None else "auto",
        "parallel_tool_calls": bool(prompt.parallel_tool_calls) if tools else False,
    }
    if prompt.session_id:
        body["prompt_cache_key"] = prompt.session_id
    for name in ("text", "reasoning"):  # a structured-output format, a reasoning effort (Responses' own shapes)
        if isinstance(prompt.params.get(name), dict):
            body[name] = prompt.params[name]
    return body


def rate_limits(headers: Any) -> dict[str, Any]:
    """The plan's usage windows from the response headers, numbers only."""
    out: dict[str, Any] = {}
    for header, name in RATE_HEADERS.items():
        value = headers.get(header)
        if not isinstance(value, str) or len(value) > 32:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if number == number and abs(number) < 1e15:  # not NaN, not huge
            out[name] = int(number) if number.is_integer() else number
    return out


def _error_fields(raw: bytes) -> tuple[str, str, dict[str, Any]]:
    """(code or type, message, the error object) of an error body in either shape the backend uses."""
    try:
        parsed = orjson.loads(raw)
    except _PARSE_ERRORS:
        return "", raw.decode("utf-8", "replace"), {}  # scrub cuts it, never inside a credential
    if not isinstance(parsed, dict):
        return "", "", {}
    error = parsed.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or ""
        message = error.get("message") or ""
        return (code if isinstance(code, str) else "", message if isinstance(message, str) else "", error)
    detail = parsed.get("detail") if isinstance(parsed.get("detail"), str) else ""
    return (error if isinstance(error, str) else "", detail or "", parsed)


def _retry_seconds(error: dict[str, Any]) -> int | None:
    seconds = error.get("resets_in_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 <= seconds < 10**8:
        return int(seconds)
    at = error.get("resets_at")
    if isinstance(at, int | float) and not isinstance(at, bool) and 0 < at < 10**11:
        return max(0, int(at - time.time()))
    return None


def codex_error(status: int, code: str, message: str, error: dict[str, Any], host: str, token: str,
                retry: str | None = None) -> ServiceError:  # fmt: skip
    """``retry``: the backend's Retry-After header, passed on (when it is seconds or a date) where
    the error's own fields do not say when to try again."""
    detail = scrub(message or code or f"HTTP {status}", token)
    plan = error.get("plan_type") if isinstance(error.get("plan_type"), str) else ""
    plan = scrub(plan, token, limit=20) or "ChatGPT"  # "the ChatGPT plan" when the backend names none
    # The backend's own code and the field it named (scrubbed, short), as the chat door passes them on:
    # OpenAI's SDK users branch on them.
    own = scrub(code, token, limit=60)
    param = error.get("param")
    named: dict[str, Any] = {"param": scrub(param, token, limit=80)} if isinstance(param, str) and param else {}
    if code == "usage_limit_reached":
        seconds = _retry_seconds(error)
        headers = {"Retry-After": str(seconds)} if seconds is not None else retry_after(retry)
        return TooManyRequests("usage_limit", headers=headers, host=host, plan=plan, code="rate_limit_exceeded",
                               seconds=seconds if seconds is not None else "?")  # fmt: skip
    if code == "usage_not_included":
        return Forbidden("usage_not_included", host=host, plan=plan)
    if code == "context_length_exceeded":
        return BadRequest("upstream_bad_request", host=host, detail=detail, code=code, **named)
    if code == "insufficient_quota":
        return TooManyRequests("upstream_quota", host=host, detail=detail, code=code)
    if status == 401:
        return Unauthorized("upstream_unauthorized", host=host, detail=own or "token rejected",
                            code=own or "invalid_api_key")  # fmt: skip
    if status == 403:
        return Forbidden("upstream_forbidden", host=host, detail=detail, code=own or "upstream_forbidden")
    if status == 429 or code == "rate_limit_exceeded":  # a stream's failure keeps its meaning too
        return TooManyRequests("upstream_rate_limited", headers=retry_after(retry), host=host, detail=detail,
                               code=own or "rate_limit_exceeded")  # fmt: skip
    if status == 404:  # an unknown model, as OpenAI answers it: NotFoundError in the SDK
        return NotFound("upstream_not_found", host=host, detail=detail, code=own or "not_found", **named)
    if 400 <= status < 500:
        return BadRequest("upstream_bad_request", host=host, detail=detail, code=own or "upstream_bad_request",
                          **named)  # fmt: skip
    if status == 503:  # an upstream's 5xx is a 502, as in mode 1; 503 means our store or a shutdown
        return BadGateway("upstream_overloaded", headers=retry_after(retry), host=host, detail=detail)
    if status == 200:  # a failure the stream reported, in none of the forms named above
        return BadGateway("upstream_bad_reply", host=host, detail="the stream reported an error: " + detail)
    return BadGateway("upstream_error", host=host, status=status, detail=detail)


# -- the stream ----------------------------------------------------------------------------------
class CodexParser:
    """Pure: Responses stream events (name and data) in, events out."""

    def __init__(self, host: str, token: str):
        self.host, self.token = host, token
        self.done = False
        self.incomplete = False
        self.incomplete_reason: str | None = None  # the backend's incomplete_details.reason
        self.id: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.pieces: list[str] = []
        self.refusal = False
        # The message items whose text came as deltas: by id (None: one unnamed) and by ("at", output index).
        self._spoken: set[Any] = set()
        self.calls: dict[str, ToolCall] = {}  # by the backend's item id
        self._order: list[str] = []

    def step(self, event: SSEEvent) -> list[Event]:
        return self.feed(event.event, event.data)

    def end(self) -> None:
        """Only ``response.completed`` (or ``.incomplete``) ends a reply: a body that stops before it is cut."""

    def feed(self, name: str, data: str) -> list[Event]:
        """One event. An event refused is refused whole: none of it is kept (its client is told none of
        it, and a failed reply is stored as it was told)."""
        pieces, calls, refusal, done = len(self.pieces), len(self._order), self.refusal, self.done
        try:
            return self._feed(name, data)
        except BadGateway:
            self._undo(pieces, calls, refusal, done)
            raise
        except ServiceError:
            raise
        except _PARSE_ERRORS as exc:
            self._undo(pieces, calls, refusal, done)
            raise _bad(self.host, f"unreadable event ({type(exc).__name__})") from exc

    def _undo(self, pieces: int, calls: int, refusal: bool, done: bool) -> None:
        del self.pieces[pieces:]
        for key in self._order[calls:]:
            del self.calls[key]
        del self._order[calls:]
        self.refusal, self.done = refusal, done

    def _feed(self, name: str, data: str) -> list[Event]:
        if self.done:  # nothing after the response completed counts
            return []
        if data.strip() == "[DONE]":
            return []
        event = orjson.loads(data)
        if not isinstance(event, dict):
            raise _bad(self.host, "an event is not an object")
        kind = event.get("type", name)
        if not isinstance(kind, str):
            raise _bad(self.host, "an event type is not a string")
        if kind in ("response.output_text.delta", "response.refusal.delta"):  # a refusal is the reply's text
            delta = event.get("delta")
            if not isinstance(delta, str):
                raise _bad(self.host, f"{kind[9:]} carries no text")
            if delta:
                self.refusal = self.refusal or kind == "response.refusal.delta"
                item_id = event.get("item_id")
                self._spoken.add(item_id if isinstance(item_id, str) else None)
                if is_count(event.get("output_index")):
                    self._spoken.add(("at", event["output_index"]))
                self.pieces.append(delta)
                return [Event(delta)]
            return [ALIVE]
        if kind == "response.output_item.added":
            return self._item_added(event.get("item"))
        if kind == "response.function_call_arguments.delta":
            item_id = event.get("item_id")
            call = self.calls.get(item_id) if isinstance(item_id, str) else None
            delta = event.get("delta")
            if call is None or not isinstance(delta, str):
                raise _bad(self.host, "function call arguments for an unknown call")
            call.add(delta)
            return [Event(tool_index=call.index, arguments=delta)]
        if kind == "response.output_item.done":
            return self._item_done(event.get("item"), event.get("output_index"))
        if kind in ("response.created", "response.in_progress"):
            response = event.get("response")
            if isinstance(response, dict):
                self.id = self.id or label(response.get("id"))
                self.model = self.model or label(response.get("model"))
            return [ALIVE]
        if kind == "response.completed":
            return self._finish(event.get("response"))
        if kind == "response.incomplete":
            self.incomplete = True
            response = event.get("response")
            details = response.get("incomplete_details") if isinstance(response, dict) else None
            reason = details.get("reason") if isinstance(details, dict) else None
            self.incomplete_reason = reason if isinstance(reason, str) else None
            return self._finish(response)
        if kind == "response.failed":
            response = event.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            self._raise(error if isinstance(error, dict) else {})
        if kind == "error":
            error = event.get("error")
            self._raise(error if isinstance(error, dict) else event)
        return [ALIVE]  # reasoning, rate limits and whatever comes next: alive, nothing to keep

    def _raise(self, error: dict[str, Any]) -> None:
        code = error.get("code") or error.get("type") or ""
        message = error.get("message") or ""
        raise codex_error(200, code if isinstance(code, str) else "", message if isinstance(message, str) else "",
                          error, self.host, self.token)  # fmt: skip

    def _item_added(self, item: Any) -> list[Event]:
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return [ALIVE]
        name = item.get("name")
        key = _item_key(item) or f"#{len(self._order)}"
        if not isinstance(name, str) or not name or key in self.calls:
            raise _bad(self.host, "a function call without a name")
        if len(self._order) >= MAX_TOOL_CALLS:
            raise _bad(self.host, f"more than {MAX_TOOL_CALLS} tool calls")
        call = ToolCall(len(self._order), mint("call_"), name[:256], "", label(item.get("call_id")))
        self.calls[key] = call
        self._order.append(key)
        events = [Event(tool_index=call.index, tool_id=call.call_id, tool_name=call.name)]
        return events + self._arguments(call, item.get("arguments"))

    def _arguments(self, call: ToolCall, value: Any) -> list[Event]:
        """Arguments a call's item carries whole (a JSON value given as its text, as on every door), for
        a call whose arguments came as no deltas."""
        if value is None or value == "" or call.arguments:
            return []
        text = arguments_text(value)
        if text is None:
            raise _bad(self.host, "a function call's arguments are not JSON we can read")
        call.arguments = text
        return [Event(tool_index=call.index, arguments=text)]

    def _item_done(self, item: Any, output_index: Any = None) -> list[Event]:
        if isinstance(item, dict) and item.get("type") == "message":
            item_id = item.get("id") if isinstance(item.get("id"), str) else None
            spoken = self._spoken & {item_id, None, ("at", output_index) if is_count(output_index) else None}
            # Nothing tells it from the deltas' item: it has no id and no place, or the deltas gave none.
            placed = any(isinstance(told, tuple) for told in self._spoken)
            unplaced = item_id is None and (not is_count(output_index) or not placed)
            if spoken or (self._spoken and unplaced):  # its deltas came: told once
                return [ALIVE]
            return self._whole(item)
        if not isinstance(item, dict) or item.get("type") != "function_call":
            return [ALIVE]
        key = _item_key(item)
        call = self.calls.get(key) if key is not None else None
        if call is None:  # a call told only when done (no .added came for it): a call all the same
            return self._item_added(item)
        return self._arguments(call, item.get("arguments")) or [ALIVE]

    def _whole(self, item: dict[str, Any]) -> list[Event]:
        """A message told whole, without deltas (a server may): its text is the reply's. Its parts are
        text (``output_text``, or a chat-style ``text``) or a refusal; anything else is refused, never
        read as an empty reply."""
        content = item.get("content")
        if content is None:
            return [ALIVE]
        if not isinstance(content, list):
            raise _bad(self.host, "a message's content is not a list of parts")
        texts: list[str] = []
        refused: list[bool] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            field = "refusal" if kind == "refusal" else "text" if kind in ("output_text", "text") else None
            text = part.get(field) if field and isinstance(part, dict) else None
            if not isinstance(text, str):
                raise _bad(self.host, "a message part is not text")
            if text:
                texts.append(text)
                refused.append(kind == "refusal")
        if not texts:
            return [ALIVE]
        self.refusal = all(refused)
        text = "".join(texts)
        self.pieces.append(text)
        return [Event(text)]

    def _finish(self, response: Any) -> list[Event]:
        self.done = True
        if not isinstance(response, dict):
            return [ALIVE]
        self.id = self.id or label(response.get("id"))
        events: list[Event] = []
        output = response.get("output")
        if not self.pieces and not self.calls and isinstance(output, list):
            # Nothing came as events: a server that gives the reply only in the finished response.
            for item in output:
                if isinstance(item, dict) and item.get("type") == "message":
                    events += [e for e in self._whole(item) if e is not ALIVE]
                elif isinstance(item, dict) and item.get("type") == "function_call":
                    events += [e for e in self._item_added(item) if e is not ALIVE]
        self._usage(response)
        return events or [ALIVE]

    def _usage(self, response: dict[str, Any]) -> None:
        usage = response.get("usage")
        if isinstance(usage, dict):
            numbers = {k: usage.get(k) for k in ("input_tokens", "output_tokens", "total_tokens")}
            if all(is_count(v) for v in numbers.values()):
                self.usage = {"prompt_tokens": numbers["input_tokens"], "completion_tokens": numbers["output_tokens"],
                              "total_tokens": numbers["total_tokens"]}  # fmt: skip
                for ours, theirs, name in (("prompt_tokens_details", "input_tokens_details", "cached_tokens"),
                                           ("completion_tokens_details", "output_tokens_details",
                                            "reasoning_tokens")):  # fmt: skip
                    details = usage.get(theirs)
                    count = details.get(name) if isinstance(details, dict) else None
                    if is_count(count):
                        self.usage[ours] = {name: count}

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self.calls[k] for k in self._order]


def _item_key(item: dict[str, Any]) -> str | None:
    """The backend's id of an output item (its ``id``, else its ``call_id``), if it is a string."""
    for name in ("id", "call_id"):
        value = item.get(name)
        if isinstance(value, str) and value:
            return value
    return None


class CodexReply(StreamedReply):
    parser: CodexParser
    unfinished = "the stream ended before response.completed"

    def __init__(self, host: str, response: Answer, token: str, limit: int, meta: dict[str, Any]):
        self.host = host
        self.response = response
        self.limit = limit
        self.parser = CodexParser(host, token)
        self._meta = meta

    @property
    def complete(self) -> bool:
        return self.parser.done  # incomplete too: the backend ended it and said why (finish_reason)

    @property
    def finish_reason(self) -> str | None:
        if self.parser.incomplete:
            return "content_filter" if self.parser.incomplete_reason == "content_filter" else "length"
        return "tool_calls" if self.parser.calls else ("stop" if self.parser.done else None)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.parser.tool_calls


class Codex:
    """The upstream: POST {CODEX_URL}/responses with a ChatGPT account's access token."""

    name = "codex"

    def __init__(self, http: HTTPClient, max_reply_bytes: int, default_instructions: Callable[[], str]):
        self.http = http
        self.limit = max_reply_bytes
        self.default_instructions = default_instructions  # today's: the text holds the date

    async def open(self, prompt: Prompt, target: Target) -> Reply:
        host = target.host
        body = build_body(prompt, prompt.instructions or self.default_instructions())
        # The client's extra headers (mode 2's ``headers``, already checked), under the protocol's own.
        headers = {name: value for name, value in target.headers if name.lower().replace("_", "-") not in OWN_HEADERS}
        headers |= {
            "Authorization": f"Bearer {target.credential}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "originator": ORIGINATOR,
            "User-Agent": USER_AGENT,
        }
        if target.account_id:
            headers["ChatGPT-Account-Id"] = target.account_id
        if prompt.session_id:
            headers["session_id"] = prompt.session_id
        response = await post(self.http, target.url + "/responses", orjson.dumps(body), headers, host)
        try:
            if response.status != 200:
                raw = await read_error(response)
                code, message, error = _error_fields(raw)
                raise codex_error(response.status, code, message, error, host, target.credential,
                                  response.headers.get("Retry-After"))  # fmt: skip
            if "event-stream" not in response.headers.get("Content-Type", ""):
                raise _bad(host, "the answer is not an event stream")
        except BaseException as exc:
            response.release()
            if isinstance(exc, TRANSPORT_ERRORS):
                raise transport_error(exc, host, 0) from exc
            raise
        return CodexReply(host, response, target.credential, self.limit, {"rateLimits": rate_limits(response.headers)})
