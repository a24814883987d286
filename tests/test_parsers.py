"""The pure stream parsers, fed whole, byte by byte, and in random chunk sizes."""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest

from chatgpt_server.upstreams.sse import LineDecoder, SSEDecoder, SSEEvent
from chatgpt_server.upstreams.web_reply import WebReplyError, WebReplyParser


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
