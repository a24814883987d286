"""The chat-completions protocol (upstreams.md §1): OpenAI and every server that speaks it.

The request body is built by joining bytes: each stored item keeps its chat-completions JSON, so a
long history costs a join, not an encode per message. Replies, whole or streamed, go through pure
parsers that accept any JSON at all and either find a reply in it or raise
``BadGateway("upstream_bad_reply")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from operator import itemgetter
from typing import Any

import orjson

from ..core.items import chat_messages, mint
from ..core.tokens import uses_max_completion_tokens
from ..errors import BadGateway, BadRequest, Forbidden, NotFound, ServiceError, TooManyRequests, Unauthorized
from .base import ALIVE, MAX_TOOL_CALLS, Event, Prompt, Reply, Target, ToolCall, is_count, label, reason_label
from .http import (
    TRANSPORT_ERRORS,
    Answer,
    HTTPClient,
    finish_response,
    post,
    read_error,
    read_limited,
    retry_after,
    scrub,
    transport_error,
)
from .sse import SSEDecoder, SSEEvent
from .streamed import StreamedReply

_JSON_ERRORS = (orjson.JSONDecodeError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError)


def _bad(host: str, detail: str) -> BadGateway:
    return BadGateway("upstream_bad_reply", host=host, detail=detail)


def timestamp(value: Any) -> int | None:
    """A ``created`` time worth showing: whole seconds, not a bool, within JavaScript's safe range."""
    return value if is_count(value) else None


def arguments_text(value: Any) -> str | None:
    """A tool call's arguments as text: a string as it is, any other JSON value encoded (None if it
    cannot be: nested deeper than the encoder goes)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return None


# -- the request ---------------------------------------------------------------------------------
def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Function tools in the Responses API's flat form, as chat completions nests them."""
    out = []
    for tool in tools:
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    """A Responses API tool choice as chat completions nests it."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools = [{"type": "function", "function": {"name": t["name"]}} for t in choice["tools"]]
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice["mode"], "tools": tools}}
    return choice


_KIND, _CHAT = itemgetter(1), itemgetter(2)
# OpenAI refuses both at once (400 invalid_parameter_combination): one given by the client is the limit.
_LIMITS = frozenset(("max_tokens", "max_completion_tokens"))


def build_body(prompt: Prompt) -> bytes:
    fields: dict[str, Any] = {"model": prompt.model, **prompt.params}
    if prompt.max_output_tokens is not None and not _LIMITS & fields.keys():  # a client's own limit stands
        name = "max_completion_tokens" if uses_max_completion_tokens(prompt.model) else "max_tokens"
        fields[name] = prompt.max_output_tokens
    history = prompt.history
    inputs = [(item.kind, chat) for item, chat in zip(prompt.inputs, prompt.input_chats, strict=True)]
    calls = not prompt.plain and "function_call" in map(_KIND, history)
    if calls or any(kind == "function_call" for kind, _ in inputs):
        pairs = [(row[1], row[2]) for row in history] + inputs
        messages = chat_messages(pairs)
    else:  # plain messages (the common case): their stored JSON as it is, without a pass in Python
        pairs = []
        messages = [*map(_CHAT, history), *(chat for _, chat in inputs)]
    if prompt.tools:
        fields["tools"] = chat_tools(prompt.tools)
        if prompt.tool_choice is not None:
            fields["tool_choice"] = chat_tool_choice(prompt.tool_choice)
        if prompt.parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = prompt.parallel_tool_calls
    elif called := _called_tools(pairs):
        # A turn without tools (OpenAI does not carry them over) after calls were made: servers that
        # want every called tool defined get them, and the model may call none of them.
        fields["tools"], fields["tool_choice"] = called, "none"
    if prompt.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    if prompt.instructions:
        messages.insert(0, orjson.dumps({"role": "system", "content": prompt.instructions}))
    rest = b"]," + orjson.dumps(fields)[1:]
    if not messages:
        return b'{"messages":[' + rest
    # One copy of the messages: a 128k-token prompt is ~500 kB, so the body's head and tail join the
    # first and last message (small) rather than the whole being joined twice.
    messages[0] = b'{"messages":[' + messages[0]
    messages[-1] = messages[-1] + rest
    return b",".join(messages)


def _called_tools(pairs: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    names: dict[str, None] = {}
    for kind, chat in pairs:
        if kind == "function_call":
            function = orjson.loads(chat).get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name:
                names[name] = None
    return [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}} for name in names]


def api_error(status: int, raw: bytes, retry: str | None, host: str, key: str) -> ServiceError:
    """An error answer as the precise error a client sees; the key never appears in it."""
    message, code, param = "", "", ""
    try:
        parsed = orjson.loads(raw)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            found = error.get("message")
            message = found if isinstance(found, str) else ""
            raw_code = error.get("code") or error.get("type")
            code = raw_code if isinstance(raw_code, str) else ""
            param = error["param"] if isinstance(error.get("param"), str) else ""
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            message = parsed["message"]
    except _JSON_ERRORS:
        message = raw.decode("utf-8", "replace")  # scrub cuts it, never inside a credential
    code = scrub(code, key, limit=60)
    detail = scrub(message or code or f"HTTP {status}", key)
    # The field it names, for the client's own (OpenAI's SDK shows it): scrubbed, short, else none.
    named: dict[str, Any] = {"param": scrub(param, key, limit=80)} if param else {}
    # ``code`` (the upstream's own, scrubbed) is what OpenAI's SDK users branch on: it is passed on.
    if status == 401:
        return Unauthorized("upstream_unauthorized", host=host, detail=code or "invalid_api_key",
                            code=code or "invalid_api_key")  # fmt: skip
    if status == 429:
        quota = code == "insufficient_quota"
        return TooManyRequests("upstream_quota" if quota else "upstream_rate_limited", headers=retry_after(retry),
                               host=host, detail=detail, code=code or "rate_limit_exceeded")  # fmt: skip
    if status == 403:
        return Forbidden("upstream_forbidden", host=host, detail=detail, code=code or "upstream_forbidden")
    if status == 404:  # an unknown model, as OpenAI answers it: NotFoundError in the SDK, as from OpenAI
        return NotFound("upstream_not_found", host=host, detail=detail, code=code or "not_found", **named)
    if 400 <= status < 500:
        return BadRequest("upstream_bad_request", host=host, detail=detail, code=code or "upstream_bad_request",
                          **named)  # fmt: skip
    return BadGateway("upstream_error", host=host, status=status, detail=detail)


# The status an error object in a success answer (a stream's chunk, a 200's body) stands for, by its
# code: so a quota or a context too long mid-stream is as precise as it is when answered with its status.
_STATUS_OF_CODE = {"rate_limit_exceeded": 429, "insufficient_quota": 429, "context_length_exceeded": 400,
                   "invalid_api_key": 401, "model_not_found": 404}  # fmt: skip


def reported_error(error: Any, host: str, key: str, where: str) -> ServiceError:
    """An error object an upstream sent inside a success answer, as precise as its code allows; any
    other is a 502 with its words (scrubbed)."""
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        status = _STATUS_OF_CODE.get(code) if isinstance(code, str) else None
        number = error.get("code") if status is None else None
        if type(number) is int and 400 <= number < 500:  # some servers give the HTTP status as the code
            status = number
        if status is not None:
            try:
                raw = orjson.dumps({"error": error})
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: its status alone
                raw = orjson.dumps({"error": {"code": code if isinstance(code, str) else ""}})
            return api_error(status, raw, None, host, key)
    message = error.get("message") or error if isinstance(error, dict) else error
    return _bad(host, f"{where} reported an error: " + scrub(message, key))


def _headers(target: Target) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {target.credential}", "Content-Type": "application/json"}
    if target.organization:
        headers["OpenAI-Organization"] = target.organization
    if target.project:
        headers["OpenAI-Project"] = target.project
    return headers


# -- whole replies -------------------------------------------------------------------------------
def _index(choice: dict[str, Any], host: str) -> int:
    """A choice's place (n > 1 asks for several): absent or null is the first; anything but a whole
    number is refused, never taken for another choice and dropped."""
    index = choice.get("index")
    if index is None:
        return 0
    if isinstance(index, float) and index.is_integer():
        return int(index)
    if not isinstance(index, int) or isinstance(index, bool):
        raise _bad(host, "a choice's index is not a number")
    return index


def parse_completion(raw: bytes, host: str, key: str = "") -> dict[str, Any]:
    """A chat completion as {"text", "tool_calls", "usage", "id", "model", "finish_reason"}."""
    if raw[:3] == b"\xef\xbb\xbf":  # a byte order mark, which a stream's reader drops too
        raw = raw[3:]
    try:
        completion = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:  # text that is not UTF-8 throughout: read as a stream's is, the bad bytes replaced
            completion = orjson.loads(raw.decode("utf-8", "replace"))
        except _JSON_ERRORS:
            raise _bad(host, "the reply is not JSON") from exc
    except _JSON_ERRORS as exc:
        raise _bad(host, "the reply is not JSON") from exc
    if not isinstance(completion, dict):
        raise _bad(host, "the reply is not a JSON object")
    choices = completion.get("choices")
    error = completion.get("error")
    if error and not choices:  # an error said with a success status: its words are the news
        raise reported_error(error, host, key, "the reply")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise _bad(host, "no choices[0] in the reply")
    first = next((choice for choice in choices if _index(choice, host) == 0), None)
    if first is None:
        raise _bad(host, "no choice of index 0 in the reply")
    message = first.get("message")
    if not isinstance(message, dict):
        raise _bad(host, "no choices[0].message in the reply")
    content = _text_of(message.get("content"))
    refused = content is None and isinstance(message.get("refusal"), str) and bool(message["refusal"])
    if content is None:
        content = message["refusal"] if refused else ""
    if not isinstance(content, str):
        raise _bad(host, "choices[0].message.content is not text")
    calls: list[ToolCall] = []
    mended = False  # arguments that came as a JSON value, not its text: written as text for a client
    raw_calls = message.get("tool_calls")
    if raw_calls is not None:
        if not isinstance(raw_calls, list):
            raise _bad(host, "choices[0].message.tool_calls is not a list")
        if len(raw_calls) > MAX_TOOL_CALLS:
            raise _bad(host, f"more than {MAX_TOOL_CALLS} tool calls")
        for call in raw_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise _bad(host, "a tool call has no function name")  # as a stream's call without one
            arguments = arguments_text(function.get("arguments"))
            if arguments is None:
                raise _bad(host, "a tool call's arguments are not JSON we can read")
            if not isinstance(function.get("arguments"), str):
                function["arguments"], mended = arguments, True
            calls.append(ToolCall(len(calls), mint("call_"), function["name"][:256], arguments, label(call.get("id"))))
    finish = first.get("finish_reason")
    return {
        "text": content,
        "tool_calls": calls,
        "usage": usage_of(completion.get("usage")),
        "id": label(completion.get("id")),
        "model": label(completion.get("model")),
        "finish_reason": reason_label(finish),
        "refusal": refused,
        "mended": _written(completion, host) if mended else None,  # the completion with text arguments
        "created": timestamp(completion.get("created")),
    }


# The details worth keeping: what cost dashboards read (cached input, reasoning output).
USAGE_DETAILS = {"prompt_tokens_details": ("cached_tokens",), "completion_tokens_details": ("reasoning_tokens",)}


def usage_of(value: Any) -> dict[str, Any] | None:
    """Usage with integer counts only, and the details in USAGE_DETAILS (anything else from an upstream
    is dropped)."""
    if not isinstance(value, dict):
        return None
    out: dict[str, Any] = {}
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        number = value.get(name)
        if is_count(number):
            out[name] = number
    if "total_tokens" not in out and "prompt_tokens" in out and "completion_tokens" in out:
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    if "prompt_tokens" not in out and "completion_tokens" not in out:
        return None
    for group, names in USAGE_DETAILS.items():
        details = value.get(group)
        if isinstance(details, dict):
            kept = {name: details[name] for name in names if is_count(details.get(name))}
            if kept:
                out[group] = kept
    return out


class WholeReply(Reply):
    """A non-streamed completion, already read: one event with its text."""

    instant = True

    def __init__(self, host: str, parsed: dict[str, Any], size: int):
        self.host = host
        self.parsed = parsed
        self.created = parsed["created"]
        self.received = size

    @property
    def text(self) -> str:
        return str(self.parsed["text"])

    @property
    def complete(self) -> bool:
        return True

    @property
    def usage(self) -> dict[str, Any] | None:
        usage: dict[str, Any] | None = self.parsed["usage"]
        return usage

    @property
    def upstream_id(self) -> str | None:
        return self.parsed["id"]  # type: ignore[no-any-return]

    @property
    def model(self) -> str | None:
        return self.parsed["model"]  # type: ignore[no-any-return]

    @property
    def finish_reason(self) -> str | None:
        return self.parsed["finish_reason"]  # type: ignore[no-any-return]

    @property
    def tool_calls(self) -> list[ToolCall]:
        calls: list[ToolCall] = self.parsed["tool_calls"]
        return calls

    @property
    def refusal(self) -> bool:
        return bool(self.parsed["refusal"])

    async def events(self) -> AsyncIterator[Event]:
        if self.text:
            yield Event(self.text)
        for call in self.tool_calls:
            yield Event(tool_index=call.index, tool_id=call.call_id, tool_name=call.name, arguments=call.arguments)

    async def aclose(self) -> None:
        return None


# -- streamed replies ----------------------------------------------------------------------------
# What a stream request may be answered with instead of events: read whole (a completion, an error), so
# what is wrong with it is a plain 502 before any stream begins. Any other type (none, text/plain from a
# proxy) is read as the events it most likely is.
_WHOLE_TYPES = frozenset(("application/json", "text/html", "application/xhtml+xml", "text/xml", "application/xml"))


def _written(value: Any, host: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # deeper than orjson writes
        raise _bad(host, "the reply nests too deep") from exc


def _answers_whole(response: Answer) -> bool:
    return response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower() in _WHOLE_TYPES


def _error_text(data: str) -> str:
    """What an error event says: its message if it is JSON that has one, else its data."""
    try:
        value = orjson.loads(data)
    except _JSON_ERRORS:
        return data
    if isinstance(value, dict):
        inner = value.get("error")
        found = inner.get("message") if isinstance(inner, dict) else inner if inner else value.get("message")
        if isinstance(found, str):
            return found
    return data


# Parts that are the model's thinking (Mistral's "thinking"): left out, as reasoning_content is.
_THINKING_PARTS = ("thinking", "reasoning")


def _text_of(content: Any) -> Any:
    """A message's or delta's content as text: a list of parts (Mistral's) gives the text of its text
    parts (a part with text and no type is one; a refusal part is the model's words too), thinking
    parts left out; anything else is returned as it is, for the caller to refuse (never dropped)."""
    if not isinstance(content, list):
        return content
    texts: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            return content
        kind = part.get("type", "text")
        if kind in _THINKING_PARTS:
            continue
        field = "refusal" if kind == "refusal" else "text" if kind in ("text", "output_text") else None
        text = part.get(field) if field else None
        if not isinstance(text, str):
            return content
        texts.append(text)
    return "".join(texts)


class ChunkParser:
    """Pure: chat-completion chunks (the ``data`` of each event) in, events out."""

    def __init__(self, host: str, key: str):
        self.host, self.key = host, key
        self.done = False
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.pieces: list[str] = []
        self.calls: dict[int, ToolCall] = {}
        self._last = 0  # the index of the tool call the last delta added to
        self._moved: dict[int, int] = {}  # an upstream index reused by a later call -> that call's place
        self._by_id: dict[str, int] = {}  # the upstream's call ids -> their places
        self.usage_only = False  # the last chunk fed carried usage and no choices
        self.refusal = False  # the text came as the model's refusal
        self.mended: str | None = None  # the last chunk fed, with a tool call's arguments written as text
        self._touched: dict[int, int] | None = None  # calls the chunk being fed touched: index -> mark (-1: new)

    def step(self, event: SSEEvent) -> list[Event]:
        return self.feed(event.data, event.event)

    def end(self) -> None:
        """The body ended. Without ``[DONE]`` (llama.cpp before late 2024, ik_llama.cpp by default), a
        reply whose choice said why it finished is whole all the same."""
        if self.finish_reason is not None:
            self.done = True

    def feed(self, data: str, event: str = "message") -> list[Event]:
        """One event's ``data`` (and its name: an ``error`` event is the upstream reporting a failure).
        A chunk refused is refused whole: none of it is kept (its client is told none of it, and a failed
        reply is stored as it was told), so what it says is kept only once all of it has been read."""
        self.usage_only = False
        self.mended = None
        if self.done:  # nothing after [DONE] counts, however the bytes happened to arrive
            return []
        if event == "error":
            try:
                named = orjson.loads(data)
            except _JSON_ERRORS:
                named = None
            if isinstance(named, dict) and isinstance(named.get("error"), dict):
                raise reported_error(named["error"], self.host, self.key, "the stream")
            raise _bad(self.host, "the stream reported an error: " + scrub(_error_text(data), self.key))
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except _JSON_ERRORS as exc:
            raise _bad(self.host, "a stream chunk is not JSON") from exc
        if not isinstance(chunk, dict):
            raise _bad(self.host, "a stream chunk is not an object")
        error = chunk.get("error")
        if error:
            raise reported_error(error, self.host, self.key, "the stream")
        choices = chunk.get("choices")
        events: list[Event] = []
        if choices is not None:
            if not isinstance(choices, list):
                raise _bad(self.host, "choices is not a list")
            self._touched = None
            last = self._last
            try:
                events = self._choices(choices, chunk)
            except BadGateway:
                self._undo_calls(last)
                raise
        self.id = self.id or label(chunk.get("id"))
        self.model = self.model or label(chunk.get("model"))
        if self.created is None:
            self.created = timestamp(chunk.get("created"))
        usage = usage_of(chunk.get("usage"))
        if usage:
            self.usage = usage
        # The usage chunk, whatever its numbers: no choices (so no client code indexes into them).
        self.usage_only = not choices and "usage" in chunk
        return events or [ALIVE]

    def _choices(self, choices: list[Any], chunk: dict[str, Any]) -> list[Event]:
        """The events of a chunk's choices; the text, finish reason and refusal are kept once all are read."""
        events: list[Event] = []
        texts: list[str] = []
        finish_reason, refusal = self.finish_reason, self.refusal
        for choice in choices:
            if not isinstance(choice, dict):  # passed on, it would break a client reading choices[0].delta
                raise _bad(self.host, "a choice is not an object")
            index = choice.get("index")
            if index is not None and not (index == 0 and type(index) is int) and _index(choice, self.host) != 0:
                continue
            finish = reason_label(choice.get("finish_reason"))
            if finish is not None:
                finish_reason = finish
            delta = choice.get("delta")
            if delta is None:
                continue
            if not isinstance(delta, dict):
                raise _bad(self.host, "a delta is not an object")
            content = _text_of(delta.get("content"))
            if content is None and isinstance(delta.get("refusal"), str):  # as a whole reply's: its text
                content = delta["refusal"]
                refusal = refusal or bool(content)
            if isinstance(content, str) and content:
                texts.append(content)
                events.append(Event(content))
            elif content is not None and not isinstance(content, str):
                raise _bad(self.host, "delta.content is not text")
            calls = delta.get("tool_calls")
            if calls is not None:
                events += self._tool_deltas(calls)
                if self.mended == "":
                    try:
                        self.mended = orjson.dumps(chunk).decode()
                    except orjson.JSONEncodeError as exc:  # deeper than orjson writes
                        raise _bad(self.host, "a stream chunk nests too deep") from exc
        self.pieces += texts
        self.finish_reason, self.refusal = finish_reason, refusal
        return events

    def _undo_calls(self, last: int) -> None:
        """The tool calls as they were before the chunk being refused touched them."""
        self._last = last
        touched: dict[int, int] = self._touched or {}
        for index, mark in touched.items():
            if mark < 0:
                self.calls.pop(index, None)
            else:
                self.calls[index].cut(mark)
        if touched:
            self._moved = {k: v for k, v in self._moved.items() if v in self.calls}
            self._by_id = {k: v for k, v in self._by_id.items() if v in self.calls}

    def _tool_deltas(self, calls: Any) -> list[Event]:
        if not isinstance(calls, list):
            raise _bad(self.host, "delta.tool_calls is not a list")
        events = []
        for call in calls:
            if not isinstance(call, dict):
                raise _bad(self.host, "a tool call delta is not an object")
            index = call["index"] if "index" in call else self._unindexed(call)
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_TOOL_CALLS:
                raise _bad(self.host, "a tool call delta has no valid index")
            index = self._place(index, call)
            function = call.get("function") or {}
            if not isinstance(function, dict):
                raise _bad(self.host, "a tool call's function is not an object")
            name, arguments = function.get("name"), function.get("arguments")
            if arguments is not None and not isinstance(arguments, str):  # a JSON value: its text, as OpenAI's
                arguments = arguments_text(arguments)
                if arguments is None:
                    raise _bad(self.host, "a tool call's arguments are not JSON we can read")
                function["arguments"], self.mended = arguments, ""  # the chunk is written again
            known = self.calls.get(index)
            if self._touched is None:
                self._touched = {}
            self._touched.setdefault(index, -1 if known is None else known.mark())
            if known is None:
                if not isinstance(name, str) or not name:
                    raise _bad(self.host, "a tool call starts without a name")
                known = self.calls[index] = ToolCall(index, mint("call_"), name[:256], "", label(call.get("id")))
                if known.upstream_id is not None:
                    self._by_id.setdefault(known.upstream_id, index)
                events.append(Event(tool_index=index, tool_id=known.call_id, tool_name=known.name))
            if isinstance(arguments, str) and arguments:
                known.add(arguments)
                events.append(Event(tool_index=index, arguments=arguments))
            self._last = index
        return events

    def _place(self, index: int, call: dict[str, Any]) -> int:
        """Where a delta at the upstream's ``index`` goes: one that names a new function and a new id at
        an index another call holds starts the next call (Ollama numbers every call of a parallel batch
        0); one naming a call's id goes to that call; any other goes on with the call at the index."""
        place = self._moved.get(index, index)
        known = self.calls.get(place)
        upstream_id = label(call.get("id"))
        if known is None or upstream_id is None or upstream_id == known.upstream_id:
            return place
        if upstream_id in self._by_id:
            return self._by_id[upstream_id]
        function = call.get("function")
        if known.upstream_id is None or not isinstance(function, dict) or not function.get("name"):
            return place  # a piece of the same call (some servers give each piece an id of its own)
        place = max(self.calls) + 1
        if place >= MAX_TOOL_CALLS:
            raise _bad(self.host, f"more than {MAX_TOOL_CALLS} tool calls")
        self._moved[index] = place
        return place

    def _unindexed(self, call: dict[str, Any]) -> int:
        """The place of a tool call delta without ``index`` (Gemini's OpenAI layer sends parallel calls
        so): one naming a new id starts the next call; one without an id goes on with the last."""
        last = self.calls.get(self._last)
        if last is None:
            return 0
        upstream_id = call.get("id")
        if upstream_id is None or label(upstream_id) == last.upstream_id:
            return self._last
        return max(self.calls) + 1


class StreamReply(StreamedReply):
    parser: ChunkParser
    unfinished = "the stream ended without [DONE]"

    def __init__(self, host: str, response: Answer, key: str, limit: int):
        self.host = host
        self.response = response
        self.limit = limit
        self.parser = ChunkParser(host, key)

    @property
    def complete(self) -> bool:
        return self.parser.done

    @property
    def finish_reason(self) -> str | None:
        return self.parser.finish_reason

    @property
    def created(self) -> int | None:  # type: ignore[override]
        return self.parser.created

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [self.parser.calls[i] for i in sorted(self.parser.calls)]


class ChatCompletions:
    """The upstream: POST {base}/chat/completions."""

    name = "chat"

    def __init__(self, http: HTTPClient, max_reply_bytes: int):
        self.http = http
        self.limit = max_reply_bytes

    async def open(self, prompt: Prompt, target: Target) -> Reply:
        host = target.host
        body = build_body(prompt)
        response = await post(self.http, target.url + "/chat/completions", body, _headers(target), host)
        try:
            if response.status != 200:
                raw = await read_error(response)
                raise api_error(response.status, raw, response.headers.get("Retry-After"), host, target.credential)
            if prompt.stream and not _answers_whole(response):
                return StreamReply(host, response, target.credential, self.limit)
            # Some servers answer a stream request with a whole completion (or an error): read as one.
            raw = await read_limited(response, self.limit, host)
            return WholeReply(host, parse_completion(raw, host, target.credential), len(raw))
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, host, 0) from exc
        finally:
            if not prompt.stream or response.status != 200:
                response.release()


def _as_chunks(raw: bytes, target: Target) -> list[str]:
    """A whole completion, checked, as the stream a client asked for: one chunk with the message, the
    usage chunk, [DONE]. An error object raises in the upstream's words."""
    parse_completion(raw, target.host, target.credential)
    completion = orjson.loads(raw)
    choice = completion["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("refusal") is not None:
        delta["refusal"] = message["refusal"]
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    head = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint") if k in completion}
    head["object"] = "chat.completion.chunk"
    chunks = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}]}]
    if completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return [*(orjson.dumps(c).decode() for c in chunks), "[DONE]"]


class Relay:
    """A chat-completions request passed through as the client wrote it (``/v1/chat/completions``):
    only the model's upstream and the credential are ours. What comes back is checked by the same
    parsers before a byte of it reaches the client."""

    def __init__(self, http: HTTPClient, max_reply_bytes: int):
        self.http = http
        self.limit = max_reply_bytes

    async def open(self, body: bytes, target: Target) -> Answer:
        host = target.host
        response = await post(self.http, target.url + "/chat/completions", body, _headers(target), host)
        if response.status == 200:
            return response  # type: ignore[no-any-return]
        try:
            raw = await read_error(response)
            raise api_error(response.status, raw, response.headers.get("Retry-After"), host, target.credential)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, host, 0) from exc
        finally:
            response.release()

    async def whole(self, response: Answer, target: Target) -> tuple[bytes, dict[str, Any] | None]:
        try:
            raw = await read_limited(response, self.limit, target.host)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, target.host, 0) from exc
        finally:
            response.release()
        parsed = parse_completion(raw, target.host, target.credential)
        return parsed["mended"] or raw, parsed["usage"]

    async def whole_as_chunks(self, response: Answer, target: Target) -> list[str] | None:
        """A whole completion (or an error) answering a stream request, read and checked before the
        client's stream begins (so a bad one is a plain 502, as on the other doors) and written as
        chunks; None for an event stream."""
        if not _answers_whole(response):
            return None
        try:
            return _as_chunks(await read_limited(response, self.limit, target.host), target)
        except TRANSPORT_ERRORS as exc:
            finish_response(response, complete=False)
            raise transport_error(exc, target.host, 0) from exc
        except BaseException:
            finish_response(response, complete=False)
            raise

    async def chunks(self, response: Answer, target: Target, parser: ChunkParser,
                     ready: list[str] | None = None) -> AsyncIterator[str]:  # fmt: skip
        """The ``data`` of each event (or of each of ``ready``, from ``whole_as_chunks``), each one read
        by ``parser`` first; ends after ``[DONE]``."""
        decoder = SSEDecoder()
        received = 0
        try:
            if ready is not None:
                for data in ready:
                    parser.feed(data)
                    yield parser.mended or data
                return
            async for chunk in response.content.iter_any():
                received += len(chunk)
                if received > self.limit:
                    raise BadGateway("upstream_too_large", host=target.host, limit=self.limit)
                for event in decoder.feed(chunk):
                    if parser.done:
                        break  # nothing after [DONE] is passed on
                    parser.feed(event.data, event.event)
                    yield parser.mended or event.data
                if parser.done:
                    return
            for event in decoder.flush():  # the last event, when the body ends without its blank line
                if parser.done:
                    break
                parser.feed(event.data, event.event)
                yield parser.mended or event.data
            parser.end()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, target.host, 0, idle=True) from exc
        finally:
            finish_response(response, complete=parser.done)
        if not parser.done:
            raise _bad(target.host, "the stream ended without [DONE]")
