"""Upstreams that misbehave the way real ones do (issue 8), as real HTTP servers on 127.0.0.1.

Each class is one small aiohttp app: chat-completions ones serve ``POST /v1/chat/completions``
(upstreams.md §1), web-backend ones ``POST /backend-api/conversation`` (§2). Every app records what
reached it by the user's question (``seen``), so a test can check what a follow-up carried. Where one
app plays several misbehaviours, the question's first word picks the one, so tests that share an app
never step on each other; a question starting with ``good`` is always answered properly.

- ``ChatIds``: right replies with wrong ids: Ollama's ``chatcmpl-<n>`` from a tiny range, empty or
  missing ids, or the gateway's own ids echoed back (whatever id-shaped text the request holds).
- ``WebIds``: the web backend's stream with ids from a tiny range, or the user message's own id
  (``messages[0].id``) echoed as the reply's message and conversation ids.
- ``Redirector`` + ``Trap``: answers 301/302/303/307/308 towards another local server, which records
  whatever reaches it.
- ``ChatHostile`` / ``WebHostile``: replies and stream frames of every wrong shape.
- ``Endless``: a reply that never ends (streamed, as one JSON body, or one endless line), for
  ``CHATGPT_SERVER_MAX_REPLY_BYTES``.
- ``ChatLeaky`` / ``WebLeaky``: error answers that echo the caller's credential in many spellings,
  and ``Retry-After`` headers holding junk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

CHAT_PATH = "/v1/chat/completions"
WEB_PATH = "/backend-api/conversation"
MISSING = object()  # an id left out of the reply altogether
TEN_KB = "i" * 10240
# Ids the gateway mints: chatcmpl-<32 hex>, msg_/fc_/call_<32 hex>, and bare UUIDs.
GATEWAY_ID = re.compile(
    r"(?:chatcmpl-|msg_|fc_|call_)[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def chat_question(body: Any) -> str:
    """The last user message's text of a chat-completions body."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def web_question(body: Any) -> str:
    try:
        return str(body["messages"][0]["content"]["parts"][0])
    except (KeyError, IndexError, TypeError):
        return ""


def word(question: str) -> str:
    return question.split(" ", 1)[0]


class Recording:
    """What reached an app, by question; and how many replies were abandoned by the reader."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        self.count = 0
        self.disconnects = 0

    def _record(self, question: str, body: Any, request: web.Request) -> None:
        self.seen[question] = {"body": body, "headers": dict(request.headers)}
        self.count += 1


# -- chat completions ---------------------------------------------------------------------------
async def chat_reply(request: web.Request, body: Any, text: str, reply_id: Any = "chatcmpl-standin",
                     extra: dict[str, Any] | None = None) -> web.StreamResponse:  # fmt: skip
    """A well-formed reply, whole or streamed as ``body`` asked, with ``reply_id`` (or none: MISSING)."""
    base: dict[str, Any] = {"object": "chat.completion", "created": 1700000000, "model": "evil-1", **(extra or {})}
    if reply_id is not MISSING:
        base["id"] = reply_id
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    if not body.get("stream"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return _json(200, {**base, "choices": [choice], "usage": usage})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    base["object"] = "chat.completion.chunk"
    words = text.split(" ")
    for i, piece in enumerate(words):
        delta = {"content": piece if i == 0 else " " + piece}
        await response.write(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta}]}) + b"\n\n")
    await response.write(b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": {},
                         "finish_reason": "stop"}]}) + b"\n\n")  # fmt: skip
    await response.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


def chat_text(body: Any) -> str:
    """What every well-behaved evil app answers: the number of messages it got and the question."""
    return f"seen({len(body.get('messages') or [])}): {chat_question(body)}"


class ChatIds(Recording):
    """Chat completions whose replies are right and whose ids are not: ``ids(n, body)`` gives the id
    of the n-th reply (MISSING to leave it out)."""

    def __init__(self, ids: Callable[[int, Any], Any]):
        super().__init__()
        self.ids = ids

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = chat_question(body)
        n = self.count
        self._record(question, body, request)
        return await chat_reply(request, body, chat_text(body), self.ids(n, body))


def ollama_ids(n: int, body: Any) -> str:
    """Ollama's compatibility layer: ``chatcmpl-<n>`` with n from a tiny range (here 0-6)."""
    return f"chatcmpl-{n % 7}"


def empty_ids(n: int, body: Any) -> Any:
    return ["", MISSING, None, "   ", 0][n % 5]


def echoed_ids(n: int, body: Any) -> str:
    """The last id of ours the request holds anywhere (the gateway sends none of its ids on this
    protocol, so a test puts them in the question for the upstream to find)."""
    found = GATEWAY_ID.findall(orjson.dumps(body).decode())
    return found[-1] if found else "chatcmpl-nothing-to-echo"


# -- the web backend ------------------------------------------------------------------------------
def sse(data: Any, event: str | None = None) -> bytes:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return (f"event: {event}\n".encode() if event else b"") + b"data: " + raw + b"\n\n"


def web_message(message_id: Any, parts: Any = None) -> dict[str, Any]:
    return {"id": message_id, "author": {"role": "assistant"}, "status": "in_progress", "metadata": {},
            "content": {"content_type": "text", "parts": [""] if parts is None else parts}}  # fmt: skip


def web_prelude(conversation_id: Any, message_id: Any, pieces: list[str]) -> list[bytes]:
    """The start of a v1 delta-encoded reply: the envelope, then ``pieces`` of text."""
    frames = [b'event: delta_encoding\ndata: "v1"\n\n',
              sse({"type": "input_message", "input_message": {"author": {"role": "user"}}}),
              sse({"p": "", "o": "add", "v": {"message": web_message(message_id), "conversation_id": conversation_id,
                                              "error": None}, "c": 0}, "delta")]  # fmt: skip
    for i, piece in enumerate(pieces):
        op = {"p": "/message/content/parts/0", "o": "append", "v": piece} if i == 0 else {"v": piece}
        frames.append(sse(op, "delta"))
    return frames


def web_ending(conversation_id: Any) -> list[bytes]:
    return [sse({"p": "", "o": "patch", "v": [{"p": "/message/status", "o": "replace", "v": "finished_successfully"}]},
                "delta"),
            sse({"type": "message_stream_complete", "conversation_id": conversation_id}),
            b"data: [DONE]\n\n"]  # fmt: skip


async def web_stream(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    try:
        for frame in frames:
            await response.write(frame)
    except ConnectionError:  # the reader gave up on the reply: what it is there for
        pass
    return response


class WebRecording(Recording):
    """A web-backend app: records each body by question, and the ids each reply gave (``given``)."""

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, tuple[Any, Any]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(WEB_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = web_question(body)
        n = self.count
        self._record(question, body, request)
        return await self.answer(request, body, question, n)

    async def answer(self, request: web.Request, body: Any, question: str, n: int) -> web.StreamResponse:
        return await self.good(request, body, question, str(uuid.uuid4()), str(uuid.uuid4()))

    async def good(self, request: web.Request, body: Any, question: str, conversation_id: Any,
                   message_id: Any) -> web.StreamResponse:  # fmt: skip
        self.given[question] = (conversation_id, message_id)
        text = f"web: {question}"
        pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
        return await web_stream(request, web_prelude(conversation_id, message_id, pieces) + web_ending(conversation_id))


class WebIds(WebRecording):
    """The web backend with bad ids: ``tiny`` (message and conversation ids from a range of 3, as
    labels that repeat across conversations) or ``echo`` (the user message's own id, ours, given back
    as the reply's message id and, on a new conversation, as the conversation id)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    async def answer(self, request: web.Request, body: Any, question: str, n: int) -> web.StreamResponse:
        if self.kind == "tiny":
            return await self.good(request, body, question, f"conv-{n % 3}", f"msg-{n % 3}")
        ours = body["messages"][0]["id"]
        return await self.good(request, body, question, body.get("conversation_id") or ours, ours)


# -- redirects ----------------------------------------------------------------------------------
class Trap(Recording):
    """Records whatever reaches it, on any path and method, and answers as a good upstream would."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
                          "body": await request.read()})  # fmt: skip
        reply = {"id": "trap", "choices": [{"index": 0, "message": {"role": "assistant", "content": "TRAPPED"}}]}
        return _json(200, reply)


class Redirector(Recording):
    """Answers every request with the redirect status its question names (``301`` ... ``308``), towards
    the trap (an absolute URL with the same path, and a query that looks secret)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT_PATH, self.handle)
        app.router.add_post(WEB_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        question = chat_question(body) or web_question(body)
        self._record(question, body, request)
        status = int(word(question)) if word(question).isdigit() else 307
        location = f"{self.target}{request.path}?token=trap-secret"
        return web.Response(status=status, headers={"Location": location}, text="moved")


class AnyRedirector(Recording):
    """Answers every request, on any path and method, with a 307 towards the trap (same path)."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.paths: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(f"{request.method} {request.path}")
        return web.Response(status=307, headers={"Location": f"{self.target}{request.path}?token=trap-secret"})


# -- hostile shapes -----------------------------------------------------------------------------
def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _dumps(value: Any) -> bytes:
    """JSON deeper than orjson writes (it stops at 255 levels; readers take up to 1024)."""
    return json.dumps(value).encode()


def _deep_value(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


def _completion(message: Any = None, **fields: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "hi"} if message is None else message
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "evil-1",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **fields}  # fmt: skip


# Whole (non-streamed) replies with status 200: each must be a 502 upstream_bad_reply.
WHOLE_REPLIES: dict[str, bytes] = {
    "choices_object": orjson.dumps({"id": "x", "choices": {"0": {"message": {"role": "assistant", "content": "hi"}}}}),
    "choices_empty": orjson.dumps({"id": "x", "choices": []}),
    # more calls than any model makes (each is cheap; tens of thousands once took seconds to order)
    "tool_calls_200": orjson.dumps(
        _completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    for i in range(200)
                ],
            }
        )
    ),
    "choices_numbers": orjson.dumps({"id": "x", "choices": [1, 2]}),
    "error_string": orjson.dumps({"error": "the model fell over"}),
    "error_number": orjson.dumps({"error": 500}),
    "message_string": orjson.dumps(_completion("hi")),
    "content_number": orjson.dumps(_completion({"role": "assistant", "content": 42})),
    "content_object": orjson.dumps(_completion({"role": "assistant", "content": {"text": "hi"}})),
    "tool_calls_object": orjson.dumps(_completion({"role": "assistant", "content": None, "tool_calls": {"name": "f"}})),
    "tool_calls_numbers": orjson.dumps(_completion({"role": "assistant", "content": None, "tool_calls": [1]})),
    "tool_call_no_name": orjson.dumps(
        _completion(
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}
        )
    ),
    "tool_call_deep_arguments": _dumps(
        _completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": _deep_value(400)}}
                ],
            }
        )
    ),
    "not_an_object": b"[1, 2, 3]",
    "not_json": b"<html><body>hello</body></html>",
    "not_utf8": b'{"id": "\xff\xfe", "choices": []}',
    "deep": _deep(5000),
    "empty": b"",
}
# Whole replies that are odd but readable: each must be a 201 with our own id.
ODD_REPLIES: dict[str, bytes] = {
    "ten_kb_id": orjson.dumps(_completion(id=TEN_KB, model=TEN_KB, created=True, usage={"prompt_tokens": "5"})),
    "id_object": orjson.dumps(_completion(id={"a": 1}, model=[1], created=-1, usage=[1])),
    # readable (under 1,024 levels), but deeper than orjson writes (254): never passed on whole
    "deep_field": orjson.dumps(_completion())[:-1] + b', "system_fingerprint": ' + _deep(400) + b"}",
    "deep_usage": orjson.dumps(_completion())[:-1] + b', "usage": {"prompt_tokens_details": ' + _deep(400) + b"}}",
    "finish_injected": orjson.dumps(
        {
            "id": 7,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop\r\nX-Injected: 1",
                }
            ],
        }
    ),
    "finish_markup": orjson.dumps(
        {
            "id": 7,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": '<img src=x onerror="alert(1)">',
                }
            ],
        }
    ),
    "finish_object": orjson.dumps(
        {
            "id": 7,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": {"why": TEN_KB}}
            ],
        }
    ),
}


def _chunk(delta: Any = None, **fields: Any) -> bytes:
    choice = {"index": 0, "delta": {"content": "x"} if delta is None else delta}
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice], **fields})


# Stream frames sent after two good pieces of text ("Hello", " there"): each must end the stream with
# an `error` event, and the text that had arrived must be stored as incomplete.
STREAM_FRAMES: dict[str, bytes] = {
    "choices_object": orjson.dumps({"id": "x", "choices": {"0": {"delta": {"content": "x"}}}}),
    "choices_string": orjson.dumps({"id": "x", "choices": "all of them"}),
    "error_string": orjson.dumps({"error": "the model fell over"}),
    "error_deep": _dumps({"error": {"message": _deep_value(250)}}),
    "error_very_deep": b'{"error": ' + _deep(1000) + b"}",
    "delta_string": _chunk("more text"),
    "delta_list": _chunk(["more", "text"]),
    "content_number": _chunk({"content": 42}),
    "content_list": _chunk({"content": ["a", "b"]}),
    "tool_calls_object": _chunk({"tool_calls": {"0": {"function": {"name": "f"}}}}),
    "tool_call_number": _chunk({"tool_calls": [7]}),
    "tool_call_index_string": _chunk({"tool_calls": [{"index": "0", "function": {"name": "f"}}]}),
    "tool_call_index_huge": _chunk({"tool_calls": [{"index": 2**62, "function": {"name": "f"}}]}),
    "tool_call_index_bool": _chunk({"tool_calls": [{"index": True, "function": {"name": "f"}}]}),
    "tool_call_function_list": _chunk({"tool_calls": [{"index": 0, "function": ["f"]}]}),
    "tool_call_no_name": _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
    "choices_not_objects": orjson.dumps({"id": "x", "choices": [None, 5]}),
    # A frame refused whole: the text (or the call) before its fault is neither told nor stored.
    "content_then_bad_call": _chunk({"content": " UNTOLD", "tool_calls": [7]}),
    "content_then_bad_choice": orjson.dumps(
        {"id": "x", "choices": [{"index": 0, "delta": {"content": " UNTOLD"}}, None]}
    ),
    "call_then_bad_call": _chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}, 7]}),
    "not_an_object": b"[1, 2, 3]",
    "not_json": b"{not json",
    "deep": _deep(5000),
}


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def _spread(frame: bytes) -> bytes:
    return orjson.dumps(orjson.loads(frame), option=orjson.OPT_INDENT_2).replace(b"\n", b"\ndata: ")


async def _stream_raw(request: web.Request, raw: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await response.write(raw)
    return response


async def _stream_frames(request: web.Request, frames: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        for frame in frames:
            await response.write(b"data: " + frame + b"\n\n")
    except ConnectionError:
        pass
    return response


class ChatHostile(Recording):
    """Chat completions answering ``WHOLE_REPLIES[name]``/``ODD_REPLIES[name]`` (a request that does not
    stream) or ``STREAM_FRAMES[name]`` after two good chunks (one that does), ``name`` being the
    question's first word. ``good ...`` is answered properly, ``quiet ...`` streams text and then
    ends without ``[DONE]`` (and without a finish reason), ``spread ...`` streams good chunks, each over
    several ``data:`` lines."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(CHAT_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = chat_question(body)
        self._record(question, body, request)
        name = word(question)
        if name == "good":
            return await chat_reply(request, body, chat_text(body))
        good = [_chunk({"role": "assistant", "content": "Hello"}), _chunk({"content": " there"})]
        if name == "wholejson":  # a whole completion, asked for a stream or not
            return await chat_reply(request, {**body, "stream": False}, "Hello there")
        if name == "badjson":  # a whole "completion" whose choices are not a list
            return _json(200, {"id": "x", "object": "chat.completion", "choices": "none"})
        if name == "jsonerror":  # an error object with a success status, echoing the caller's key
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return _json(200, {"error": {"message": f"overloaded for {key}", "type": "server_error"}})
        if body.get("stream"):
            if name == "quiet":
                return await _stream_frames(request, good)
            if name == "afterdone":  # more after [DONE], in the same write: never part of the reply
                extra = _chunk({"content": " INJECTED"})
                raw = b"".join(b"data: " + f + b"\n\n" for f in (*good, b"[DONE]", extra, b"{not json"))
                return await _stream_raw(request, raw)
            stop = orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if name == "nodone":  # finished (its finish_reason, its usage), then the body ends: no [DONE]
                return await _stream_frames(request, [*good, stop, _chunk({}, usage=USAGE)])
            if name == "donebare":  # [DONE] without the blank line that ends its event, then the body ends
                return await _stream_raw(
                    request, b"".join(b"data: " + f + b"\n\n" for f in (*good, stop)) + b"data: [DONE]"
                )
            if name == "parts":  # content as a list of parts (Mistral's reasoning models), thinking first
                thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}
                parts = [_chunk({"role": "assistant", "content": [thinking]}),
                         _chunk({"content": [{"type": "text", "text": "Hello"}]}), good[1]]  # fmt: skip
                return await _stream_frames(request, [*parts, stop, b"[DONE]"])
            if name == "errorevent":  # an SSE error event, echoing the caller's key
                key = request.headers.get("Authorization", "").removeprefix("Bearer ")
                error = b"event: error\ndata: " + orjson.dumps({"message": f"overloaded for {key}"}) + b"\n\n"
                raw = b"".join(b"data: " + f + b"\n\n" for f in good) + error + b"data: [DONE]\n\n"
                return await _stream_raw(request, raw)
            if name == "gemini":  # parallel tool calls without index, each in a chunk of its own
                calls = [
                    {
                        "id": "call_A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ]
                frames = [_chunk({"role": "assistant", "tool_calls": [call]}) for call in calls]
                stop = orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                return await _stream_frames(request, [*frames, stop, b"[DONE]"])
            if name == "nothing":  # a reply of no words at all
                stop = orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                return await _stream_frames(request, [_chunk({"role": "assistant"}), stop, b"[DONE]"])
            if name == "ollama":  # Ollama numbers every call of a parallel batch 0, each whole in a chunk
                batch: list[dict[str, Any]] = [
                    {"index": 0, "id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": a}}
                    for n, a in (("get_weather", '{"city": "Lima"}'), ("get_time", "{}"))
                ]
                frames = [_chunk({"role": "assistant", "tool_calls": [call]}) for call in batch]
                stop = orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                return await _stream_frames(request, [*frames, stop, b"[DONE]"])  # fmt: skip
            if name == "interleaved":  # text, then two calls whose argument pieces alternate (index 0, 1, 0, 1)
                heads = [
                    {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": ""}}
                    for i, n in enumerate(("get_weather", "get_time"))
                ]
                pieces = [(0, '{"city": '), (1, '{"zone"'), (0, '"Oslo"}'), (1, ': "UTC"}')]
                frames = [
                    good[0],
                    _chunk({"tool_calls": heads}),
                    *(_chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]}) for i, a in pieces),
                ]
                stop = orjson.dumps({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                return await _stream_frames(request, [*frames, stop, b"[DONE]"])  # fmt: skip
            if name == "cutcall":  # text, a whole call, then one whose arguments stop mid-way: the stream ends
                whole = {
                    "index": 0,
                    "id": "call_W",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
                cut = {
                    "index": 1,
                    "id": "call_C",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Pa'},
                }
                frames = [good[0], _chunk({"tool_calls": [whole]}), _chunk({"tool_calls": [cut]})]
                return await _stream_frames(request, frames)
            if name == "filtered":  # the upstream's filter stopped the reply
                stop = orjson.dumps(
                    {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]}
                )
                return await _stream_frames(request, [*good, stop, b"[DONE]"])
            if name == "oddend":  # a usage chunk with float counts, then a padded [DONE]
                usage = orjson.dumps({"id": "x", "choices": [], "usage": {k: float(v) for k, v in USAGE.items()}})
                raw = b"".join(b"data: " + f + b"\n\n" for f in (*good, usage)) + b"data:  [DONE] \n\n"
                return await _stream_raw(request, raw)
            if name == "spread":  # good chunks, each JSON spread over several data lines (as SSE allows)
                spread = [_spread(frame) for frame in (*good, _chunk({"content": "!"}), _chunk({}, usage=USAGE))]
                return await _stream_frames(request, [*spread, b"[DONE]"])
            return await _stream_frames(request, [*good, STREAM_FRAMES[name], _chunk({"content": "!"}), b"[DONE]"])
        raw = WHOLE_REPLIES[name] if name in WHOLE_REPLIES else ODD_REPLIES[name]
        return web.Response(status=200, body=raw, content_type="application/json")


def _web_classic(message: Any, conversation_id: Any) -> bytes:
    return sse({"message": message, "conversation_id": conversation_id, "error": None})


def web_hostile_frames(conversation_id: str, message_id: str) -> dict[str, list[bytes]]:
    """Web-backend frames of every wrong shape, each sent after the text "Hello there" arrived."""
    c = conversation_id
    text = "/message/content/parts/0"
    return {
        "parts_object": [
            sse(
                {"p": "", "o": "add", "v": {"message": web_message(message_id, {"0": "x"}), "conversation_id": c}},
                "delta",
            )
        ],
        "parts_string": [sse({"p": "/message", "o": "replace", "v": web_message(message_id, "all")}, "delta")],
        "classic_parts_object": [_web_classic(web_message(message_id, {"0": "Hello there!"}), c)],
        "patch_not_objects": [sse({"p": "", "o": "patch", "v": [1, "two", None]}, "delta")],
        "patch_object": [sse({"p": "", "o": "patch", "v": {"p": text, "o": "append", "v": "!"}}, "delta")],
        "patch_string": [sse({"o": "patch", "v": "append everything"}, "delta")],
        "pointer_integer": [sse({"p": 7, "o": "append", "v": "!"}, "delta")],
        "pointer_list": [sse({"p": [text], "o": "append", "v": "!"}, "delta")],
        "operation_number": [sse({"p": text, "o": 1, "v": "!"}, "delta")],
        "conversation_number": [sse({"p": "/conversation_id", "o": "replace", "v": 12345}, "delta")],
        "conversation_object": [_web_classic(web_message(message_id, ["Hello there!"]), {"id": c})],
        "conversation_ten_kb": [sse({"p": "/conversation_id", "o": "replace", "v": TEN_KB}, "delta")],
        "error_frame": [sse({"message": None, "conversation_id": c, "error": "Something went wrong"})],
        "error_type": [sse({"type": "error", "message": "overloaded"})],
        "error_object": [sse({"message": None, "error": {"code": 5, "message": ["x"]}})],
        "not_json": [b"event: delta\ndata: {not json\n\n"],
        "deep": [b"event: delta\ndata: " + _deep(5000) + b"\n\n"],
    }


class WebHostile(WebRecording):
    """The web backend: ``name ...`` sends "Hello there", then ``web_hostile_frames()[name]``, then the
    rest of a good reply; ``first-<name> ...`` sends the hostile frame before any text;
    ``ten_kb_message_id ...`` is a good reply whose message id is 10 kB; ``good ...`` a good reply."""

    async def answer(self, request: web.Request, body: Any, question: str, n: int) -> web.StreamResponse:
        name = word(question)
        conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        if name == "good":
            return await self.good(request, body, question, conversation_id, message_id)
        self.given[question] = (conversation_id, message_id)
        if name == "ten_kb_message_id":
            frames = web_prelude(conversation_id, TEN_KB, ["Hello", " there"]) + web_ending(conversation_id)
            return await web_stream(request, frames)
        first = name.startswith("first-")
        hostile = web_hostile_frames(conversation_id, message_id)[name.removeprefix("first-")]
        frames = web_prelude(conversation_id, message_id, [] if first else ["Hello", " there"])
        frames += [*hostile, sse({"v": "!"}, "delta"), *web_ending(conversation_id)]
        return await web_stream(request, frames)


# -- replies that never end ---------------------------------------------------------------------
class Endless(Recording):
    """Replies that never end, whatever the reader's limit: the question's first word picks the form.

    Chat completions (``CHAT_PATH``): ``stream`` (chunks of text forever, the request streaming or
    not), ``line`` (one SSE line that never ends), ``body`` (a JSON body that never ends, for a
    request that does not stream), ``declared`` (a Content-Length far over any limit).
    Web backend (``WEB_PATH``): ``stream`` (appends forever) or ``line``.
    ``written`` counts the bytes written; ``disconnects`` the replies whose reader went away.
    """

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.piece = "x" * 1000
        self.given: dict[str, tuple[str, str]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT_PATH, self.chat)
        app.router.add_post(WEB_PATH, self.web)
        return app

    async def _forever(self, request: web.Request, head: bytes, frame: bytes, content_type: str,
                       length: int | None = None) -> web.StreamResponse:  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        try:
            await response.write(head)
            self.written += len(head)
            for _ in range(1_000_000):  # a gigabyte: "forever" for any limit a test sets
                await response.write(frame)
                self.written += len(frame)
                await asyncio.sleep(0)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = chat_question(body)
        self._record(question, body, request)
        name = word(question)
        if name == "good":
            return await chat_reply(request, body, chat_text(body))
        if name == "line":
            return await self._forever(request, b'data: {"choices": [{"index": 0, "delta": {"content": "',
                                       self.piece.encode(), "text/event-stream")  # fmt: skip
        if name == "body" or (name == "declared" and not body.get("stream")):
            length = 10**12 if name == "declared" else None
            return await self._forever(request, b'{"id": "x", "choices": [{"index": 0, "message": {"content": "',
                                       self.piece.encode(), "application/json", length)  # fmt: skip
        if body.get("stream"):
            frame = b"data: " + _chunk({"content": self.piece}) + b"\n\n"
            return await self._forever(request, b"data: " + _chunk({"role": "assistant", "content": ""}) + b"\n\n",
                                       frame, "text/event-stream")  # fmt: skip
        return await self._forever(request, b'{"id": "x", "choices": [{"index": 0, "message": {"content": "',
                                   self.piece.encode(), "application/json")  # fmt: skip

    async def web(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = web_question(body)
        self._record(question, body, request)
        conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.given[question] = (conversation_id, message_id)
        head = b"".join(web_prelude(conversation_id, message_id, [""]))  # then bare {"v"} frames append
        if word(question) == "line":
            return await self._forever(request, head + b"event: delta\ndata: {\"v\": \"", self.piece.encode(),
                                       "text/event-stream")  # fmt: skip
        return await self._forever(request, head, sse({"v": self.piece}, "delta"), "text/event-stream")


# -- credentials echoed -------------------------------------------------------------------------
def spellings(secret: str) -> list[str]:
    """How a careless upstream echoes a credential: as sent, upper-, lower- and swapped-case, its
    last 8 characters in each case, URL-encoded (as a query string carries it), and cut: without its
    last character, without its prefix, a run of 12 from its middle (upper-cased)."""
    tail = secret[-8:]
    return [secret, secret.upper(), secret.lower(), secret.swapcase(), tail, tail.upper(), tail.swapcase(),
            quote(secret, safe=""), secret[:-1], secret[3:], secret[5:17].upper()]  # fmt: skip


OTHER_SECRETS = ["sk-proj-Zq3vT8xYw2LmN5pRk7Hs", "Bearer abc.def-ghi_jkl", "api_key=Q9w8E7r6T5y4U3i2",
                 "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLWhlcmU"]  # fmt: skip


def otherwise_spellings(secret: str) -> list[str]:
    """The key as an echo may spell it that none of its runs matches."""
    wide = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in secret)
    return [secret[::-1], " ".join(secret), "-".join(secret), wide, "\u200b".join(secret)]


def echo_text(secret: str) -> str:
    """A message that holds the credential in every spelling, and other credential-shaped strings."""
    forms = spellings(secret)
    return (f"Incorrect API key provided: {forms[0]}. Shouted: {forms[1]}; quiet: {forms[2]}; odd: {forms[3]}; "
            f"masked: ...{forms[4]} ({forms[5]}, {forms[6]}); in a header: Authorization: Bearer {secret}; "
            f"in a URL: https://example.com/v1?key={forms[7]}; cut: {forms[8]}. and {forms[9]}/{forms[10]}; "
            f"also seen: {', '.join(OTHER_SECRETS)}")  # fmt: skip


def junk_retry_after(secret: str) -> dict[str, str]:
    """Retry-After values an upstream may send, by name: only ``digits`` and ``date`` may pass on."""
    return {
        "digits": "120",
        "date": "Wed, 21 Oct 2037 07:28:00 GMT",
        "spaced": "  30  ",
        "bearer": f"Bearer {secret}",
        "key": secret,
        "key_then_date": f"{secret}, 21 Oct 2037 07:28:00 GMT",
        "date_then_key": f"Wed, 21 Oct 2037 07:28:00 GMT {secret}",
        "arabic_digits": "\u0663\u0660",
        "superscript": "\u00b2",
        "negative": "-5",
        "fraction": "1.5",
        "huge": "9" * 40,
        "words": "in a while",
        "empty": "",
        "list": "5, 6",
    }


def _leaky_headers(secret: str, retry: str | None) -> dict[str, str]:
    headers = {"X-Echo": secret, "WWW-Authenticate": f'Bearer realm="{secret}"', "X-Upper": secret.upper(),
               "Set-Cookie": f"session={secret}"}  # fmt: skip
    if retry is not None:
        headers["Retry-After"] = retry
    return headers


class ChatLeaky(Recording):
    """Chat completions that answer with the caller's key everywhere. The question picks the answer:
    ``<status> [retry-name]`` (an error of that status whose message, code and type echo the key,
    ``junk_retry_after()[retry-name]`` as Retry-After), ``text <status>`` (a text/plain body),
    ``html <status>``, ``big <status>`` and ``bightml <status>`` (error answers past 64 kB),
    ``stream`` (a 200 stream: text, then an error chunk echoing the key), ``whole``
    (a 200 body holding only such an error)."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT_PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        question = chat_question(body)
        self._record(question, body, request)
        secret = request.headers.get("Authorization", "").removeprefix("Bearer ")
        words = question.split()
        retry = junk_retry_after(secret).get(words[1]) if len(words) > 1 else None
        headers = _leaky_headers(secret, retry)
        error = {"error": {"message": echo_text(secret), "type": secret.swapcase(), "param": secret[-8:],
                           "code": secret}}  # fmt: skip
        if words[0] == "otherwise":  # the key spelled otherwise: backwards, spaced, dashed, full-width, zero-width
            return _json(int(words[1]), {"error": {"message": "Incorrect API key provided: " + " / ".join(
                otherwise_spellings(secret))}})  # fmt: skip
        if words[0] == "big":  # an error answer past 64 kB: its status and Retry-After still count
            huge = {"error": {"message": "Rate limit reached " + "x" * 100_000, "code": "rate_limit_exceeded"}}
            return _json(int(words[1]), huge, {"Retry-After": "7"})
        if words[0] == "bightml":
            return web.Response(status=int(words[1]), text="<p>" + "no " * 40_000 + "</p>", content_type="text/html")
        if words[0] in ("text", "html"):
            kind = "text/plain" if words[0] == "text" else "text/html"
            return web.Response(status=int(words[1]), text=f"<p>{echo_text(secret)}</p>", content_type=kind,
                                headers=_leaky_headers(secret, None))  # fmt: skip
        if words[0] == "stream":
            return await _stream_frames(request, [_chunk({"role": "assistant", "content": "Hello"}),
                                                  orjson.dumps(error)])  # fmt: skip
        if words[0] == "whole":
            return _json(200, error, headers)
        if words[0] == "entities":  # an HTML error page spelling the key as character references
            spelled = "".join(f"&#{ord(c)};" for c in secret)
            return web.Response(status=int(words[1]), text=f"<p>bad key {spelled}</p>", content_type="text/html")
        if words[0] == "goescapes":  # Go's JSON (Ollama): < > & escaped, and a number past 64 bits
            raw = ('{"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": '
                   '{"role": "assistant", "content": "a \\u003cb\\u003e"}, "finish_reason": "stop"}], '
                   '"x_big": 12345678901234567890123}')  # fmt: skip
            return web.Response(status=200, body=raw.encode(), content_type="application/json")
        if words[0] == "escaped":  # a good reply whose text spells the key in JSON \u escapes
            escaped = "".join(f"\\u{ord(c):04x}" for c in secret)
            raw = ('{"id": "x", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": '
                   '{"role": "assistant", "content": "E:' + escaped + '"}, "finish_reason": "stop"}]}')  # fmt: skip
            if body.get("stream"):
                chunk = '{"id": "x", "choices": [{"index": 0, "delta": {"content": "E:' + escaped + '"}}]}'
                return await _stream_frames(request, [chunk.encode(), b"[DONE]"])
            return web.Response(status=200, body=raw.encode(), content_type="application/json")
        if words[0] == "labels":  # a good reply whose id and model are the key, in other spellings
            if body.get("stream"):
                first = _chunk({"role": "assistant", "content": "Hello"}, id=secret, model=secret.upper())
                last = {"index": 0, "delta": {"content": " there"}, "finish_reason": secret.lower()}
                frames = [first, orjson.dumps({"id": secret[3:], "model": "model-" + secret[-8:], "choices": [last]}),
                          b"[DONE]"]  # fmt: skip
                return await _stream_frames(request, frames)
            reply = {"id": secret[:-1], "object": "chat.completion", "model": "model-" + secret[-8:],
                     "system_fingerprint": secret[3:],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                  "finish_reason": secret}]}  # fmt: skip
            return _json(200, reply, {})
        if words[0] == "code":  # the key as the code alone, as a 401 would carry it; cut, as the param
            return _json(int(words[1]), {"error": {"message": "no", "code": secret, "param": secret[3:]}}, headers)
        return _json(int(words[0]), error, headers)


class WebLeaky(WebRecording):
    """The web backend echoing the access token: ``<status> [retry-name|obj]`` answers that status
    with ``{"detail": ...}`` holding the token (``obj``: as an object's message and code); ``frame``
    and ``typed`` stream text and then an error frame (``{"error": ...}``, ``{"type": "error", ...}``)
    holding it; ``message`` puts it in an error object's message."""

    async def answer(self, request: web.Request, body: Any, question: str, n: int) -> web.StreamResponse:
        secret = request.headers.get("Authorization", "").removeprefix("Bearer ")
        words = question.split()
        conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.given[question] = (conversation_id, message_id)
        if words[0] in ("frame", "typed", "message"):
            error: Any = {"message": None, "conversation_id": conversation_id, "error": echo_text(secret)}
            if words[0] == "typed":
                error = {"type": "error", "message": echo_text(secret)}
            elif words[0] == "message":
                error = {"message": None, "error": {"message": echo_text(secret), "code": secret}}
            frames = [*web_prelude(conversation_id, message_id, ["Hello", " there"]), sse(error)]
            return await web_stream(request, frames + web_ending(conversation_id))
        retry = junk_retry_after(secret).get(words[1]) if len(words) > 1 else None
        detail: Any = echo_text(secret)
        if "obj" in words:
            detail = {"message": echo_text(secret), "code": secret}
        return _json(int(words[0]), {"detail": detail}, _leaky_headers(secret, retry))
