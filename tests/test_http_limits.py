"""Request-head bounds (chatgpt_server.http_limits) against a real uvicorn + uvloop + httptools server, over sockets.

The server runs in a subprocess (so that its RSS can be read), started through ``serve`` below; ``serve("plain",
...)`` runs the same app on uvicorn's own httptools protocol, to compare against.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
HEAD_TIMEOUT = 1.5
MAX_HEAD = 32 * 1024
MAX_HEADERS = 100
MB = 1024 * 1024


# The server (run in a subprocess)


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers a small JSON saying what it got; /slow answers after 0.3 s."""
    assert scope["type"] == "http"
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    body = b'{"ok":true,"headers":%d,"body":%d}' % (len(scope["headers"]), size)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(kind: str, head_timeout: float, port: int = 0) -> None:
    """Serve _app; kind is "limited" (this project's protocol) or "plain" (uvicorn's httptools). Prints the port."""
    import uvicorn

    from chatgpt_server.http_limits import configure

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    print(sock.getsockname()[1], flush=True)
    http = configure(MAX_HEAD, MAX_HEADERS, head_timeout, "en") if kind == "limited" else "httptools"
    config = uvicorn.Config(_app, http=http, loop="uvloop", lifespan="off", access_log=False, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Server:
    port: int
    pid: int

    def rss(self) -> int:
        """Resident set size in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    code = "import sys; from tests.test_http_limits import serve; serve('limited', float(sys.argv[1]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(HEAD_TIMEOUT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert proc.stdout is not None
        srv = Server(int(proc.stdout.readline()), proc.pid)
        # the socket listens before the server runs: the first answer says it is serving
        with srv.connect() as s:
            s.sendall(request())
            assert Reader(s).response()[0] == 200
        yield srv
    finally:
        proc.terminate()
        proc.wait(10)


# A small HTTP/1.1 client


def request(path: str = "/", headers: list[tuple[str, str]] | None = None, body: bytes | None = None) -> bytes:
    lines = [f"{'POST' if body is not None else 'GET'} {path} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        length = int(headers[b"content-length"])
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the server closed, after what it sent (which must all have been read)."""
        try:
            self._more()
        except (EOFError, ConnectionResetError):
            return True
        return False


def refused(srv: Server, data: bytes) -> tuple[int, bytes]:
    """Send data, read one answer: it must close the connection."""
    with srv.connect() as s:
        s.sendall(data)
        reader = Reader(s)
        status, headers, body = reader.response()
        assert headers[b"connection"] == b"close"
        assert reader.closed()
        # In the app's own shape, with a request id, as every answer: the envelope (OpenAI's error on /v1)
        assert headers[b"content-type"] == b"application/json" and len(headers[b"x-request-id"]) == 16
        shown = json.loads(body)
        if "error" in shown:
            return status, shown["error"]["message"].encode()
        assert (shown["status"], shown["success"]) == (status, False)
        return status, shown["message"].encode()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes (EOF or reset) within seconds, discarding what it sends."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


# The tests


def test_a_200_mb_header_is_cut_short_and_costs_no_memory(server: Server) -> None:
    rss_before = server.rss()
    peak = rss_before
    sent, answer = 0, b""
    piece = b"a" * MB
    with server.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ")
        try:
            while sent < 200 * MB:
                if select.select([s], [], [], 0)[0]:  # answered: stop sending, read it
                    break
                s.sendall(piece)
                sent += len(piece)
                peak = max(peak, server.rss())
            while chunk := s.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the answer may be lost to the reset
    peak = max(peak, server.rss())
    assert sent < 32 * MB, f"the server took {sent / MB:.0f} MB of one header"
    assert peak - rss_before < 8 * MB, f"RSS grew by {(peak - rss_before) / MB:.1f} MB"
    assert not answer or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    with server.connect() as s:  # and the server still serves
        s.sendall(request())
        assert Reader(s).response()[0] == 200


def test_heads_near_and_over_the_byte_bound(server: Server) -> None:
    with server.connect() as s:  # a head of just under 32 KiB (a big cookie) is served
        s.sendall(request(headers=[("Cookie", "c" * (MAX_HEAD - 200))]))
        assert Reader(s).response()[0] == 200
    status, body = refused(server, request(headers=[("Cookie", "c" * MAX_HEAD)]))
    assert (status, body) == (431, b"Request Header Fields Too Large")
    status, _ = refused(server, request(headers=[(f"X-H{i}", "v" * 400) for i in range(90)]))
    assert status == 431
    status, _ = refused(server, request("/" + "u" * (40 * 1024)))
    assert status == 414


def test_b_slow_loris_and_silent_connections_are_closed_after_the_head_timeout(server: Server) -> None:
    with server.connect() as silent, server.connect() as slow:
        start = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n")
        trickle, answer, closed_at = iter(b"X-Slow: " + b"s" * 100), b"", None
        next_byte = start + 0.25  # out of phase with the timeout, so that no byte crosses the close
        while closed_at is None and time.monotonic() < start + HEAD_TIMEOUT + 1:
            if select.select([slow], [], [], max(0.0, next_byte - time.monotonic()))[0]:
                chunk = slow.recv(65536)
                answer += chunk
                if not chunk:
                    closed_at = time.monotonic()
            elif time.monotonic() >= next_byte:
                slow.send(bytes([next(trickle)]))
                next_byte += 0.5
        assert closed_at is not None, "the slow-loris connection is still open"
        assert HEAD_TIMEOUT - 0.1 < closed_at - start <= HEAD_TIMEOUT + 1
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert closed_within(silent, start + HEAD_TIMEOUT + 1 - time.monotonic())


def test_c_too_many_headers(server: Server) -> None:
    status, _ = refused(server, request(headers=[(f"X-H{i}", "v") for i in range(150)]))
    assert status == 431
    with server.connect() as s:  # 100 is still fine (Host is one of them)
        s.sendall(request(headers=[(f"X-H{i}", "v") for i in range(MAX_HEADERS - 1)]))
        assert Reader(s).response()[0] == 200


def test_a_request_carries_exactly_one_host(server: Server) -> None:
    """RFC 9112 3.2: none (HTTP/1.1) or two (in any case) is a 400; proxies disagree on which one counts."""
    for data in (
        b"GET / HTTP/1.1\r\n\r\n",
        request(headers=[("Host", "other")]),
        b"POST / HTTP/1.1\r\nhost: a\r\nContent-Length: 2\r\nHOST: b\r\n\r\n{}",
        *(
            b"GET / HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n"
            for bad in (b"a b", b"a/b?c", b"\xc3\xa9.example", b"a:b:c", b"[::1")
        ),
    ):
        status, message = refused(server, data)
        assert (status, message) == (400, b"a request must carry exactly one Host header, naming a host (and port)")
    # An absolute-form target is answered in its path's door's shape (OpenAI's error under /v1).
    with server.connect() as s:
        s.sendall(b"POST http://elsewhere.example/v1/responses HTTP/1.1\r\n\r\n")
        status, _, body = Reader(s).response()
    assert status == 400 and "error" in json.loads(body), body
    for good in (b"example.com", b"127.0.0.1:7002", b"[::1]:80", b"", b"xn--e1afmkfd.example"):
        with server.connect() as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + good + b"\r\n\r\n")
            assert Reader(s).response()[0] == 200, good
    with server.connect() as s:  # HTTP/1.0 had no Host yet
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert Reader(s).response()[0] == 200


def test_d_keep_alive_and_pipelining(server: Server) -> None:
    with server.connect() as s:
        reader = Reader(s)
        for i in range(200):
            s.sendall(request(f"/{i}", body=b"x" * (i % 3)))
            status, _, body = reader.response()
            assert status == 200 and body.endswith(b'"body":%d}' % (i % 3))
        # a pipelined pair in one write
        s.sendall(request("/p1") + request("/p2", body=b"hello"))
        assert [reader.response()[0] for _ in range(2)] == [200, 200]
        # a pipelined pair whose second head comes in two writes
        second = request("/p4", headers=[("X-Pad", "p" * 2000)])
        s.sendall(request("/p3") + second[:1000])
        assert reader.response()[0] == 200
        s.sendall(second[1000:])
        assert reader.response()[0] == 200
        # idle between requests for longer than the head timeout: keep-alive (5 s) governs, not the head timeout
        assert not select.select([s], [], [], HEAD_TIMEOUT + 0.3)[0], "closed while idle"
        s.sendall(request())
        assert reader.response()[0] == 200


def test_an_oversized_pipelined_head_waits_for_the_response_before_it(server: Server) -> None:
    broken_body = b"POST /x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    for refused_head in (request(headers=[("Cookie", "c" * MAX_HEAD)]), b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n",
                         broken_body):  # fmt: skip
        with server.connect() as s:  # too large, or unreadable: the request before it is answered first
            s.sendall(request("/slow") + refused_head)
            reader = Reader(s)
            status, headers, _ = reader.response()
            assert status == 200 and headers[b"connection"] == b"close"  # no 431 or 400 in the middle of it
            assert reader.closed() and not reader.buf


@pytest.mark.parametrize(
    "broken",
    [b"xyz\r\n", b"zz\r\n", b"-5\r\n", b"fffffffffffffffffff\r\n", b"3\r\nabcdef\r\n", b"2\r\n{}XX"],
)
@pytest.mark.parametrize("later", [False, True])
def test_g_a_chunked_body_that_cannot_be_read_is_a_400_at_once(server: Server, broken: bytes, later: bool) -> None:
    """A chunk size that is no number, or a chunk longer than its size, leaves the body unreadable: the app
    waiting for its end would never answer (and the connection never close, its client gone or not)."""
    head = b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
    with server.connect() as s:
        if later:  # the head and a good chunk first: the app is waiting for the rest
            s.sendall(head)
            assert not select.select([s], [], [], 0.2)[0]
        s.sendall(broken if later else head + broken)
        started = time.monotonic()
        reader = Reader(s)
        status, headers, body = reader.response()
        assert (status, headers[b"connection"]) == (400, b"close") and reader.closed()
        assert time.monotonic() - started < HEAD_TIMEOUT  # at once, not after a stall's timeout
        assert b"chunked framing" in body
    with server.connect() as s:  # and the server still serves
        s.sendall(request())
        assert Reader(s).response()[0] == 200


def test_h_an_upgrade_it_does_not_make_is_served_as_http_1_1_with_its_body(server: Server) -> None:
    """RFC 9110 7.8: the Upgrade is ignored, the request served whole (curl --http2 asks for h2c with every
    request; httptools, told of an upgrade, would have skipped the body)."""
    h2c = [
        ("Connection", "Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ]
    with server.connect() as s:
        reader = Reader(s)
        s.sendall(request("/a", headers=h2c, body=b"hello"))
        status, headers, body = reader.response()
        assert status == 200 and body.endswith(b'"body":5}'), body
        assert headers.get(b"connection") != b"close"
        upgrade = [("Connection", "keep-alive, upgrade"), ("Upgrade", "websocket")]
        chunked = request("/b", headers=[*upgrade, ("Transfer-Encoding", "chunked")])
        s.sendall(chunked + b"3\r\nabc\r\n")  # the body in two writes, the second with a pipelined request
        assert not select.select([s], [], [], 0.2)[0]
        s.sendall(b"0\r\n\r\n" + request("/c", headers=h2c, body=b"xy"))
        assert reader.response()[2].endswith(b'"body":3}')
        assert reader.response()[2].endswith(b'"body":2}')
        s.sendall(request("/d", headers=h2c))  # no body
        assert reader.response()[0] == 200


def test_i_upgrade_requests_pipelined_by_hundreds_are_all_answered(server: Server) -> None:
    """Each is parsed again without its upgrade, in a loop: hundreds in one write cost no recursion and no
    copy of what follows each of them."""
    upgrade = b"GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    with server.connect() as s:
        s.sendall(upgrade * 1500)
        reader = Reader(s)
        assert [reader.response()[0] for _ in range(1500)] == [200] * 1500


def test_j_an_upgrade_request_gets_the_answer_it_gets_without_the_upgrade(server: Server) -> None:
    """Parsed again, a head is neither longer (counted once, as it came) nor missing a header."""
    padding = [(f"X-{i}", "v" * 290) for i in range(90)]
    near = request(headers=padding)
    near = near[:-4] + b"\r\nX-Fill: " + b"f" * (MAX_HEAD - len(near) - 100) + b"\r\n\r\n"
    asked = near[:-2] + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    assert len(asked) < MAX_HEAD
    for data in (near, asked):
        with server.connect() as s:
            s.sendall(data)
            assert Reader(s).response()[0] == 200, len(data)
    empty_host = b"POST / HTTP/1.1\r\nHost:\r\nContent-Length: 2\r\n"
    for data in (empty_host + b"\r\n{}", empty_host + b"Upgrade: h2c\r\nConnection: Upgrade\r\n\r\n{}"):
        with server.connect() as s:
            s.sendall(data)
            assert Reader(s).response()[0] == 200, data


def test_k_what_follows_a_connect_is_never_read_as_a_request(server: Server) -> None:
    """A CONNECT is answered by the app; the bytes after its head (a body, or a request hidden in one)
    are never parsed as a request, and the connection closes after the answer."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    for later in (False, True):
        with server.connect() as s:
            head = b"CONNECT /c HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
            s.sendall(head if later else head + smuggled)
            if later:
                time.sleep(0.2)
                s.sendall(smuggled)
            reader = Reader(s)
            reader.response()
            assert reader.closed() and not reader.buf, reader.buf[:200]


def test_m_a_flood_of_blank_lines_before_any_request_is_a_400(server: Server) -> None:
    status, _ = refused(server, b"\r\n" * 40000)
    assert status == 400


def test_l_a_target_that_cannot_be_read_is_named_as_such(server: Server) -> None:
    for target in (b"http://a:99999999/", b"http://[::1/"):
        status, message = refused(server, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (status, message) == (400, b"the request target (its URL) cannot be read"), target


def test_e_a_slow_body_after_a_complete_head_is_not_cut(server: Server) -> None:
    with server.connect() as s:
        s.sendall(request(body=b"12345678")[:-8])
        start = time.monotonic()
        for i in range(4):  # two bytes each 0.5 s: the body ends after the head timeout would have passed
            assert not select.select([s], [], [], start + 0.5 * (i + 1) - time.monotonic())[0]
            s.sendall(b"12345678"[2 * i : 2 * i + 2])
        status, _, body = Reader(s).response()
        assert time.monotonic() - start > HEAD_TIMEOUT
        assert status == 200 and body.endswith(b'"body":8}')


def test_f_trailers_and_chunk_framing_are_bounded_as_a_head(server: Server) -> None:
    """Trailer fields after a chunked body reach the parser as headers (httptools joins an endless one's
    pieces with +=): what a body carries besides its data is bounded like a head, 431. A body with a
    small trailer and one of many small chunks are served."""
    chunked = b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    with server.connect() as s:
        s.sendall(chunked + b"2\r\n{}\r\n0\r\nX-Checksum: abc\r\n\r\n")
        assert Reader(s).response()[0] == 200
        s.sendall(chunked + b"1\r\nx\r\n" * 2000 + b"0\r\n\r\n")
        assert Reader(s).response()[0] == 200
    rss_before = server.rss()
    for endless in (b"a:b\r\n" * (1 << 16), b"X-T: " + b"a" * (1 << 20)):  # many small trailers; one endless
        sent, answer = 0, b""
        with server.connect() as s:
            s.sendall(chunked + b"2\r\n{}\r\n0\r\n")
            try:
                while sent < 64 * MB and not select.select([s], [], [], 0)[0]:
                    s.sendall(endless)
                    sent += len(endless)
                while chunk := s.recv(65536):
                    answer += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while we were still sending
        assert sent < 16 * MB, f"the server took {sent / MB:.0f} MB of trailers"
        assert not answer or b" 431 " in answer.split(b"\r\n", 1)[0], answer[:100]
    assert server.rss() - rss_before < 16 * MB
    with server.connect() as s:  # and the server still serves
        s.sendall(request())
        assert Reader(s).response()[0] == 200
