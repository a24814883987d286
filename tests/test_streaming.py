"""type "2": server-sent events for both modes, heartbeats, idle timeouts, clients that leave."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import KEY, Upstreams, ask
from .harness import ServerProcess, within
from .standins.chatgpt_web import mint
from .test_api_contract import assert_error


def events(text: str) -> list[tuple[str, Any]]:
    """An independent, minimal event-stream reader: (event, parsed data) pairs and ("comment", text)."""
    out: list[tuple[str, Any]] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                out.append(("comment", line[1:].strip()))
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out


def stream(client: httpx.Client, content: str, **kw: Any) -> httpx.Response:
    return ask(client, content, kind="2", **kw)


@pytest.fixture(scope="module")
def fast_server(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = upstreams.env(CHATGPT_SERVER_HEARTBEAT_SECONDS="0.2")
    proc = ServerProcess(tmp_path_factory.mktemp("stream"), env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sclient(fast_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fast_server.url, timeout=30) as c:
        yield c


def test_mode1_stream_events_and_final_envelope(sclient: httpx.Client, upstreams: Upstreams) -> None:
    response = stream(sclient, "stream me please")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    got = [e for e in events(response.text) if e[0] != "comment"]
    deltas = [d for name, d in got if name == "delta"]
    assert [d["delta"] for d in deltas] == ["echo(1):", " stream", " me", " please"]
    assert deltas[-1]["text"] == "echo(1): stream me please"
    assert got[-1][0] == "done"
    final = got[-1][1]
    assert (final["status"], final["success"], final["message"]) == (200, True, "ok")
    data = final["data"]
    assert data["text"] == "echo(1): stream me please" and data["id"] == deltas[0]["id"]
    assert data["parentMessageId"] == deltas[0]["parentMessageId"]
    assert data["detail"]["usage"]["prompt_tokens"] > 0 and "estimated" not in data["detail"]["usage"]
    assert upstreams.openai.requests[-1]["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("classic", [False, True], ids=["delta", "classic"])
def test_mode2_streams_both_forms(sclient: httpx.Client, upstreams: Upstreams, classic: bool) -> None:
    upstreams.chatgpt.force_classic = classic
    token = mint("streamer@example.com")
    got = [e for e in events(stream(sclient, "web stream works", key=token, mode="2").text) if e[0] != "comment"]
    assert [d["delta"] for name, d in got if name == "delta"] == ["echo(1):", " web", " stream", " works"]
    assert got[-1][0] == "done" and got[-1][1]["data"]["conversationId"]


def test_streamed_and_json_replies_follow_each_other(sclient: httpx.Client) -> None:
    first = ask(sclient, "json one").json()["data"]
    second = next(d for n, d in events(stream(sclient, "streamed two", parent=first["id"]).text) if n == "done")["data"]
    third = ask(sclient, "json three", parent=second["id"]).json()["data"]
    assert (second["text"], third["text"]) == ("echo(2): streamed two", "echo(3): json three")
    token = mint("mixer@example.com")
    one = next(d for n, d in events(stream(sclient, "w1", key=token, mode="2").text) if n == "done")["data"]
    two = ask(sclient, "w2", parent=one["id"], key=token, mode="2").json()["data"]
    assert two["text"] == "echo(2): w2"


def test_failures_before_the_first_byte_are_json(sclient: httpx.Client) -> None:
    response = stream(sclient, "x", key="sk-nope-nope-nope")
    assert response.headers["content-type"].startswith("application/json")
    assert_error(response, 401)
    assert_error(stream(sclient, "x", parent="unknown-id"), 404)


def test_heartbeat_before_the_first_token(sclient: httpx.Client, upstreams: Upstreams) -> None:
    upstreams.chatgpt.first_delay = 0.7
    got = events(stream(sclient, "slow start", key=mint("hb@example.com"), mode="2").text)
    first_delta = next(i for i, e in enumerate(got) if e[0] == "delta")
    assert sum(1 for e in got[:first_delta] if e == ("comment", "ping")) >= 2


def test_the_pass_through_names_its_whole_timeout_when_it_runs_out(tmp_path: Path, upstreams: Upstreams) -> None:
    """/v1/chat/completions streams within CHATGPT_SERVER_TIMEOUT_MS: the error it ends with names that
    time, not what was left of it when the last wait began."""
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_TIMEOUT_MS="1000")).start()
    upstreams.openai.chunk_delay = 0.3
    try:
        body = {"model": "gpt-3.5-turbo", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers) as answer:
            lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
        error = json.loads(lines[-1][6:])["error"]
        assert "did not answer within 1.0 s" in error["message"], error
    finally:
        upstreams.openai.chunk_delay = 0.0
        server.stop()


def test_timeout_bounds_the_whole_stream_and_idle_the_gaps(sclient: httpx.Client, upstreams: Upstreams) -> None:
    upstreams.openai.chunk_delay = 0.15
    # Producing steadily for ~0.6 s with timeoutMs 300: cut at 0.3 s (issue 9), what arrived is kept.
    started = time.monotonic()
    got = events(stream(sclient, "one two three four", timeoutMs=300, idleTimeoutMs=1000).text)
    assert time.monotonic() - started < 0.55
    last = got[-1]
    assert last[0] == "error" and last[1]["status"] == 504 and "did not answer within 0.3 s" in last[1]["message"]
    partial = [e[1] for e in got if e[0] == "delta"]
    assert partial, "some text arrived before the deadline"
    upstreams.openai.chunk_delay = 0.0
    follow = ask(sclient, "and then", parent=partial[-1]["id"]).json()["data"]
    assert follow["text"] == "echo(2): and then"  # the partial reply was stored, and is history
    upstreams.openai.chunk_delay = 1.0
    last = events(stream(sclient, "silence", idleTimeoutMs=300).text)[-1]
    assert last[0] == "error"
    assert last[1]["status"] == 504 and "sent nothing for 0.3 s" in last[1]["message"]


def test_a_stream_that_keeps_sending_outlives_its_idle_limit(sclient: httpx.Client, upstreams: Upstreams) -> None:
    """The idle limit is per gap: a stream whose chunks come 0.15 s apart runs past a 0.4 s idle limit
    many times over, and ends well."""
    upstreams.openai.chunk_delay = 0.15
    try:
        started = time.monotonic()
        got = events(stream(sclient, "one two three four five six seven", idleTimeoutMs=400).text)
        took = time.monotonic() - started
    finally:
        upstreams.openai.chunk_delay = 0.0
    assert got[-1][0] == "done", got[-1]
    assert took > 1.0  # the whole stream lasted longer than two idle limits


def _health(client: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/healthz").json()["data"]
    return data


def first_delta(s: socket.socket, body: dict[str, Any]) -> dict[str, Any]:
    """Ask for a stream of the original route on ``s`` and read until its first delta event."""
    payload = json.dumps(body).encode()
    s.sendall(
        b"POST /api/v1/gpt/getInfo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    buffer = b""
    marker = b"event: delta\ndata: "
    while marker not in buffer or b"\n" not in buffer.split(marker, 1)[1]:
        chunk = s.recv(4096)
        assert chunk, "the server closed the stream before the first delta"
        buffer += chunk
    line = buffer.split(marker, 1)[1].split(b"\n", 1)[0]
    return dict(json.loads(line))


def _leave_after_first_delta(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    """Read until the first delta event, then drop the connection."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        return first_delta(s, body)


def test_client_disconnect_cancels_upstream_and_keeps_the_partial(
    fast_server: ServerProcess, sclient: httpx.Client, upstreams: Upstreams
) -> None:
    upstreams.openai.chunk_delay = 0.3
    before = upstreams.openai.closed_streams
    body = {"mode": "1", "type": "2", "opts": {"key": KEY, "content": "a b c d e f g h", "isFollow": False}}
    first = _leave_after_first_delta(fast_server, body)
    # The upstream request was cancelled within a second.
    assert within(1.0, lambda: upstreams.openai.closed_streams == before + 1)
    upstreams.openai.chunk_delay = 0.0
    follow = ask(sclient, "what did you say?", parent=first["id"]).json()["data"]
    sent = upstreams.openai.requests[-1]["body"]["messages"]
    assert {"role": "assistant", "content": first["text"]} in sent  # the partial reply was stored
    assert follow["text"] == "echo(2): what did you say?"


def test_mode2_disconnect_cancels_and_frees_the_account(fast_server: ServerProcess, sclient: httpx.Client,
                                                         upstreams: Upstreams) -> None:  # fmt: skip
    upstreams.chatgpt.chunk_delay = 0.3
    token = mint("leaver@example.com")
    before = upstreams.chatgpt.cancelled
    body = {"mode": "2", "type": "2", "opts": {"key": token, "content": "a b c d e f", "isFollow": False}}
    first = _leave_after_first_delta(fast_server, body)
    assert within(1.0, lambda: upstreams.chatgpt.cancelled == before + 1)
    upstreams.chatgpt.chunk_delay = 0.0
    assert within(2.0, lambda: _health(sclient)["queues"] == 0 and _health(sclient)["turns"] == 0)
    # The account's queue was released and the partial reply stored: a follow-up works at once.
    again = ask(sclient, "next", parent=first["id"], key=token, mode="2")
    assert again.status_code == 201, again.text


def _settled(client: httpx.Client, upstreams: Upstreams, closed: int) -> bool:
    """Every abandoned stream has been stored, closed upstream and forgotten."""
    health = _health(client)
    return health["streams"] == 0 and health["turns"] == 0 and upstreams.openai.closed_streams >= closed


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_disconnects_leak_no_tasks_streams_or_memory(
    fast_server: ServerProcess, sclient: httpx.Client, upstreams: Upstreams
) -> None:
    upstreams.openai.chunk_delay = 0.05
    body = {"mode": "1", "type": "2", "opts": {"key": KEY, "content": "x " * 40, "isFollow": False}}
    baseline = _health(sclient)
    closed_before = upstreams.openai.closed_streams
    for _ in range(30):  # warm up caches and pools
        _leave_after_first_delta(fast_server, body)
    assert within(3.0, lambda: _settled(sclient, upstreams, closed_before + 30))
    assert fast_server.proc is not None
    pid = fast_server.proc.pid
    rss_warm, fds_warm = _rss_kb(pid), len(os.listdir(f"/proc/{pid}/fd"))
    for _ in range(150):
        _leave_after_first_delta(fast_server, body)
    assert within(3.0, lambda: _settled(sclient, upstreams, closed_before + 180))
    after = _health(sclient)
    assert after["streams"] == 0 and after["queues"] == 0
    assert after["tasks"] <= baseline["tasks"] + 1
    growth = _rss_kb(pid) - rss_warm
    assert growth < 4096, f"RSS grew by {growth} kB over 150 abandoned streams"
    # No connection left behind: every upstream request was closed, no descriptor piles up.
    assert upstreams.openai.closed_streams - closed_before == 180
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds_warm + 3


def test_delta_only_streams_carry_only_the_new_text(sclient: httpx.Client) -> None:
    words = " ".join(f"w{i}" for i in range(20))
    full = events(stream(sclient, words).text)
    lean = events(stream(sclient, words, deltaOnly=True).text)
    full_deltas = [e[1] for e in full if e[0] == "delta"]
    lean_deltas = [e[1] for e in lean if e[0] == "delta"]
    assert all("text" in d for d in full_deltas) and not any("text" in d for d in lean_deltas)
    assert "".join(d["delta"] for d in lean_deltas) == lean[-1][1]["data"]["text"] == f"echo(1): {words}"
    assert {"delta", "id", "parentMessageId", "conversationId"} == set(lean_deltas[0])
    assert len(stream(sclient, words, deltaOnly=True).content) < len(stream(sclient, words).content)


def test_a_javascript_line_end_in_a_reply_is_escaped_in_the_stream(client: httpx.Client) -> None:
    """U+2028 and U+2029 are valid raw in JSON but end a line for JavaScript's regex ``.`` and ``$``: a
    client written like the README's splits the data line there. They go as \\u escapes."""
    streamed = ask(client, "line one\u2028line two\u2029end", kind="2")
    assert streamed.status_code == 200
    raw = streamed.content
    assert "\u2028".encode() not in raw and "\u2029".encode() not in raw and b"\\u2028" in raw
    done = [data for name, data in events(streamed.text) if name == "done"]
    assert done[0]["data"]["text"] == "echo(1): line one\u2028line two\u2029end"
