"""The pure stream parsers, fed whole, byte by byte, and in random chunk sizes; and fed every hostile
shape an upstream can send (issue 8 §4): each frame is read, or it is a ``BadGateway`` — never any
other exception."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chatgpt_server.errors import BadGateway, BadRequest, Forbidden, ServiceError, TooManyRequests
from chatgpt_server.redact import SECRETISH, has_secretish_word, holds_secret, masked
from chatgpt_server.upstreams.chat_completions import ChunkParser, parse_completion, usage_of
from chatgpt_server.upstreams.codex import CodexParser
from chatgpt_server.upstreams.http import scrub, shown_label, transport_error
from chatgpt_server.upstreams.sse import LineDecoder, SSEDecoder, SSEEvent
from chatgpt_server.upstreams.web_reply import WebReplyError, WebReplyParser
from chatgpt_server.upstreams.wire import NotHTTP


def splits(data: bytes, seed: int) -> list[list[bytes]]:
    """The same bytes cut three ways: whole, byte by byte, and at random places."""
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, 17)
        chunks.append(data[i : i + n])
        i += n
    return [[data], [data[i : i + 1] for i in range(len(data))], chunks]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out = [e for piece in pieces for e in decoder.feed(piece)]
    return out + decoder.flush()


def test_sse_events_whatever_the_chunking() -> None:
    data = (
        b": comment\r\n"
        b'event: delta_encoding\r\ndata: "v1"\r\n\r\n'
        b'data: {"a": "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\xa7\xa0"}\n\n'
        b"event: delta\rdata: line one\rdata: line two\r\r"
        b"data:no-space\n\n"
        b"data: [DONE]\n\n"
    )
    expected = [
        SSEEvent("delta_encoding", '"v1"'),
        SSEEvent("message", '{"a": "你好 🧠"}'),
        SSEEvent("delta", "line one\nline two"),
        SSEEvent("message", "no-space"),
        SSEEvent("message", "[DONE]"),
    ]
    for seed in range(20):
        for pieces in splits(data, seed):
            assert decode(pieces) == expected


def test_sse_only_cr_and_lf_end_lines() -> None:
    # U+2028 and form feeds may appear inside JSON data; they must not split a line.
    data = 'data: {"t": "a\u2028b\x0cc"}\n\n'.encode()
    assert decode([data]) == [SSEEvent("message", '{"t": "a\u2028b\x0cc"}')]


def test_stream_without_final_blank_line_is_flushed() -> None:
    assert decode([b"data: last"]) == [SSEEvent("message", "last")]


def test_line_decoder_is_linear_in_a_long_line() -> None:
    decoder = LineDecoder()
    line = b"x" * 400_000
    started = time.perf_counter()
    for i in range(0, len(line), 4):
        assert decoder.feed(line[i : i + 4]) == []
    assert decoder.feed(b"\n") == ["x" * 400_000]
    assert time.perf_counter() - started < 2.0  # quadratic re-scanning would take minutes


def delta_stream(text_pieces: list[str]) -> bytes:
    frames = [b'event: delta_encoding\ndata: "v1"\n\n',
              b'data: {"type": "input_message", "input_message": {"author": {"role": "user"}}}\n\n']  # fmt: skip
    message: dict[str, Any] = {"id": "m-1", "author": {"role": "assistant"},
                               "content": {"content_type": "text", "parts": [""]}, "status": "in_progress"}  # fmt: skip
    frames.append(b"event: delta\ndata: " + orjson.dumps({"p": "", "o": "add", "v": {"message": message,
                  "conversation_id": "c-1"}}) + b"\n\n")  # fmt: skip
    for i, piece in enumerate(text_pieces):
        op: dict[str, Any]
        if i == 0:
            op = {"p": "/message/content/parts/0", "o": "append", "v": piece}
        elif i == len(text_pieces) - 1:
            op = {"p": "", "o": "patch", "v": [
                {"p": "/message/content/parts/0", "o": "append", "v": piece},
                {"p": "/message/status", "o": "replace", "v": "finished_successfully"}]}  # fmt: skip
        else:
            op = {"v": piece}
        frames.append(b"event: delta\ndata: " + orjson.dumps(op) + b"\n\n")
    frames.append(b'data: {"type": "message_stream_complete", "conversation_id": "c-1"}\n\n')
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)


def classic_stream(text_pieces: list[str]) -> bytes:
    frames = [b'data: {"message": {"id": "u-1", "author": {"role": "user"}, "content": {"content_type": "text", '
              b'"parts": ["question"]}}, "conversation_id": "c-1", "error": null}\n\n']  # fmt: skip
    so_far = ""
    for piece in text_pieces:
        so_far += piece
        frame = {"message": {"id": "m-1", "author": {"role": "assistant"},
                             "content": {"content_type": "text", "parts": [so_far]}},
                 "conversation_id": "c-1", "error": None}  # fmt: skip
        frames.append(b"data: " + orjson.dumps(frame) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return b"".join(frames)


def parse(pieces: list[bytes]) -> tuple[WebReplyParser, list[str]]:
    decoder, parser, added = SSEDecoder(), WebReplyParser(), []
    for piece in pieces:
        for event in decoder.feed(piece):
            added.append(parser.feed(event))
    for event in decoder.flush():
        added.append(parser.feed(event))
    return parser, [a for a in added if a]


@pytest.mark.parametrize("form", [delta_stream, classic_stream], ids=["delta", "classic"])
def test_web_reply_whatever_the_chunking(form) -> None:  # type: ignore[no-untyped-def]
    pieces = ["Hel", "lo, ", "wor", "ld ", "你好", " 🧠", "!"]
    data = form(pieces)
    for seed in range(10):
        for chunks in splits(data, seed):
            parser, added = parse(chunks)
            assert added == pieces
            assert parser.text == "Hello, world 你好 🧠!"
            assert (parser.message_id, parser.conversation_id, parser.done) == ("m-1", "c-1", True)


def test_delta_encoding_is_detected() -> None:
    parser, _ = parse([delta_stream(["a", "b"])])
    assert parser.encoding == "v1"
    parser, _ = parse([classic_stream(["a", "b"])])
    assert parser.encoding == "classic"


def test_delta_parser_is_linear_in_the_reply_size() -> None:
    pieces = ["word "] * 40_000
    data = delta_stream(pieces)
    started = time.perf_counter()
    parser, _ = parse([data[i : i + 4096] for i in range(0, len(data), 4096)])
    assert len(parser.text) == 200_000
    assert time.perf_counter() - started < 2.0


def test_error_frames_raise() -> None:
    parser = WebReplyParser()
    with pytest.raises(WebReplyError):
        parser.feed(SSEEvent("message", '{"message": null, "error": "Something went wrong"}'))
    with pytest.raises(WebReplyError):
        parser.feed(SSEEvent("message", "{not json"))


def test_tool_and_system_messages_are_not_the_reply() -> None:
    parser = WebReplyParser()
    tool = {"message": {"id": "t", "author": {"role": "tool"}, "content": {"content_type": "text", "parts": ["x"]}}}
    assert parser.feed(SSEEvent("delta", orjson.dumps({"p": "", "o": "add", "v": tool}).decode())) == ""
    assert parser.feed(SSEEvent("delta", '{"p": "/message/content/parts/0", "o": "append", "v": "y"}')) == ""
    assert parser.text == "" and parser.message_id is None


# -- hostile frames: every parser reads a frame or raises BadGateway, never anything else ---------
HOST = "upstream.test"
SECRET = "sk-parser-0123456789abcdefSECRET"
TEN_KB = "i" * 10240


def deep(levels: int, inner: str = "") -> str:
    return "[" * levels + inner + "]" * levels


def nested(levels: int) -> Any:
    """A list nested ``levels`` deep, built without recursion."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def outcome(read: Callable[[], Any]) -> str:
    """ "ok" if ``read`` returned, "502" if it raised BadGateway; anything else propagates (and fails)."""
    try:
        read()
    except BadGateway:
        return "502"
    return "ok"


def primed_chunks() -> ChunkParser:
    """A chat-completions stream parser that already holds text and a tool call at index 0."""
    parser = ChunkParser(HOST, SECRET)
    parser.feed('{"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}')
    parser.feed('{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", '
                '"function": {"name": "f", "arguments": "{"}}]}}]}')  # fmt: skip
    return parser


def calls_of(*deltas: list[dict[str, Any]]) -> list[tuple[int, str, str, str | None]]:
    parser = ChunkParser(HOST, SECRET)
    for calls in deltas:
        parser.feed(json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}))
    return [(c.index, c.name, c.arguments, c.upstream_id) for c in parser.calls.values()]


def test_tool_call_deltas_without_an_index_are_told_apart_by_their_ids() -> None:
    """Gemini's OpenAI layer sends parallel calls without ``index``: a delta naming a new id starts the
    next call, one without an id (or with the same one) goes on with the last, never one call whose
    arguments are two calls' run together."""
    a = {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    b = {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}
    assert calls_of([a], [b]) == [(0, "get_weather", '{"city": "Paris"}', "call_A"),
                                  (1, "get_time", '{"tz": "CET"}', "call_B")]  # fmt: skip
    assert calls_of([a, b]) == calls_of([a], [b])
    first = {"id": "call_A", "function": {"name": "f", "arguments": '{"a"'}}
    assert calls_of([first], [{"function": {"arguments": ": 1}"}}], [{"id": "call_A", "function": {"arguments": ""}}]) \
        == [(0, "f", '{"a": 1}', "call_A")]  # fmt: skip
    # Indexed deltas are placed by their index, as before.
    assert calls_of([{**a, "index": 3}], [{"index": 3, "function": {"arguments": " "}}]) == [
        (3, "get_weather", '{"city": "Paris"} ', "call_A")
    ]


def test_a_new_call_at_an_index_in_use_is_the_next_call_and_pieces_of_one_stay_one() -> None:
    """Ollama numbers every call of a parallel batch 0: a delta with a new id and a function name at an
    index a call holds is the next call. A piece of the same call stays with it whatever id it carries
    (empty, or one of its own, as some servers give each piece); one naming an earlier call's id goes
    back to that call."""
    a = {"index": 0, "id": "call_a", "function": {"name": "fa", "arguments": "{}"}}
    b = {"index": 0, "id": "call_b", "function": {"name": "fb", "arguments": '{"b": 1}'}}
    assert calls_of([a], [b]) == [(0, "fa", "{}", "call_a"), (1, "fb", '{"b": 1}', "call_b")]
    start = {"index": 0, "id": "call_x", "function": {"name": "f", "arguments": '{"x"'}}
    for other_id in ("", "chunk-7", None):
        piece = {"index": 0, "id": other_id, "function": {"arguments": ": 1}"}}
        assert calls_of([start], [piece]) == [(0, "f", '{"x": 1}', "call_x")], other_id
    back = {"index": 0, "id": "call_a", "function": {"arguments": " "}}
    assert calls_of([a], [b], [back]) == [(0, "fa", "{} ", "call_a"), (1, "fb", '{"b": 1}', "call_b")]


def chunk(delta: Any = None, **fields: Any) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": "x"} if delta is None else delta}], **fields})


# (frame, expected outcome) for a fresh parser and for one that already has text and a tool call.
HOSTILE_CHUNKS: list[tuple[str, str]] = [
    ('{"choices": {"0": {"delta": {"content": "x"}}}}', "502"),
    ('{"choices": "all"}', "502"),
    ('{"choices": 7}', "502"),
    ('{"choices": [1, "two", null, []]}', "502"),  # passed on, they would break a client's choices[0].delta
    ('{"choices": [{"index": [0], "delta": {"content": "x"}}]}', "502"),
    ('{"choices": [{"index": {"a": 1}, "delta": {"content": "x"}}]}', "502"),
    ('{"error": "the model fell over"}', "502"),
    ('{"error": 500}', "502"),
    ('{"error": ["a", "b"]}', "502"),
    ('{"error": {"message": {"nested": true}}}', "502"),
    ('{"error": {"message": "' + SECRET + '", "code": "' + SECRET.upper() + '"}}', "502"),
    ('{"error": ' + deep(1000) + "}", "502"),
    ('{"error": {"message": ' + deep(900) + "}}", "502"),
    (chunk("more text"), "502"),
    (chunk(["more", "text"]), "502"),
    (chunk(7), "502"),
    (chunk({"content": 42}), "502"),
    (chunk({"content": ["a"]}), "502"),
    (chunk({"content": {"text": "a"}}), "502"),
    (chunk({"content": None}), "ok"),
    (chunk({"tool_calls": {"0": {}}}), "502"),
    (chunk({"tool_calls": [7]}), "502"),
    (chunk({"tool_calls": [{"index": "0", "function": {"name": "f"}}]}), "502"),
    (chunk({"tool_calls": [{"index": -1, "function": {"name": "f"}}]}), "502"),
    (chunk({"tool_calls": [{"index": 2**62, "function": {"name": "f"}}]}), "502"),
    (chunk({"tool_calls": [{"index": 1.0, "function": {"name": "f"}}]}), "502"),
    (chunk({"tool_calls": [{"index": True, "function": {"name": "f"}}]}), "502"),
    (chunk({"tool_calls": [{"index": 3, "function": ["f"]}]}), "502"),
    (chunk({"tool_calls": [{"index": 3, "function": {"name": 5}}]}), "502"),
    (chunk({"tool_calls": [{"index": 3, "function": {"arguments": "{}"}}]}), "502"),
    (chunk({"tool_calls": [{"index": 3, "id": TEN_KB, "function": {"name": TEN_KB, "arguments": {"x": 1}}}]}), "ok"),
    # Arguments as a JSON value are written as its text, as a whole reply's are: unless nested deeper
    # than the encoder goes.
    (chunk({"tool_calls": [{"index": 3, "function": {"name": "f", "arguments": nested(200)}}]}), "ok"),
    (chunk({"tool_calls": [{"index": 3, "function": {"name": "f", "arguments": nested(300)}}]}), "502"),
    (chunk(id=TEN_KB, model=TEN_KB, created=True), "ok"),
    (chunk(id={"a": 1}, model=[1], created=2**63, usage={"prompt_tokens": "5", "completion_tokens": -1}), "ok"),
    (chunk(usage=[1, 2]), "ok"),
    ('{"choices": [{"index": 0, "finish_reason": ["stop"], "delta": {}}]}', "ok"),
    ("[1, 2, 3]", "502"),
    ('"a string"', "502"),
    ("null", "502"),
    ("42", "502"),
    ("{not json", "502"),
    ("", "502"),
    ("[DONE", "502"),
    ("NaN", "502"),
    (deep(5000), "502"),
    ('{"a": ' * 1100 + "1" + "}" * 1100, "502"),
    ('{"id": "\\ud800", "choices": []}', "502"),  # a lone surrogate, escaped: not text orjson reads
    ('{"choices": [{"delta": {"content": "\\u0000\\u2028"}}]}', "ok"),
    ('{"choices": [{"delta": {"content": "x"}}], "created": 1e400}', "502"),  # no float: JSON orjson refuses
]


@pytest.mark.parametrize(("frame", "expected"), HOSTILE_CHUNKS, ids=range(len(HOSTILE_CHUNKS)))
def test_hostile_chunks_are_read_or_a_bad_gateway(frame: str, expected: str) -> None:
    for parser in (ChunkParser(HOST, SECRET), primed_chunks()):
        assert outcome(lambda p=parser: p.feed(frame)) == expected  # type: ignore[misc]
        assert SECRET.lower() not in repr(getattr(parser, "error", "")).lower()


def test_chunk_parser_keeps_ids_as_short_labels_only() -> None:
    parser = ChunkParser(HOST, SECRET)
    parser.feed(chunk(id=TEN_KB, model=TEN_KB, created=True))
    assert (parser.id, parser.model, parser.created) == (None, None, None)
    parser.feed(chunk(id="chatcmpl-7", model="llama3", created=1700000000))
    assert (parser.id, parser.model, parser.created) == ("chatcmpl-7", "llama3", 1700000000)


def test_a_stream_error_never_carries_the_key() -> None:
    for form in (SECRET, SECRET.upper(), SECRET.swapcase(), SECRET[-8:].swapcase()):
        with pytest.raises(BadGateway) as caught:
            ChunkParser(HOST, SECRET).feed(json.dumps({"error": {"message": f"bad key {form}", "code": form}}))
        assert SECRET[-8:].lower() not in str(caught.value.params).lower()


def completion(message: Any = None, **fields: Any) -> bytes:
    message = {"role": "assistant", "content": "hi"} if message is None else message
    return json.dumps({"id": "chatcmpl-1", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                       **fields}).encode()  # fmt: skip


HOSTILE_COMPLETIONS: list[tuple[bytes, str]] = [
    (b'{"choices": {"0": {"message": {"content": "hi"}}}}', "502"),
    (b'{"choices": []}', "502"),
    (b'{"choices": [1]}', "502"),
    (b'{"error": "the model fell over"}', "502"),
    (b'{"error": {"message": "x"}}', "502"),
    (completion("hi"), "502"),
    (completion({"content": 42}), "502"),
    (completion({"content": ["a"]}), "502"),
    (completion({"content": None, "refusal": 5}), "ok"),
    (completion({"content": None, "tool_calls": {"name": "f"}}), "502"),
    (completion({"content": None, "tool_calls": [1]}), "502"),
    (completion({"content": None, "tool_calls": [{"function": "f"}]}), "502"),
    (completion({"content": None, "tool_calls": [{"function": {"name": 5}}]}), "502"),
    (completion({"content": None, "tool_calls": [{"function": {"name": ""}}]}), "502"),  # as streamed
    (completion({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"x": [1]}}}]}), "ok"),
    (completion({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": nested(200)}}]}), "ok"),
    # Arguments should be text; an object is encoded, unless it is nested deeper than the encoder goes.
    (
        completion({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": "ARGS"}}]}).replace(
            b'"ARGS"', deep(400).encode()
        ),
        "502",
    ),
    (
        completion({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": "ARGS"}}]}).replace(
            b'"ARGS"', deep(1000).encode()
        ),
        "502",
    ),
    (completion(id=TEN_KB, model=TEN_KB, created=True, usage={"prompt_tokens": 2**63}), "ok"),
    (completion(id=[1], model={"a": 1}, created="now", usage="lots"), "ok"),
    (b"[1, 2]", "502"),
    (b"<html></html>", "502"),
    (b"", "502"),
    (b"\xff\xfe\x00", "502"),
    (b'{"id": "\xff", "choices": []}', "502"),
    (deep(5000).encode(), "502"),
    (b'{"choices": [{"message": {"content": "hi"}}], "created": 1e400}', "502"),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE_COMPLETIONS, ids=range(len(HOSTILE_COMPLETIONS)))
def test_hostile_completions_are_read_or_a_bad_gateway(raw: bytes, expected: str) -> None:
    assert outcome(lambda: parse_completion(raw, HOST)) == expected


@pytest.mark.parametrize(("index", "expected"), [(0, "A"), (0.0, "A"), (None, "A"), ("0", BadGateway),
                                                 (True, BadGateway), ([0], BadGateway)])  # fmt: skip
def test_a_choice_index_is_a_number_or_refused_never_dropped(index: Any, expected: Any) -> None:
    """A stream's or a whole reply's choice whose index is not a whole number is a 502, not a choice
    of another n dropped (its text lost); a whole reply's first choice is the one of index 0."""
    stream = ChunkParser(HOST, SECRET)
    frame = json.dumps({"choices": [{"index": index, "delta": {"content": "A"}}]})
    whole = json.dumps({"choices": [{"index": 1, "message": {"content": "WRONG"}},
                                    {"index": index, "message": {"content": "A"}}]}).encode()  # fmt: skip
    if expected is BadGateway:
        with pytest.raises(BadGateway):
            stream.feed(frame)
        with pytest.raises(BadGateway):
            parse_completion(whole, HOST)
    else:
        stream.feed(frame)
        assert stream.pieces == ["A"] and parse_completion(whole, HOST)["text"] == "A"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ('{"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}', TooManyRequests),
        ('{"message": "slow down", "code": "rate_limit_exceeded"}', TooManyRequests),
        ('{"message": "too long", "code": "context_length_exceeded"}', BadRequest),
        ('{"message": "limited", "code": 429}', TooManyRequests),
        ('{"code": "insufficient_quota", "message": ' + deep(300) + "}", TooManyRequests),
        ('{"message": "the model fell over", "code": "server_error"}', BadGateway),
        ('{"message": "odd", "code": 500}', BadGateway),
        ('"a bare string"', BadGateway),
    ],
)
def test_an_error_inside_a_success_answer_keeps_its_meaning(error: str, expected: type[ServiceError]) -> None:
    """An error object in a stream's chunk, in an error event, or in a 200's body: a quota, a rate limit or a
    context too long is as precise as when the upstream answers with its status (the SDK's classes); anything
    else a 502."""
    data = '{"error": ' + error + "}"
    for event in ("message", "error"):
        with pytest.raises(ServiceError) as raised:
            ChunkParser(HOST, SECRET).feed(data, event)
        assert type(raised.value) is expected, (event, raised.value.key)
    with pytest.raises(ServiceError) as whole:
        parse_completion(data.encode(), HOST, SECRET)
    assert type(whole.value) is expected


def test_a_whole_reply_with_a_byte_order_mark_or_bad_utf8_is_read_as_a_stream_is() -> None:
    assert parse_completion(b"\xef\xbb\xbf" + completion(), HOST)["text"] == "hi"
    bad = completion({"role": "assistant", "content": "caf\u00e9"}).replace(b"\\u00e9", b"\xe9")
    assert parse_completion(bad, HOST)["text"] == "caf\ufffd"


def test_completion_keeps_ids_as_short_labels_only() -> None:
    parsed = parse_completion(completion(id=TEN_KB, model=TEN_KB, created=True), HOST)
    assert (parsed["id"], parsed["model"], parsed["created"]) == (None, None, None)


def web_envelope(message_id: Any = "m-1", conversation_id: Any = "c-1", parts: Any = None) -> dict[str, Any]:
    message = {"id": message_id, "author": {"role": "assistant"},
               "content": {"content_type": "text", "parts": [""] if parts is None else parts}}  # fmt: skip
    return {"message": message, "conversation_id": conversation_id}


def primed_web(classic: bool = False) -> WebReplyParser:
    """A web reply parser that already holds "Hello there", in the delta or the classic form."""
    parser = WebReplyParser()
    if classic:
        parser.feed(SSEEvent("message", json.dumps(web_envelope(parts=["Hello there"]))))
    else:
        parser.feed(SSEEvent("delta_encoding", '"v1"'))
        parser.feed(SSEEvent("delta", json.dumps({"p": "", "o": "add", "v": web_envelope()})))
        parser.feed(SSEEvent("delta", '{"p": "/message/content/parts/0", "o": "append", "v": "Hello"}'))
        parser.feed(SSEEvent("delta", '{"v": " there"}'))
    assert parser.text == "Hello there"
    return parser


def delta(op: Any) -> SSEEvent:
    return SSEEvent("delta", op if isinstance(op, str) else json.dumps(op))


TEXT = "/message/content/parts/0"
HOSTILE_WEB: list[tuple[SSEEvent, str]] = [
    (delta({"p": "", "o": "add", "v": web_envelope(parts={"0": "x"})}), "502"),
    (delta({"p": "", "o": "add", "v": web_envelope(parts="all")}), "502"),
    (SSEEvent("message", json.dumps(web_envelope(parts={"0": "x"}))), "502"),
    (delta({"p": "/message", "o": "replace", "v": web_envelope(parts={"0": "x"})["message"]}), "502"),
    (delta({"p": "", "o": "patch", "v": [1, "two", None]}), "502"),
    (delta({"p": "", "o": "patch", "v": {"p": TEXT, "o": "append", "v": "!"}}), "502"),
    (delta({"o": "patch", "v": "everything"}), "502"),
    (delta({"p": "", "o": "patch", "v": [{"p": 5, "o": "append", "v": "!"}]}), "502"),
    (delta({"p": 7, "o": "append", "v": "!"}), "502"),
    (delta({"p": [TEXT], "o": "append", "v": "!"}), "502"),
    (delta({"p": None, "o": "append", "v": "!"}), "502"),
    (delta({"p": TEXT, "o": 1, "v": "!"}), "502"),
    (delta({"p": "/conversation_id", "o": "replace", "v": 12345}), "502"),
    (delta({"p": "/conversation_id", "o": "replace", "v": TEN_KB}), "502"),
    (delta({"p": "", "o": "add", "v": web_envelope(conversation_id={"id": "c"})}), "502"),
    (SSEEvent("message", json.dumps(web_envelope(conversation_id=["c"]))), "502"),
    (delta({"p": "", "o": "add", "v": web_envelope(message_id=TEN_KB)}), "ok"),  # a label dropped, not an error
    (delta({"p": "", "o": "add", "v": web_envelope(message_id={"a": 1})}), "ok"),
    (SSEEvent("message", '{"message": null, "error": "Something went wrong"}'), "502"),
    (SSEEvent("message", '{"error": {"code": 5, "message": ["x"]}}'), "502"),
    (SSEEvent("message", '{"error": ' + deep(1000) + "}"), "502"),
    (SSEEvent("message", '{"type": "error", "message": {"deep": true}}'), "502"),
    (SSEEvent("message", '{"type": 5}'), "ok"),
    (SSEEvent("message", '{"type": ["error"]}'), "ok"),
    (delta("{not json"), "502"),
    (delta(deep(5000)), "502"),
    (delta("[1, 2]"), "ok"),
    (delta("null"), "ok"),
    (delta('"text"'), "ok"),
    (SSEEvent("delta_encoding", '{"v": 1}'), "ok"),
    (SSEEvent("delta_encoding", deep(900)), "ok"),
    (delta({"p": TEXT, "o": "append", "v": 5}), "ok"),
    (delta({"p": TEXT, "o": "append", "v": {"a": 1}}), "ok"),
    (delta({"p": TEXT, "o": "replace", "v": None}), "ok"),
    (delta({"p": TEXT, "o": "truncate", "v": -3}), "ok"),
    (delta({"p": TEXT, "o": "truncate", "v": True}), "ok"),
    (delta({"p": TEXT, "o": "remove"}), "ok"),
    (delta({"p": TEXT, "o": "unheard-of", "v": "!"}), "ok"),
    (delta({"p": "/message/content/parts/\u00b2", "o": "add", "v": "!"}), "ok"),
    (delta({"p": "/message/content/parts/" + "9" * 5000, "o": "add", "v": "!"}), "ok"),
    (delta({"p": "/message/content/parts/-", "o": "add", "v": "!"}), "ok"),
    (delta({"p": "/message/content/parts/01", "o": "replace", "v": "!"}), "ok"),
    (delta({"p": "/message/author/role", "o": "replace", "v": ["assistant"]}), "ok"),
    (delta({"p": "/message", "o": "replace", "v": 5}), "ok"),
    (delta({"p": "/message/content", "o": "replace", "v": "flat"}), "ok"),
    (delta({"p": "/a/b/c", "o": "append", "v": "!"}), "ok"),
    (delta({"p": "no-slash", "o": "add", "v": "!"}), "ok"),
    (delta({"p": "/~", "o": "add", "v": "!"}), "ok"),
    (delta({"v": {"a": 1}}), "ok"),
    (delta({"v": None}), "ok"),
    (delta({"p": "", "o": "add", "v": [1]}), "ok"),
    (delta({"p": "", "o": "replace", "v": None}), "ok"),
    (SSEEvent("message", json.dumps({"message": 5, "conversation_id": "c-1"})), "ok"),
    (SSEEvent("message", json.dumps({"message": {"author": "assistant", "content": "x"}})), "ok"),
    (SSEEvent("message", json.dumps(web_envelope(parts=[5]))), "ok"),
    (SSEEvent("message", "[DONE]"), "ok"),
    (SSEEvent("message", ""), "ok"),
]


@pytest.mark.parametrize(("event", "expected"), HOSTILE_WEB, ids=range(len(HOSTILE_WEB)))
def test_hostile_web_frames_are_read_or_a_bad_gateway(event: SSEEvent, expected: str) -> None:
    for parser in (WebReplyParser(), primed_web(), primed_web(classic=True)):
        assert outcome(lambda p=parser: p.feed(event)) == expected  # type: ignore[misc]
        if expected == "ok":  # a frame read is never a reason to lose or garble what arrived
            assert isinstance(parser.text, str)
            assert parser.conversation_id is None or len(parser.conversation_id) <= 200
            assert parser.message_id is None or len(parser.message_id) <= 200


def test_web_errors_name_the_host() -> None:
    parser = WebReplyParser(host=HOST)
    with pytest.raises(BadGateway) as caught:
        parser.feed(SSEEvent("message", '{"error": "Something went wrong"}'))
    assert caught.value.key == "upstream_bad_reply" and caught.value.params["host"] == HOST


CODEX_OK = "response.output_text.delta"
HOSTILE_CODEX: list[tuple[str, str, str]] = [
    ("", '{"type": 5}', "502"),
    ("", '{"type": ["x"]}', "502"),
    ("", "[1]", "502"),
    ("", "{not json", "502"),
    ("", deep(5000), "502"),
    ("", '{"type": "' + CODEX_OK + '", "delta": 5}', "502"),
    ("", '{"type": "' + CODEX_OK + '", "delta": null}', "502"),
    ("", '{"type": "' + CODEX_OK + '", "delta": ' + deep(900) + "}", "502"),
    ("", '{"type": "response.output_item.added", "item": [1]}', "ok"),
    ("", '{"type": "response.output_item.added", "item": {"type": "function_call", "name": 5}}', "502"),
    ("", '{"type": "response.output_item.added", "item": {"type": "function_call", "name": "g", "id": ["x"]}}', "ok"),
    (
        "",
        '{"type": "response.output_item.added", "item": {"type": "function_call", "name": "g", "id": '
        + deep(900)
        + "}}",
        "ok",
    ),
    ("", '{"type": "response.function_call_arguments.delta", "item_id": {"a": 1}, "delta": "x"}', "502"),
    ("", '{"type": "response.function_call_arguments.delta", "item_id": ' + deep(900) + ', "delta": "x"}', "502"),
    ("", '{"type": "response.function_call_arguments.delta", "item_id": "fc-1", "delta": 5}', "502"),
    (
        "",
        '{"type": "response.output_item.done", "item": {"type": "function_call", "id": "fc-1", "name": "f", '
        '"arguments": 5}}',
        "ok",
    ),
    ("", '{"type": "response.created", "response": {"id": "' + TEN_KB + '", "model": [1]}}', "ok"),
    ("", '{"type": "response.completed", "response": {"usage": {"input_tokens": "5"}}}', "ok"),
    ("", '{"type": "response.completed", "response": [1]}', "ok"),
    ("", '{"type": "response.incomplete"}', "ok"),
    ("", '{"type": "response.failed", "response": {"error": "string"}}', "502"),
    ("", '{"type": "response.failed", "response": 5}', "502"),
    ("", '{"type": "response.failed", "response": {"error": {"code": ' + deep(900) + "}}}", "502"),
    ("", '{"type": "response.failed", "response": {"error": {"code": "x", "message": "' + SECRET + '"}}}', "502"),
    ("", '{"type": "error", "error": 5}', "502"),
    ("", '{"type": "error", "code": {"a": 1}, "message": ' + deep(900) + "}", "502"),
    ("response.output_text.delta", '{"delta": "x"}', "ok"),
    ("x", '{"type": null}', "502"),
    ("", "[DONE]", "ok"),
]
# Mid-stream failures the backend names precisely are the error tree's own (a 400, a 429).
PRECISE_CODEX: list[tuple[str, type[ServiceError]]] = [
    ('{"type": "response.failed", "response": {"error": {"code": "context_length_exceeded"}}}', BadRequest),
    (
        '{"type": "response.failed", "response": {"error": {"code": "usage_limit_reached", '
        '"resets_in_seconds": 1e308}}}',
        TooManyRequests,
    ),
    ('{"type": "error", "error": {"type": "usage_limit_reached", "resets_at": true}}', TooManyRequests),
    ('{"type": "error", "error": {"code": "usage_not_included", "plan_type": ' + deep(900) + "}}", Forbidden),
]


def primed_codex() -> CodexParser:
    parser = CodexParser(HOST, SECRET)
    parser.feed("", '{"type": "response.output_item.added", "item": {"type": "function_call", "id": "fc-1", '
                    '"call_id": "call-1", "name": "f"}}')  # fmt: skip
    parser.feed("", '{"type": "response.output_text.delta", "delta": "Hi"}')
    return parser


def test_a_codex_message_told_only_whole_adds_its_text_once() -> None:
    """A message item's text is taken from its finished item only when no delta said it: a second
    message told whole still counts, a message said by deltas (named or not) is not said twice."""

    def done(item_id: str, text: str, kind: str = "output_text") -> str:
        part = {"type": kind, "text": text} if kind == "output_text" else {"type": kind, "refusal": text}
        return orjson.dumps({"type": "response.output_item.done",
                             "item": {"type": "message", "id": item_id, "content": [part]}}).decode()  # fmt: skip

    parser = CodexParser(HOST, SECRET)
    parser.feed("", '{"type": "response.output_text.delta", "item_id": "m1", "delta": "First."}')
    parser.feed("", done("m1", "First."))
    parser.feed("", done("m2", " Second."))
    assert "".join(parser.pieces) == "First. Second." and not parser.refusal
    unnamed = CodexParser(HOST, SECRET)
    unnamed.feed("", '{"type": "response.output_text.delta", "delta": "Said."}')
    unnamed.feed("", done("m1", "Said."))
    assert "".join(unnamed.pieces) == "Said."
    refused = CodexParser(HOST, SECRET)
    refused.feed("", done("m1", "No.", "refusal"))
    assert refused.pieces == ["No."] and refused.refusal
    # Placed by output_index when the finished item carries no id: its own deltas' item, or another.
    placed = CodexParser(HOST, SECRET)
    placed.feed("", '{"type": "response.output_text.delta", "item_id": "m1", "output_index": 0, "delta": "One."}')
    for index, text in ((0, "One."), (1, " Two.")):
        placed.feed("", orjson.dumps({"type": "response.output_item.done", "output_index": index, "item": {
            "type": "message", "content": [{"type": "output_text", "text": text}]}}).decode())  # fmt: skip
    assert "".join(placed.pieces) == "One. Two."


def test_a_codex_reply_given_only_in_its_finished_response_is_read_and_incomplete_keeps_its_reason() -> None:
    whole = CodexParser(HOST, SECRET)
    call = {"type": "function_call", "id": "fc1", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'}
    output = [{"type": "message", "id": "m1", "content": [{"type": "output_text", "text": "Only here."}]}, call]
    whole.feed("", orjson.dumps({"type": "response.completed", "response": {"id": "r", "output": output}}).decode())
    assert "".join(whole.pieces) == "Only here." and whole.done
    assert [(c.name, c.arguments) for c in whole.tool_calls] == [("f", '{"a": 1}')]
    filtered = CodexParser(HOST, SECRET)
    filtered.feed("", '{"type": "response.output_text.delta", "delta": "Half"}')
    filtered.feed(
        "", '{"type": "response.incomplete", "response": {"incomplete_details": {"reason": "content_filter"}}}'
    )
    assert filtered.done and filtered.incomplete and filtered.incomplete_reason == "content_filter"


def test_a_codex_event_refused_is_refused_whole() -> None:
    """What an event carried before its fault (a message's text, a call) is not kept: the client is told
    none of it, and a failed reply is stored as it was told."""
    told = {"type": "message", "content": [{"type": "output_text", "text": "Told text"}]}
    nameless = {"type": "function_call", "id": "fc", "call_id": "c", "arguments": "{}"}
    named = {"type": "function_call", "id": "fc0", "call_id": "c0", "name": "f", "arguments": "{}"}
    for output in ([told, nameless], [named, nameless], [told, {"type": "message", "content": "plain"}]):
        parser = CodexParser(HOST, SECRET)
        with pytest.raises(BadGateway):
            parser.feed("", orjson.dumps({"type": "response.completed", "response": {"output": output}}).decode())
        assert (parser.pieces, parser.tool_calls, parser.done) == ([], [], False), output
    calling = CodexParser(HOST, SECRET)
    calling.feed("", orjson.dumps({"type": "response.output_item.added", "item": named}).decode())
    with pytest.raises(BadGateway):
        item = {"type": "message", "id": "m9", "content": [{"type": "output_text", "text": " more"}, 7]}
        calling.feed("", orjson.dumps({"type": "response.output_item.done", "item": item}).decode())
    assert calling.pieces == [] and [c.name for c in calling.tool_calls] == ["f"]


def test_a_codex_call_told_only_when_done_or_with_whole_arguments_is_kept() -> None:
    """A function call whose item comes only as ``output_item.done`` (after text), or whose arguments
    come whole on its item (a JSON value given as its text, as on every door), is a call with its
    arguments, never dropped or emptied."""

    def event(kind: str, item: dict[str, Any], index: int = 1) -> str:
        return orjson.dumps({"type": kind, "item": item, "output_index": index}).decode()

    late = CodexParser(HOST, SECRET)
    late.feed(
        "", '{"type": "response.output_text.delta", "item_id": "m1", "output_index": 0, "delta": "Let me check."}'
    )
    call = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "c1",
        "name": "get_weather",
        "arguments": '{"city":"Rome"}',
    }
    late.feed("", event("response.output_item.done", call))
    assert [(c.name, c.arguments) for c in late.tool_calls] == [("get_weather", '{"city":"Rome"}')]
    whole = CodexParser(HOST, SECRET)
    whole.feed("", event("response.output_item.added", {**call, "arguments": ""}))
    whole.feed("", event("response.output_item.done", {**call, "arguments": {"city": "Oslo"}}))
    assert [c.arguments for c in whole.tool_calls] == ['{"city":"Oslo"}']
    added = CodexParser(HOST, SECRET)
    added.feed("", event("response.output_item.added", {**call, "arguments": '{"city":"P"}'}))
    assert [c.arguments for c in added.tool_calls] == ['{"city":"P"}']


def test_a_codex_message_said_by_named_deltas_is_not_said_again_by_an_unnamed_done() -> None:
    parser = CodexParser(HOST, SECRET)
    parser.feed("", '{"type": "response.output_text.delta", "item_id": "msg_1", "delta": "Hello"}')
    parser.feed("", orjson.dumps({"type": "response.output_item.done", "output_index": 0, "item": {
        "type": "message", "content": [{"type": "output_text", "text": "Hello"}]}}).decode())  # fmt: skip
    assert "".join(parser.pieces) == "Hello"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([{"type": "text", "text": "Chat-style words"}], "Chat-style words"),
        ([{"type": "output_text", "text": "A"}, {"type": "refusal", "refusal": "B"}], "AB"),
        ("A plain string reply", BadGateway),
        ([{"type": "output_image", "url": "x"}], BadGateway),
        ([{"type": "output_text"}], BadGateway),
        ({"text": "an object"}, BadGateway),
    ],
)
def test_a_codex_message_is_text_parts_or_refused_never_an_empty_reply(content: Any, expected: Any) -> None:
    parser = CodexParser(HOST, SECRET)
    done = orjson.dumps({"type": "response.output_item.done", "item": {"type": "message", "content": content}})
    if expected is BadGateway:
        with pytest.raises(BadGateway):
            parser.feed("", done.decode())
        assert parser.pieces == []
    else:
        parser.feed("", done.decode())
        assert "".join(parser.pieces) == expected


@pytest.mark.parametrize(("name", "data", "expected"), HOSTILE_CODEX, ids=range(len(HOSTILE_CODEX)))
def test_hostile_codex_events_are_read_or_a_bad_gateway(name: str, data: str, expected: str) -> None:
    for parser in (CodexParser(HOST, SECRET), primed_codex()):
        assert outcome(lambda p=parser: p.feed(name, data)) == expected  # type: ignore[misc]


def test_a_codex_stream_of_more_tool_calls_than_a_model_makes_is_a_bad_gateway() -> None:
    parser = CodexParser(HOST, SECRET)
    added = '{"type": "response.output_item.added", "item": {"type": "function_call", "id": "fc-%d", "name": "f"}}'
    for i in range(128):
        parser.feed("", added % i)
    with pytest.raises(BadGateway):
        parser.feed("", added % 128)


@pytest.mark.parametrize(("data", "error"), PRECISE_CODEX, ids=range(len(PRECISE_CODEX)))
def test_codex_failures_named_by_the_backend_stay_precise(data: str, error: type[ServiceError]) -> None:
    with pytest.raises(error) as caught:
        CodexParser(HOST, SECRET).feed("", data)
    assert type(caught.value) is error


HOSTILE_SSE: list[bytes] = [
    b"\xff\xfe\xfd\n\n",
    b"data: \xc3\n\n",
    b"\x00\x00\x00",
    b"\r\r\r\n\n\r",
    b"data\n\n",
    b"data:\n\n",
    b":" * 10000,
    b"event: " + b"e" * 100000 + b"\ndata: x\n\n",
    b"data: " + b"x" * 200000,
    b"\n".join([b"data: line"] * 10000) + b"\n\n",
    b"id: 1\nretry: x\nfoo: bar\n\n",
    b"\xef\xbb\xbfdata: after a BOM\n\n",
]


@pytest.mark.parametrize("data", HOSTILE_SSE, ids=range(len(HOSTILE_SSE)))
def test_hostile_bytes_are_events_whatever_the_chunking(data: bytes) -> None:
    results = [decode(pieces) for pieces in splits(data, 1)]
    assert results[0] == results[1] == results[2]
    assert all(isinstance(e.event, str) and isinstance(e.data, str) for e in results[0])


def test_a_leading_byte_order_mark_is_ignored() -> None:
    assert decode([b"\xef\xbb\xbfdata: x\n\n"]) == [SSEEvent("message", "x")]
    assert decode([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [SSEEvent("message", "x")]
    assert decode([b"data: \xef\xbb\xbfx\n\n"]) == [SSEEvent("message", "\ufeffx")]  # only a leading one


# -- random JSON of every shape ------------------------------------------------------------------
FIELDS = ["id", "object", "model", "created", "choices", "index", "delta", "message", "content", "role", "tool_calls",
          "function", "name", "arguments", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "error",
          "refusal", "type", "p", "o", "v", "author", "parts", "content_type", "conversation_id", "status", "item",
          "item_id", "response", "output", "code", "input_tokens", "output_tokens", "total_tokens", "call_id",
          "resets_in_seconds", "resets_at", "plan_type", "detail", "end_turn", "metadata"]  # fmt: skip
WORDS = ["", "assistant", "user", "tool", "text", "function_call", "message", "[DONE]", TEXT, "/message", "",
         "/conversation_id", "/message/content/parts", "/message/content/parts/-", "/message/author/role", "append",
         "replace", "add", "patch", "truncate", "remove", "response.output_text.delta", "response.output_item.added",
         "response.function_call_arguments.delta", "response.output_item.done", "response.completed",
         "response.failed", "response.incomplete", "response.created", "error", "usage_limit_reached",
         "usage_not_included", "context_length_exceeded", "insufficient_quota", "stop", "length", "fc-1", "c-1",
         "m-1", "\u00b2", "9" * 30, "~1~0", "\x00", "\u2028", "\ud800", TEN_KB, SECRET, "Bearer " + SECRET]  # fmt: skip
SCALARS: list[Any] = [None, True, False, 0, 1, -1, 127, 128, 2**53, 2**63, 2**64, 2**70, -(2**70), 0.5, -0.0,
                      1e308, float("inf"), float("nan")]  # fmt: skip


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 5 or roll < 0.35:
        return rng.choice(SCALARS) if rng.random() < 0.4 else rng.choice(WORDS)
    if roll < 0.7:
        return {rng.choice(FIELDS): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    if roll < 0.97:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return nested(rng.choice([10, 300, 1100]))


VALID: list[Any] = [
    {"id": "chatcmpl-1", "model": "m", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant",
     "content": "x", "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]},
     "finish_reason": None}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
    {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x", "tool_calls": [
     {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}]},
    {"p": "", "o": "add", "v": web_envelope()},
    {"p": "", "o": "patch", "v": [{"p": TEXT, "o": "append", "v": "x"}, {"p": "/message/status", "o": "replace",
     "v": "finished_successfully"}]},
    web_envelope(parts=["x"]),
    {"type": "response.output_item.added", "item": {"type": "function_call", "id": "fc-1", "name": "f"}},
    {"type": "response.function_call_arguments.delta", "item_id": "fc-1", "delta": "{"},
    {"type": "response.completed", "response": {"id": "r", "usage": {"input_tokens": 1, "output_tokens": 1,
     "total_tokens": 2}}},
    {"type": "response.failed", "response": {"error": {"code": "usage_limit_reached", "resets_in_seconds": 5}}},
]  # fmt: skip


def mutate(rng: random.Random, value: Any) -> Any:
    """``value`` with one random subtree replaced by random JSON."""
    value = json.loads(json.dumps(value))
    if not isinstance(value, dict | list) or rng.random() < 0.1:
        return random_json(rng)
    node: Any = value
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return value
        key = rng.choice(keys)
        if isinstance(node[key], dict | list) and node[key] and rng.random() < 0.7:
            node = node[key]
            continue
        node[key] = random_json(rng)
        return value


def serialised(value: Any) -> str:
    try:
        return json.dumps(value)
    except RecursionError:
        return deep(1100)


def fuzz_outcome(read: Callable[..., Any], *args: Any, codex_failure: bool = False) -> str:
    """ "ok" or "502" as ``outcome``; "precise" for the error tree's own answer to a Codex failure event."""
    try:
        read(*args)
    except BadGateway:
        return "502"
    except ServiceError:
        if codex_failure:  # a response.failed / error event the backend names precisely
            return "precise"
        raise
    return "ok"


def test_random_json_of_every_shape_is_read_or_a_bad_gateway() -> None:
    rng = random.Random(8)
    counts: dict[str, int] = {}
    chunks, web, classic, codex = ChunkParser(HOST, SECRET), primed_web(), primed_web(classic=True), primed_codex()
    started = time.perf_counter()
    for n in range(4000):
        value = mutate(rng, rng.choice(VALID)) if n % 2 else random_json(rng)
        data = serialised(value)
        failure = isinstance(value, dict) and value.get("type") in ("response.failed", "error")
        name = rng.choice(["delta", "message", "delta_encoding"])
        results = [
            fuzz_outcome(chunks.feed, data),
            fuzz_outcome(ChunkParser(HOST, SECRET).feed, data),
            fuzz_outcome(parse_completion, data.encode(), HOST),
            fuzz_outcome(web.feed, SSEEvent(name, data)),
            fuzz_outcome(classic.feed, SSEEvent("message", data)),
            fuzz_outcome(WebReplyParser().feed, SSEEvent("delta", data)),
            fuzz_outcome(codex.feed, rng.choice(["", "response.output_text.delta"]), data, codex_failure=failure),
        ]
        for result in results:
            counts[result] = counts.get(result, 0) + 1
        # A parser that raised is done with; one that read on keeps its state for the next value.
        chunks = chunks if results[0] == "ok" else ChunkParser(HOST, SECRET)
        web = web if results[3] == "ok" else primed_web()
        classic = classic if results[4] == "ok" else primed_web(classic=True)
        codex = codex if results[6] == "ok" else primed_codex()
        assert isinstance(web.text, str) and isinstance(classic.text, str)
    assert counts.get("ok", 0) > 2000 and counts.get("502", 0) > 2000, counts  # both outcomes well exercised
    assert time.perf_counter() - started < 20


# -- cheap per event, linear in the input --------------------------------------------------------
def test_tool_call_arguments_are_linear_in_their_length() -> None:
    chunks, codex = ChunkParser(HOST, SECRET), primed_codex()
    chunks.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]}))
    piece = "a" * 200
    frame = chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    codex_frame = json.dumps({"type": "response.function_call_arguments.delta", "item_id": "fc-1", "delta": piece})
    started = time.perf_counter()
    for _ in range(40_000):  # 8 MB of arguments each
        chunks.feed(frame)
        codex.feed("", codex_frame)
    assert len(chunks.calls[0].arguments) == len(codex.tool_calls[0].arguments) == 40_000 * 200
    assert time.perf_counter() - started < 3.0  # re-copying the arguments per delta takes minutes


def test_web_appends_outside_the_text_are_linear() -> None:
    parser = primed_web()
    started = time.perf_counter()
    for pointer in ("/message/metadata/notes", "/message/content/parts/1", "/elsewhere"):
        parser.feed(delta({"p": pointer, "o": "add", "v": ""}))
        for _ in range(20_000):
            parser.feed(delta({"p": pointer, "o": "append", "v": "b" * 200}))
    assert parser.text == "Hello there"
    assert time.perf_counter() - started < 3.0


def test_a_tool_message_streamed_before_the_reply_is_linear() -> None:
    parser = WebReplyParser()
    tool = {"message": {"id": "t", "author": {"role": "tool"}, "content": {"content_type": "text", "parts": [""]}}}
    parser.feed(delta({"p": "", "o": "add", "v": tool}))
    started = time.perf_counter()
    for _ in range(40_000):
        parser.feed(delta({"p": TEXT, "o": "append", "v": "t" * 200}))
    parser.feed(delta({"p": "", "o": "add", "v": web_envelope(parts=["answer"])}))
    assert parser.text == "answer"
    assert time.perf_counter() - started < 3.0


def test_scrub_never_shows_a_credential_or_a_piece_of_one() -> None:
    """What parsers put in an error: no spelling of the credential, and no piece of it where a cut
    falls (here a key in no known shape, so only the request's own credential gives it away)."""
    key = "gsk_Zq3vT8xYw2LmN5pRk7HsAbCdEf"
    texts: list[Any] = [f"bad key {form}!" for form in (key, key.upper(), key.lower(), key.swapcase(), key[-8:])]
    texts += ["x " * n + key for n in range(1190, 1205)]  # the 2400-character window cuts it somewhere
    texts += [" " * 3000 + key, "\x00" * 2398 + key, {"message": key}, [key.swapcase()], nested(5000)]
    for text in texts:
        shown = scrub(text, key).lower()
        assert len(shown) <= 301
        assert not any(key[i : i + 6].lower() in shown for i in range(len(key) - 5)), (text, shown)


KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


@given(
    st.text(KEY_ALPHABET, min_size=20, max_size=80),
    st.integers(0, 80),
    st.integers(0, 80),
    st.sampled_from([str, str.upper, str.lower, str.swapcase]),
    st.text(max_size=40),
    st.text(max_size=40),
)
@example("gsk_Zq3vT8xYw2LmN5pRk7HsQ9w8E7r6T5y4", 0, 1, str, "Incorrect API key provided: ", ".")
@example("sk-hunt-ABCDEFGHIJKLMNOPQRSTUVWX", 3, 0, str, '"code": "', '"')
def test_a_cut_credential_is_masked_wherever_it_is_cut(
    key: str, cut_front: int, cut_back: int, case: Callable[[str], str], before: str, after: str
) -> None:
    """An echo that cut the key (a prefix taken off, the end dropped, a run from its middle, in any
    case) shows no run of 12 of its characters, in what a message quotes and in a label."""
    run = key[cut_front : len(key) - cut_back]
    text = before + case(run) + after
    for shown in (masked(text, key), scrub(text, key, limit=10_000), shown_label(text, key) or ""):
        low = shown.lower()
        assert not any(key[i : i + 12].lower() in low for i in range(len(key) - 11)), (text, shown)
    if len(run) >= 12:
        assert holds_secret(text, key)


SECRETISH_PIECES = ["sk-", "SK-", "ſk-", "eyJ", "EYJ", "apı_key", "api-key", "Token", "secret", "PASSWORD"]
SECRETISH_PIECES += ["authorization", "=", ": ", "'", '"', "abcdefgh", "12345678", ".", "-", " ", "K", "bearer "]
SECRETISH_PIECES += ["BEARER\t"]


@given(st.lists(st.sampled_from(SECRETISH_PIECES) | st.text(max_size=6), max_size=12).map("".join))
@example("apı_key: abcdefgh")
@example("x ſk-abcd")
@example("eyJabcdef.ghijklmn")
@example("Bearer  x")
def test_the_quick_look_for_a_credential_word_misses_no_credential_shape(value: str) -> None:
    """shown_label runs the credential regex only on labels holding one of its words: that look must
    never pass a label the regex would catch, whatever the case or Unicode spelling."""
    if SECRETISH.search(value):
        assert has_secretish_word(value), value
        assert shown_label(value, "sk-unrelated-key-0000000000") != value


def test_a_plan_type_holding_the_token_is_scrubbed() -> None:
    token = "plain-tok-A1B2C3D4"  # nothing key-shaped about it: only knowing the token finds it
    for code in ("usage_limit_reached", "usage_not_included"):
        data = orjson.dumps({"type": "error", "error": {"code": code, "plan_type": token}}).decode()
        with pytest.raises(ServiceError) as caught:
            CodexParser(HOST, token).feed("", data)
        assert token[-8:] not in str(caught.value.params)


def test_usage_with_a_bad_total_is_whole_again() -> None:
    """An upstream total that is not a count is the sum of the counts, never left out of ``usage``."""
    assert usage_of({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": "8"}) == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}  # fmt: skip
    assert usage_of({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 9}) == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 9}  # fmt: skip


def test_usage_keeps_the_cached_and_reasoning_counts_and_nothing_else() -> None:
    base = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    kept = usage_of({**base, "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0, "x": "y"},
                     "completion_tokens_details": {"reasoning_tokens": 1}, "cost": {"usd": 9}})  # fmt: skip
    assert kept == {**base, "prompt_tokens_details": {"cached_tokens": 2},
                    "completion_tokens_details": {"reasoning_tokens": 1}}  # fmt: skip
    for hostile in ("2", -1, True, 2**60, None, [2]):
        assert usage_of({**base, "prompt_tokens_details": {"cached_tokens": hostile}}) == base
    assert usage_of({**base, "prompt_tokens_details": [1], "completion_tokens_details": "x"}) == base
    parser = CodexParser(HOST, "tok-0123456789abcdef")
    done = {"type": "response.completed", "response": {"id": "r", "usage": {
        "input_tokens": 5, "output_tokens": 3, "total_tokens": 8, "input_tokens_details": {"cached_tokens": 4},
        "output_tokens_details": {"reasoning_tokens": "many"}}}}  # fmt: skip
    parser.feed("", orjson.dumps(done).decode())
    assert parser.usage == {**base, "prompt_tokens_details": {"cached_tokens": 4}}


def test_an_answer_that_breaks_off_mid_stream_is_a_bad_reply_not_an_unreachable_host() -> None:
    broke = transport_error(NotHTTP("bad chunk"), HOST, 0, idle=True)
    assert broke.key == "upstream_bad_reply" and "not valid HTTP" in broke.params["detail"]
    assert transport_error(NotHTTP("bad head"), HOST, 0).key == "upstream_unreachable"  # before any answer


def test_a_usage_limit_without_a_plan_name_still_reads_right() -> None:
    from chatgpt_server.edges.messages import error_message
    from chatgpt_server.upstreams.codex import codex_error

    limit = codex_error(429, "usage_limit_reached", "", {"resets_in_seconds": 9}, HOST, "tok-0123456789abcdef")
    assert error_message(limit, "en") == f"{HOST}: the usage limit of the ChatGPT plan is reached; it resets in 9 s"
    excluded = codex_error(403, "usage_not_included", "", {"plan_type": 7}, HOST, "tok-0123456789abcdef")
    assert error_message(excluded, "en") == f"{HOST}: the ChatGPT plan does not include this use"
    overloaded = codex_error(503, "server_is_overloaded", "busy", {}, HOST, "tok-0123456789abcdef", retry="3")
    assert overloaded.status == 502 and overloaded.headers == {"Retry-After": "3"}


@pytest.mark.parametrize(
    ("status", "code", "error", "shown"),
    [
        (404, "model_not_found", {"param": "model"}, (404, "model_not_found", "model")),
        (404, "", {}, (404, "not_found", None)),
        (400, "invalid_value", {"param": "tools[0].name"}, (400, "invalid_value", "tools[0].name")),
        (429, "rate_limit_exceeded", {}, (429, "rate_limit_exceeded", None)),
        (429, "", {}, (429, "rate_limit_exceeded", None)),
        (200, "insufficient_quota", {}, (429, "insufficient_quota", None)),
        (401, "", {}, (401, "invalid_api_key", None)),
        (429, "usage_limit_reached", {"resets_in_seconds": 9}, (429, "rate_limit_exceeded", None)),
        (200, "rate_limit_exceeded", {}, (429, "rate_limit_exceeded", None)),  # a stream's failure
    ],
)
def test_codex_errors_keep_their_status_code_and_param_on_the_v1_doors(
    status: int, code: str, error: dict[str, Any], shown: tuple[int, str, str | None]
) -> None:
    """As the chat door passes an upstream's error on: the status OpenAI's SDK maps to its class, the
    backend's own code (else OpenAI's word for it) and the field it named."""
    from chatgpt_server.edges.envelope import openai_error_body
    from chatgpt_server.upstreams.codex import codex_error

    failure = codex_error(status, code, "words", error, HOST, "tok-0123456789abcdef")
    body = openai_error_body(failure)["error"]
    assert (failure.status, body["code"], body["param"]) == shown


def test_a_streamed_refusal_is_the_reply_text_as_a_whole_refusal_is() -> None:
    """OpenAI streams a refusal as ``delta.refusal`` with no content: it is the reply's text, as a whole
    reply's ``message.refusal`` is, never an empty reply."""
    parser = ChunkParser(HOST, SECRET)
    events = parser.feed(chunk({"role": "assistant", "content": None, "refusal": ""}))
    for piece in ("I can't ", "help with that."):
        events += parser.feed(chunk({"refusal": piece}))
    said = "".join(parser.pieces)
    assert said == "I can't help with that." and [e.text for e in events if e.text] == ["I can't ", "help with that."]
    whole = parse_completion(orjson.dumps({"id": "c", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "refusal": said},
         "finish_reason": "stop"}]}), HOST, SECRET)  # fmt: skip
    assert whole["text"] == said


def test_limits_count_an_ipv6_client_by_its_64() -> None:
    """One host is given a whole IPv6 /64 and may send from any address in it: the per-address limits
    count the /64; an IPv4-mapped address counts as its IPv4 address."""
    from chatgpt_server.core.rates import Window, caller_of

    window = Window(2, 3600.0)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::7"):
        assert window.take(caller_of(host), now=0.0) == 0.0
    assert window.take(caller_of("2001:db8:1:2:abcd::9"), now=1.0) > 0  # the same /64: its share is spent
    assert window.take(caller_of("2001:db8:1:3::1"), now=1.0) == 0.0  # another /64
    assert caller_of("::ffff:203.0.113.9") == caller_of("203.0.113.9") == "203.0.113.9"
    assert caller_of("not an address") == "not an address"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}], "Hello"),
        ([{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}, {"type": "text", "text": "Hi"}], "Hi"),
        ([{"text": "no type"}], "no type"),  # a text part that does not say so
        ([{"type": "refusal", "refusal": "I can't"}], "I can't"),  # the model's words all the same
        ([{"type": "image_url", "image_url": {"url": "x"}}], None),  # not text: refused, never dropped
        ([{"type": "audio", "text": "x"}], None),
        ([{"type": "text", "text": 5}], None),
        (["loose string"], None),
    ],
)
def test_content_as_a_list_of_parts_is_its_text_or_refused(parts: list[Any], expected: str | None) -> None:
    """Content given as parts (Mistral's), in a stream's delta and a whole reply alike: its text, with
    thinking left out; a part that is not text is the upstream's error, not words silently lost."""
    chunk = json.dumps({"choices": [{"index": 0, "delta": {"content": parts}}]})
    whole = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": parts}}]}).encode()
    if expected is None:
        with pytest.raises(BadGateway):
            ChunkParser(HOST, SECRET).feed(chunk)
        with pytest.raises(BadGateway):
            parse_completion(whole, HOST, SECRET)
        return
    parser = ChunkParser(HOST, SECRET)
    assert [e.text for e in parser.feed(chunk)] == [expected]
    assert parse_completion(whole, HOST, SECRET)["text"] == expected
