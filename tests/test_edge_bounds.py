"""The HTTP edge has bounds (issue 8): media types, headers a client may not set, values that become
headers, URLs, redirects we never build from request headers, request heads, one account's queue."""

from __future__ import annotations

import asyncio
import gzip
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
from aiohttp import web

from .conftest import KEY, Upstreams, ask
from .harness import ServerProcess, within
from .standins.chatgpt_web import mint
from .test_api_contract import assert_error


def test_json_routes_refuse_other_media_types(client: httpx.Client) -> None:
    body = b'{"mode": "1", "type": "1", "opts": {"key": "k", "content": "c", "isFollow": false}}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/html"):
        response = client.post("/api/v1/gpt/getInfo", content=body, headers={"Content-Type": kind})
        assert "must be application/json" in assert_error(response, 400), kind  # the contract's status
    ok = client.post("/api/v1/gpt/getInfo", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code != 415
    form = client.post("/api/v1/token/getInfo", data={"type": "9", "email": "a@b", "password": "p"})
    assert form.status_code == 400  # the token route takes forms: validation, not 415


def test_a_trailing_slash_is_the_same_route_and_nothing_redirects(client: httpx.Client) -> None:
    response = client.post("/api/v1/gpt/getInfo/", json={"mode": "1", "type": "1"},
                           headers={"Host": "evil.example"})  # fmt: skip
    assert assert_error(response, 400, "/api/v1/gpt/getInfo/") == "opts is required"
    assert "location" not in response.headers
    health = client.get("/healthz/?password=hunter2", headers={"Host": "evil.example"})
    assert health.status_code == 200 and "location" not in health.headers
    root = client.get("/", headers={"Host": "evil.example"})
    assert root.status_code == 302 and root.headers["location"] == "/api"  # fixed, relative, never from a header


def test_wrong_method_lists_the_allowed_ones(client: httpx.Client) -> None:
    response = client.delete("/api/v1/token/getInfo")
    assert_error(response, 405, "/api/v1/token/getInfo")
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert client.put("/v1/responses", headers={"Authorization": f"Bearer {KEY}"}).headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/api", "/api-json", "/", "/v1/models/gpt-4o"])
def test_head_answers_wherever_get_does(client: httpx.Client, path: str) -> None:
    """RFC 9110: HEAD wherever GET works, with GET's status and headers and no body (load balancers
    check health with it)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    got, head = client.get(path, headers=auth), client.head(path, headers=auth)
    assert head.status_code == got.status_code and got.status_code in (200, 302), (path, head.status_code)
    assert head.content == b"" and head.headers.get("content-type") == got.headers.get("content-type")
    assert head.headers.get("location") == got.headers.get("location")


def test_head_on_the_token_route_reads_the_query_as_get_does(client: httpx.Client) -> None:
    query = "/api/v1/token/getInfo?type=1&email=a@example.com&password=wrong-password"
    got, head = client.get(query), client.head(query)
    assert got.status_code == head.status_code and got.status_code not in (200, 400, 405), got.text
    assert head.content == b""


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip", "x-nonsense"])
def test_a_body_under_a_content_coding_is_refused_by_name(client: httpx.Client, coding: str) -> None:
    """Read as it is, a gzip body is noise (and a false claim of one would be honoured silently): a 415
    naming the coding, on every door, before anything is done."""
    raw = gzip.compress(b'{"model": "gpt-4o-mini", "input": "hi"}') if coding == "gzip" else b'{"input": "hi"}'
    headers = {"Content-Type": "application/json", "Content-Encoding": coding, "Authorization": f"Bearer {KEY}"}
    for path in ("/v1/responses", "/v1/chat/completions", "/v1/conversations", "/api/v1/gpt/getInfo"):
        response = client.post(path, content=raw, headers=headers)
        assert response.status_code == (400 if path.startswith("/api/") else 415), (path, response.text)
        assert f"without a content coding, not {coding}" in response.text
    plain = client.post("/v1/conversations", json={}, headers={"Content-Encoding": "identity", **headers} | {
        "Content-Encoding": "identity"})  # fmt: skip
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"Authorization ": "Bearer x"}, "cannot set Authorization "),
        ({"HOST": "evil"}, "cannot set HOST"),
        ({"Proxy-Authorization": "Basic x"}, "cannot set Proxy-Authorization"),
        ({"Cookie": "a=b"}, "cannot set Cookie"),
        ({"Connection": "close"}, "cannot set Connection"),
        ({"Transfer-Encoding": "chunked"}, "cannot set Transfer-Encoding"),
        ({"TE": "trailers"}, "cannot set TE"),
        ({"Upgrade": "h2c"}, "cannot set Upgrade"),
        ({"Expect": "100-continue"}, "cannot set Expect"),
        ({"Keep-Alive": "1"}, "cannot set Keep-Alive"),
        ({"Content-Length": "5"}, "cannot set Content-Length"),
        ({"X-Ok": "a\r\nX-Injected: 1"}, "the value of X-Ok must be printable ASCII"),
        ({"X-Ok": "nul\x00"}, "the value of X-Ok must be printable ASCII"),
        ({"X-Bad\r\nName": "v"}, "is not a valid header name"),
        ({"X-Long": "v" * 5000}, "the value of X-Long must be printable ASCII"),
        ({f"X-{i}": "v" for i in range(33)}, "takes at most 32 headers"),
    ],
)
def test_mode_2_headers_that_belong_to_the_gateway_are_refused(
    client: httpx.Client, upstreams: Upstreams, headers: dict[str, str], words: str
) -> None:
    response = ask(client, "x", key=mint("h@example.com"), mode="2", headers=headers)
    assert words in assert_error(response, 400)
    assert not upstreams.chatgpt.requests


@pytest.mark.parametrize("bad", ["sk-test-abc\r\nX-Injected: 1", "sk-test-\x00nul", "sk-test-ünïcode", "sk\ttab"])
def test_values_that_become_headers_are_checked(client: httpx.Client, upstreams: Upstreams, bad: str) -> None:
    assert "printable ASCII" in assert_error(ask(client, "x", key=bad), 400)
    assert "printable ASCII" in assert_error(ask(client, "x", apiOrg=bad), 400)
    assert not upstreams.openai.requests


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("maxModelTokens", 2**64, "opts.opts.maxModelTokens must be"),  # past 64 bits JSON gives a float
        ("maxModelTokens", 2**63, "opts.opts.maxModelTokens must be at most 10000000"),
        ("maxResponseTokens", 2**62, "opts.opts.maxResponseTokens must be at most 1000000"),
        ("timeoutMs", 10**12, "opts.opts.timeoutMs must be at most 3600000"),
        ("idleTimeoutMs", 2**70, "opts.opts.idleTimeoutMs must be"),
        ("maxModelTokens", 1.5, "opts.opts.maxModelTokens must be a positive integer"),
    ],
)
def test_numeric_options_have_ranges(client: httpx.Client, option: str, value: Any, words: str) -> None:
    assert words in assert_error(ask(client, "x", **{option: value}), 400)


def test_an_ipv6_upstream_is_allowed_and_reached(tmp_path: Path, upstreams: Upstreams) -> None:
    ipv6_url = _serve_on_ipv6(upstreams)
    env = upstreams.env(CHATGPT_SERVER_ALLOWED_UPSTREAMS=f"{ipv6_url}/v1")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            response = ask(c, "over ipv6", apiBaseUrl=f"{ipv6_url}/v1")
            assert response.status_code == 201, response.text
            assert response.json()["data"]["text"] == "echo(1): over ipv6"
            other = ask(c, "x", apiBaseUrl="http://[::1]:9/v1")
            assert "[::1]:9" in assert_error(other, 400)
    finally:
        server.stop()


def _serve_on_ipv6(upstreams: Upstreams) -> str:
    async def start() -> int:
        runner = web.AppRunner(upstreams.alt_openai.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "::1", 0)
        await site.start()
        return int(runner.addresses[-1][1])

    port = asyncio.run_coroutine_threadsafe(start(), upstreams.apps.loop).result(10)
    return f"http://[::1]:{port}"


def test_cors_origins_compare_without_case(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_CORS_ORIGINS="https://App.Example.com")).start()
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        for origin in ("https://app.example.com", "HTTPS://APP.EXAMPLE.COM"):
            response = httpx.options(server.url + "/api/v1/gpt/getInfo", headers={"Origin": origin, **preflight})
            assert response.status_code == 200 and response.headers["access-control-allow-origin"], origin
        stranger = httpx.options(server.url + "/api/v1/gpt/getInfo",
                                 headers={"Origin": "https://evil.example", **preflight})  # fmt: skip
        assert "access-control-allow-origin" not in stranger.headers
        # A refused preflight (origin, method or headers) is answered as every error is: the door's shape
        for path, headers, what in (
            ("/api/v1/gpt/getInfo", {"Origin": "https://evil.example", **preflight}, "origin"),
            ("/api/v1/gpt/getInfo", {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"},
             "method"),
            ("/v1/responses", {"Origin": "https://app.example.com", **preflight,
                               "Access-Control-Request-Headers": "x-api-key"}, "headers"),
        ):  # fmt: skip
            refused = httpx.options(server.url + path, headers={**headers, "Accept-Language": "en"})
            assert refused.headers["content-type"] == "application/json"
            request_id = refused.headers["x-request-id"]
            assert within(5, lambda rid=request_id: f"(request id {rid})" in server.log())  # type: ignore[misc]
            if path.startswith("/v1"):
                assert refused.status_code == 400 and what in refused.json()["error"]["message"]
            else:
                assert what in assert_error(refused, 400, path), refused.text
    finally:
        server.stop()


def test_request_heads_are_bounded(tmp_path: Path, upstreams: Upstreams) -> None:
    env = upstreams.env(CHATGPT_SERVER_HEADER_TIMEOUT_SECONDS="1", CHATGPT_SERVER_MAX_HEADER_BYTES="16384")
    server = ServerProcess(tmp_path, env).start()
    try:
        big = httpx.get(server.url + "/healthz", headers={"X-Big": "a" * 20000})
        assert big.status_code == 431
        with socket.create_connection(("127.0.0.1", server.port)) as slow:  # slow-loris
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            slow.settimeout(5)
            closed = False
            while time.monotonic() - started < 4:
                try:
                    slow.sendall(b"X-A: b\r\n")
                    if slow.recv(4096) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                    break
            assert closed and time.monotonic() - started < 2.5
        assert httpx.get(server.url + "/healthz").status_code == 200  # and the server serves on
    finally:
        server.stop()


class SlowWeb:
    """A web-backend stand-in that takes its time over every request (as a slow upstream rejecting a
    forged token does), to show whose requests wait behind whose."""

    def __init__(self, delay: float):
        self.delay = delay
        self.active = 0
        self.cancelled = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/conversation", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frame = ('data: {"message": {"id": "m1", "author": {"role": "assistant"}, "content": {"content_type": '
                 '"text", "parts": ["hi"]}}, "conversation_id": "c1"}\n\ndata: [DONE]\n\n')  # fmt: skip
        await response.write(frame.encode())
        return response


@pytest.fixture
def slow_web(upstreams: Upstreams, tmp_path: Path) -> Iterator[tuple[ServerProcess, str, SlowWeb]]:
    slow = SlowWeb(1.0)
    url = upstreams.apps.serve(slow.app()) + "/conversation"
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_ALLOWED_UPSTREAMS=url)).start()
    yield server, url, slow
    server.stop()


def test_forged_tokens_naming_an_account_do_not_queue_its_owner(slow_web: tuple[ServerProcess, str, SlowWeb]) -> None:
    server, url, slow = slow_web
    slow.delay = 2.0  # queued behind one forged request, hers would take 4 s at least; her own, about 2
    alice = mint("alice@example.com")
    forged = [alice.rsplit(".", 1)[0] + f".forged{i}signature" for i in range(2)]  # her email, not her signature
    results: dict[str, float] = {}

    def call(name: str, key: str) -> None:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            ask(c, "hi", key=key, mode="2", apiReverseProxyUrl=url)
        results[name] = time.monotonic() - started

    threads = [threading.Thread(target=call, args=(f"forged{i}", key)) for i, key in enumerate(forged)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the forged requests go first: that is the attack
    call("alice", alice)
    for t in threads:
        t.join()
    assert results["alice"] < 3.5, results  # her own upstream time (with room for a loaded machine), not behind theirs


def test_a_json_client_that_leaves_frees_the_account(slow_web: tuple[ServerProcess, str, SlowWeb]) -> None:
    server, url, slow = slow_web
    slow.delay = 6.0  # the upstream would hold the account's queue for 6 s
    token = mint("leaver@example.com")
    with httpx.Client(base_url=server.url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        ask(c, "I will not wait", key=token, mode="2", apiReverseProxyUrl=url)
    deadline = time.monotonic() + 1.5
    while True:
        health = httpx.get(server.url + "/healthz").json()["data"]
        if health["queues"] == 0 and health["streams"] == 0 and health["turns"] == 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def _deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = {"a": [value]} if levels % 2 else [value]
    return value


DEEP = 240  # orjson reads 1,024 levels but writes only 254: readable, and not something we could pass on


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/v1/gpt/getInfo",
            {
                "mode": "1",
                "type": "1",
                "opts": {
                    "key": KEY,
                    "content": "x",
                    "isFollow": False,
                    "opts": {"completionParams": {"logit_bias": _deep(DEEP)}},
                },
            },
        ),
        ("/api/v1/gpt/getInfo", {"mode": "1", "type": "2", "opts": {"key": KEY, "content": _deep(DEEP)}}),
        (
            "/v1/chat/completions",
            {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "x"}], "metadata": _deep(DEEP)},
        ),
        (
            "/v1/chat/completions",
            {
                "model": "gpt-3.5-turbo",
                "stream": True,
                "response_format": _deep(DEEP),
                "messages": [{"role": "user", "content": "x"}],
            },
        ),
        (
            "/v1/responses",
            {
                "model": "gpt-3.5-turbo",
                "input": "x",
                "tools": [{"type": "function", "name": "f", "parameters": _deep(DEEP)}],
            },
        ),
        (
            "/v1/responses",
            {
                "model": "gpt-3.5-turbo",
                "input": "x",
                "text": {"format": {"type": "json_schema", "name": "s", "schema": _deep(DEEP)}},
            },
        ),
        ("/v1/conversations", {"metadata": _deep(DEEP)}),
    ],
)
def test_a_body_nested_deeper_than_can_be_passed_on_is_a_400(client: httpx.Client, upstreams: Upstreams, path: str,
                                                              body: dict[str, Any]) -> None:  # fmt: skip
    calls = len(upstreams.openai.requests)
    response = client.post(path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    assert "nested more than 200 levels deep" in response.text
    assert len(upstreams.openai.requests) == calls


def test_a_body_nested_as_deep_as_allowed_goes_through(client: httpx.Client, upstreams: Upstreams) -> None:
    schema = _deep(190)
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "deep but fine"}], "metadata": schema}
    response = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code != 500 and "nested more than" not in response.text
    assert upstreams.openai.requests and upstreams.openai.requests[-1]["body"]["metadata"] == schema


def test_names_and_keys_past_their_bounds_are_named(client: httpx.Client, upstreams: Upstreams) -> None:
    calls = len(upstreams.openai.requests)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "m" * 300}, "opts.opts.model"),
        ({"apiOrg": "o" * 300}, "opts.opts.apiOrg"),
        ({"completionParams": {"model": "m" * 300}}, "opts.opts.completionParams.model"),
    ]
    for options, field in cases:
        message = assert_error(ask(client, "x", **options), 400)
        assert f"{field} must be at most 256 characters" in message
    assert len(upstreams.openai.requests) == calls
    for header in ("Content-Encoding", "accept-encoding"):
        message = assert_error(ask(client, "x", key=mint("h@example.com"), mode="2", headers={header: "gzip"}), 400)
        assert header.lower() in message.lower()
    response = client.post("/v1/responses", json={"model": "gpt-3.5-turbo", "input": "x"},
                           headers={"Authorization": "Bearer sk-" + "k" * 17000})  # fmt: skip
    assert response.status_code == 401 and "at most 16384 characters" in response.json()["error"]["message"]


def test_a_malformed_head_is_answered_in_its_doors_shape(server: ServerProcess) -> None:
    """A head the HTTP parser refuses (an empty Transfer-Encoding, a bad header name) never reaches the
    app, and is still answered as the app answers: JSON, OpenAI's error under /v1, the envelope
    elsewhere, with a request id (which the log line of the refusal names), never uvicorn's plain text.
    A request line of another HTTP version than 1.x (httptools reads 2.0 and 0.9 as requests) is a 505."""
    for path, head, version, status in (
        ("/v1/models", "Transfer-Encoding:\r\n", "1.1", 400),
        ("/api/v1/gpt/getInfo", "Bad Name: x\r\n", "1.1", 400),
        ("/v1/responses", "", "2.0", 505),
        ("/api/v1/gpt/getInfo", "", "0.9", 505),
        ("/v1/models", "", "1.2", 505),
        ("/api/v1/gpt/getInfo", "", "3.0", 505),
        ("FOO /v1/models", "", "1.1", 501),
        ("get /api/v1/gpt/getInfo", "", "1.1", 501),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            method, _, path = path.rpartition(" ")
            s.sendall(f"{method or 'GET'} {path}?q=1 HTTP/{version}\r\nHost: x\r\n{head}\r\n".encode())
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        top, _, body = answer.partition(b"\r\n\r\n")
        assert top.startswith(b"HTTP/1.1 %d " % status) and b"content-type: application/json" in top.lower(), answer
        request_id = top.lower().split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
        line = f"{status} (request id {request_id})"
        assert within(5, lambda line=line: line in server.log()), server.log()[-2000:]  # type: ignore[misc]
        shown = json.loads(body)
        if path.startswith("/v1"):
            assert shown["error"]["type"] == "invalid_request_error" and shown["error"]["message"].isascii()
        else:
            assert (shown["status"], shown["path"]) == (status, path)
    for path, words in (("/api/v1/gpt/getInfo", "此服务器只支持 HTTP/1.1 (及 1.0)"),  # the envelope's language,
                        ("/v1/models", "this server speaks HTTP/1.1 (and 1.0) only")):  # OpenAI's English  # fmt: skip
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/2.0\r\nHost: x\r\nAccept-Language: zh-CN\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        shown = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert (shown["error"]["message"] if path.startswith("/v1") else shown["message"]) == words


def test_a_body_the_protocol_refused_is_one_access_log_line_with_its_answer(server: ServerProcess) -> None:
    """The request was answered 400 by the HTTP protocol (its chunked body unreadable): its access log line
    says 400 with the request id the client was given, not 499 under another id."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /api/v1/gpt/getInfo?refused=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")  # fmt: skip
        assert not select.select([s], [], [], 0.2)[0]  # the app has begun and waits for the rest
        s.sendall(b"zz\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    rid = answer.lower().split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert within(5, lambda: f"{rid} POST /api/v1/gpt/getInfo 400" in server.log()), server.log()[-2000:]
    lines = [line for line in server.log().splitlines() if "POST /api/v1/gpt/getInfo" in line and " 499 " in line]
    assert not [line for line in lines if "refused=1" in line or rid in line]


def test_a_body_that_stalls_is_a_408_and_one_cut_short_is_no_500(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_HEADER_TIMEOUT_SECONDS="1")).start()
    head = (f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n")  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # stalls after one byte
            s.sendall(head.replace("{n}", "10").encode() + b"{")
            started = time.monotonic()
            answer = s.recv(200)
            assert answer.startswith(b"HTTP/1.1 408") and 0.9 < time.monotonic() - started < 5, answer
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # slow, but never idle 1 s
            body = b'{"model": "gpt-3.5-turbo", "input": "slowly"}'
            s.sendall(head.replace("{n}", str(len(body))).encode())
            for i in range(0, len(body), 12):
                time.sleep(0.3)
                s.sendall(body[i : i + 12])
            assert s.recv(200).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # leaves mid-body
            s.sendall(head.replace("{n}", "100").encode() + b'{"mo')
        deadline = time.monotonic() + 5
        while "POST /v1/responses 499" not in server.log():
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.05)
    finally:
        server.stop()
    assert "unexpected" not in server.log() and "Traceback" not in server.log()


def test_the_sdk_retrieves_a_model(client: httpx.Client) -> None:
    with openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=KEY, max_retries=0) as sdk:
        for name in ("gpt-4o-mini", "meta-llama/Llama-3.1-8B-Instruct"):  # vLLM's names hold slashes
            model = sdk.models.retrieve(name)
            assert (model.id, model.owned_by) == (name, "chat")
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("x" * 300)


@pytest.mark.parametrize("odd", ["\r\nX-Injected: 1", "\u202egnp.exe", "\x00nul", "x" * 3_000])
def test_an_id_or_path_a_message_quotes_is_escaped_and_bounded(client: httpx.Client, odd: str) -> None:
    """Every door quotes what it could not find the same way: no line break, control or bidirectional
    override as it came (a log or page showing the message cannot be forged), and no longer than 300
    characters, however long the path."""
    auth = {"Authorization": f"Bearer {KEY}"}
    quoted = quote(odd, safe="")
    for path in (f"/v1/responses/resp_{quoted}", f"/v1/conversations/conv_{quoted}",
                 f"/v1/conversations/conv_{quoted}/items/msg_{quoted}", f"/{quoted}"):  # fmt: skip
        response = client.get(path, headers=auth)
        assert response.status_code == 404, (path, response.status_code)
        body = response.json()
        message = body["error"]["message"] if "error" in body else body["message"]
        shown = [message, body.get("path", "")]
        assert all(text.isprintable() and len(text) <= 400 for text in shown), shown
        assert len(response.content) < 2_000


def test_a_key_the_upstream_refuses_has_one_code_on_every_door(client: httpx.Client) -> None:
    """``invalid_api_key``, as OpenAI says it, whichever door found out (the key check before a stored
    conversation is touched, or the upstream's own 401 passed on)."""
    with openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="sk-refused-" + "0" * 40, max_retries=0) as sdk:
        calls: list[Callable[[], object]] = [
            lambda: sdk.responses.create(model="gpt-4o-mini", input="hi"),
            lambda: sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]),
            lambda: sdk.conversations.create(),
            lambda: sdk.models.list(),
        ]
        for make in calls:
            with pytest.raises(openai.AuthenticationError) as raised:
                make()
            assert raised.value.code == "invalid_api_key", raised.value.body
