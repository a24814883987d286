"""The HTTP contract: envelope, validation messages (English and the original's Chinese), routes."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import KEY, Upstreams, ask
from .harness import ServerProcess

ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


def assert_error(response: httpx.Response, status: int, path: str = "/api/v1/gpt/getInfo") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status", "success", "message", "data", "timestamp", "path"}
    assert body["status"] == status and body["success"] is False and body["data"] == {}
    assert body["path"] == path
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    return str(body["message"])


def test_success_envelope_and_shape(client: httpx.Client) -> None:
    response = ask(client, "hello world")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"status", "success", "message", "data", "timestamp"}
    assert (body["status"], body["success"], body["message"]) == (200, True, "ok")
    data = body["data"]
    assert data["role"] == "assistant"
    assert data["id"].startswith("chatcmpl-")
    assert data["text"] == "echo(1): hello world"
    assert data["parentMessageId"] and data["parentMessageId"] != data["id"]
    assert data["detail"]["usage"]["prompt_tokens"] > 0
    assert data["detail"]["choices"][0]["message"]["content"] == data["text"]


@pytest.mark.parametrize(
    ("body", "zh"),
    [
        ({}, "有效值为1或2,模式mode必填,有效值为1,类型type必填,gpt请求参数opts必填"),
        ({"mode": "1", "type": "1"}, "gpt请求参数opts必填"),
        ({"mode": "1", "type": "1", "opts": {}}, "opts.key必填,opts.content必填,opts.isFollow必填"),
        (
            {"mode": "1", "type": "1", "opts": {"key": "k", "content": "c", "isFollow": True}},
            "opts.当isFollow为true时，parentMessageId必填",
        ),
        ({"mode": "3", "type": "1", "opts": {"key": "k", "content": "c", "isFollow": False}}, "有效值为1或2"),
    ],
)
def test_validation_messages_in_chinese_are_the_originals(client: httpx.Client, body: dict[str, Any], zh: str) -> None:
    response = client.post("/api/v1/gpt/getInfo", json=body, headers=ZH)
    assert assert_error(response, 400) == zh


def test_validation_lists_every_problem_in_english(client: httpx.Client) -> None:
    message = assert_error(client.post("/api/v1/gpt/getInfo", json={}), 400)
    assert message.split(",") == [
        'mode must be "1" or "2"',
        "mode is required",
        'type must be "1" or "2"',
        "type is required",
        "opts is required",
    ]
    body = {"mode": "1", "type": "1", "opts": {"key": 5, "isFollow": "maybe", "opts": {"nope": 1, "timeoutMs": -1}}}
    message = assert_error(client.post("/api/v1/gpt/getInfo", json=body), 400)
    for part in (
        "opts.key must be a string",
        "opts.content is required",
        "opts.isFollow must be true or false",
        "opts.opts.timeoutMs must be a positive integer",
    ):
        assert part in message
    assert "nope" not in message  # an unknown option is ignored, as the original ignored it


def test_numbers_are_refused_for_mode_and_type_as_the_original_refused_them(client: httpx.Client) -> None:
    """contract.md: ``"mode": 1`` (a number) is ``有效值为1或2``; the type's number is refused alike."""
    opts = {"key": KEY, "content": "numbers", "isFollow": False}
    zh = {"Accept-Language": "zh-CN"}
    response = client.post("/api/v1/gpt/getInfo", json={"mode": 1, "type": "1", "opts": opts}, headers=zh)
    assert assert_error(response, 400) == "有效值为1或2"
    response = client.post("/api/v1/gpt/getInfo", json={"mode": "1", "type": 1, "opts": opts}, headers=zh)
    assert assert_error(response, 400) == "有效值为1或2"  # "2" is a type here too
    both = client.post("/api/v1/gpt/getInfo", json={"mode": 2.0, "type": 1, "opts": opts})
    assert assert_error(both, 400).split(",") == ['mode must be "1" or "2"', 'type must be "1" (JSON) or "2" (stream)']


def test_mode_and_type_are_trimmed_as_javascript_trims_and_as_the_document_says(client: httpx.Client) -> None:
    """White space around "1" is JavaScript's (the original's trim, and ECMAScript's \\s of the OpenAPI
    pattern): U+FEFF and U+3000 are, the separators U+001C-U+001F (Python's str.strip) are not."""
    opts = {"key": KEY, "content": "trimmed", "isFollow": False}
    zh = {"Accept-Language": "zh-CN"}
    for space in ("\ufeff", "\u3000", " \t"):
        response = client.post("/api/v1/gpt/getInfo", json={"mode": space + "1", "type": "1" + space, "opts": opts})
        assert response.status_code == 201, (space, response.text)
    for space in ("\x1c", "\x1f"):
        response = client.post("/api/v1/gpt/getInfo", json={"mode": space + "1", "type": "1", "opts": opts},
                               headers=zh)  # fmt: skip
        assert assert_error(response, 400) == "有效值为1或2", space
    patterns = _patterns(client.get("/api-json").json())
    assert "^\\s*[12]\\s*$" in patterns  # the document's pattern: the one the route follows


def test_options_the_original_ignored_are_ignored(client: httpx.Client, upstreams: Upstreams) -> None:
    """The original merged opts.opts into its client, which used what it knew: an option of the other
    mode, or an unknown one, whatever its value, changed nothing; numbers as digit strings counted
    (JavaScript coerced them). A client of it that sends them works unchanged."""
    answered = ask(client, "x", headers={"X-A": "b"}, apiReverseProxyUrl="http://evil.example/", unknownThing=[1],
                   maxModelTokens="8000", maxResponseTokens="0500", timeoutMs="1200000")  # fmt: skip
    assert answered.status_code == 201, answered.text
    sent = upstreams.openai.requests[-1]
    assert "X-A" not in sent["headers"] and sent["body"]["max_tokens"] == 500
    for bad in ("8000.5", "-5", "0", " 8000", "1e3", "99999999"):  # not digits of a count in range: refused
        assert "maxModelTokens" in assert_error(ask(client, "x", maxModelTokens=bad), 400), bad
    message = assert_error(ask(client, "x", debug=True, completionParams={"messages": []}), 400)
    assert message == "opts.opts.completionParams.messages is set by the server"


def test_messages_are_the_originals_chinese_unless_asked_otherwise(tmp_path: Path, upstreams: Upstreams) -> None:
    """A client of the original sends no Accept-Language (curl, axios, a mini-program's backend): it gets
    the original's exact texts (contract.md), and English when it asks for it."""
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_LANGUAGE="default")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert assert_error(c.post("/api/v1/gpt/getInfo", json={}), 400) == (
                "有效值为1或2,模式mode必填,有效值为1,类型type必填,gpt请求参数opts必填"
            )
            body = {"mode": "1", "type": "1", "opts": {}}
            assert assert_error(c.post("/api/v1/gpt/getInfo", json=body), 400) == (
                "opts.key必填,opts.content必填,opts.isFollow必填"
            )
            english = c.post("/api/v1/gpt/getInfo", json=body, headers={"Accept-Language": "en-US,en;q=0.9"})
            assert assert_error(english, 400).startswith("opts.key is required")
            anything = c.post("/api/v1/gpt/getInfo", json=body, headers={"Accept-Language": "en-GB;q=0.8, *;q=0.9"})
            assert assert_error(anything, 400).startswith("opts.key必填")  # "*" ranks first: the default
            v1 = c.post("/v1/responses", json={}, headers={"Authorization": f"Bearer {KEY}"})
            assert v1.status_code == 400 and v1.json()["error"]["message"].isascii()  # OpenAI's doors: English
    finally:
        server.stop()


def test_language_setting_and_header(client: httpx.Client) -> None:
    english = assert_error(client.post("/api/v1/gpt/getInfo", json={"mode": "1", "type": "1"}), 400)
    assert english == "opts is required"
    zh = client.post("/api/v1/gpt/getInfo", json={"mode": "1", "type": "1"}, headers={"Accept-Language": "zh"})
    assert assert_error(zh, 400) == "gpt请求参数opts必填"
    preferred = client.post(
        "/api/v1/gpt/getInfo", json={"mode": "1", "type": "1"}, headers={"Accept-Language": "zh;q=0.3, en;q=0.9"}
    )
    assert assert_error(preferred, 400) == "opts is required"


def test_bodies_javascripts_json_parse_reads_are_read(client: httpx.Client, upstreams: Upstreams) -> None:
    """The original's body parser read a leading BOM, bytes that are not UTF-8 (as U+FFFD) and a lone
    surrogate escape (what JSON.stringify writes for text cut inside an emoji): so do we, each odd
    character as U+FFFD; what JSON itself does not allow (NaN) is still refused."""
    body = '{"mode": "1", "type": "1", "opts": {"key": "%s", "content": %s, "isFollow": false}}'
    headers = {"Content-Type": "application/json"}
    for raw, sent in (
        (b"\xef\xbb\xbf" + (body % (KEY, '"with a BOM"')).encode(), "with a BOM"),
        ((body % (KEY, '"smile \\ud83d"')).encode(), "smile \ufffd"),
        (
            (body % (KEY, '"pair \\ud83d\\ude00 and a low \\ude00 alone"')).encode(),
            "pair \U0001f600 and a low \ufffd alone",
        ),
        ((body % (KEY, '"latin-1 caf\xe9"')).encode("latin-1"), "latin-1 caf\ufffd"),
    ):
        response = client.post("/api/v1/gpt/getInfo", content=raw, headers=headers)
        assert response.status_code == 201, (raw, response.text)
        assert upstreams.openai.requests[-1]["body"]["messages"][-1]["content"] == sent
    for bad in (body % (KEY, "NaN"), body % (KEY, '"unterminated')):
        assert assert_error(client.post("/api/v1/gpt/getInfo", content=bad.encode(), headers=headers), 400)
    # Numbers read so they can be written again, as orjson reads them: past 64 bits a float; past a
    # float's range (JSON.parse's Infinity) the largest float, which an option's range refuses as it
    # refuses Infinity, and an option the original ignored leaves unread.
    numbers = '{"mode": "1", "type": "1", "opts": {"key": "%s", "content": "\\ud83d", "isFollow": false, ' \
              '"opts": {"completionParams": {"seed": %s}}}}'  # fmt: skip
    big = client.post("/api/v1/gpt/getInfo", content=(numbers % (KEY, "1" + "0" * 20)).encode(), headers=headers)
    assert big.status_code == 201, big.text
    assert upstreams.openai.requests[-1]["body"]["seed"] == 1e20
    for huge in ("1e400", "-1e400", "9" * 5000):
        passed = client.post("/api/v1/gpt/getInfo", content=(numbers % (KEY, huge)).encode(), headers=headers)
        assert passed.status_code == 201, passed.text
        assert abs(upstreams.openai.requests[-1]["body"]["seed"]) == sys.float_info.max
        ignored = numbers.replace('"completionParams": {"seed": %s}', '"foo": %s, "headers": %s')
        answer = client.post("/api/v1/gpt/getInfo", content=(ignored % (KEY, huge, huge)).encode(), headers=headers)
        assert answer.status_code == 201, answer.text
    ranged = numbers.replace('"completionParams": {"seed": %s}', '"maxModelTokens": %s')
    assert "maxModelTokens" in assert_error(client.post("/api/v1/gpt/getInfo", headers=headers,
                                                        content=(ranged % (KEY, "1e400")).encode()), 400)  # fmt: skip
    deep = b"\xef\xbb\xbf" + b"[" * 500 + b"]" * 500  # the depth is what is wrong with it, not the BOM
    assert "nested more than 200 levels deep" in assert_error(client.post("/api/v1/gpt/getInfo", content=deep,
                                                                          headers=headers), 400)  # fmt: skip
    form = "\ufeffemail=a@b.cd&type=9&password=x".encode()  # a form's BOM is no part of its first field's name
    refused = client.post("/api/v1/token/getInfo", content=form,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert "type" in assert_error(refused, 400, "/api/v1/token/getInfo") and "email" not in refused.json()["message"]


def test_bad_json_and_wrong_body_types(client: httpx.Client) -> None:
    bad = client.post("/api/v1/gpt/getInfo", content=b'{"mode": "1",', headers={"Content-Type": "application/json"})
    assert assert_error(bad, 400).startswith("the request body is not valid JSON")
    array = client.post("/api/v1/gpt/getInfo", json=[1, 2])
    assert assert_error(array, 400) == "the request body must be a JSON object"
    opts = client.post("/api/v1/gpt/getInfo", json={"mode": "1", "type": "1", "opts": "x"})
    assert assert_error(opts, 400) == "opts must be an object"


def test_huge_body_is_413(client: httpx.Client) -> None:
    response = ask(client, "x" * 2_000_000)
    assert "larger than 1048576 bytes" in assert_error(response, 413)


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert assert_error(client.get("/nowhere?password=hunter2"), 404, "/nowhere") == "Cannot GET /nowhere"
    message = assert_error(client.get("/api/v1/gpt/getInfo"), 405)
    assert message == "GET is not allowed on /api/v1/gpt/getInfo"


def test_error_path_never_carries_the_query_string(client: httpx.Client) -> None:
    response = client.get("/api/v1/token/getInfo", params={"type": "9", "email": "a@b.c", "password": "hunter2"})
    assert_error(response, 400, "/api/v1/token/getInfo")
    assert "hunter2" not in response.text


def test_token_validation_messages(client: httpx.Client) -> None:
    zh = client.get("/api/v1/token/getInfo", headers=ZH)
    assert assert_error(zh, 400, "/api/v1/token/getInfo") == (
        "type值只能为1或2,1为获取token，2为刷新token,email必填,password必填"
    )


def test_swagger_ui_is_served_locally(client: httpx.Client) -> None:
    page = client.get("/api")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "https://" not in page.text  # nothing from a CDN: it must render offline
    # Swagger UI's default validator badge would send the document's URL to validator.swagger.io.
    assert 'validatorUrl: "none"' in page.text
    for asset in ("/api/static/swagger-ui-bundle.js", "/api/static/swagger-ui.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 10_000
        assert asset.rsplit("/", 1)[1] in page.text


_SYNTAX = set("^$\\.*+?()[]{}|/")
_ESCAPES = set("dDwWsSbBnrtfv0cxukpP123456789")


def _ecmascript_u_problem(pattern: str) -> str | None:
    """Where a pattern is no valid ECMAScript regular expression in ``u`` mode (JSON Schema's dialect,
    which ajv and browsers compile): an identity escape of a character that is not syntax, such as
    ``\\-`` outside a class (a class may escape ``-``)."""
    in_class, i = False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escaped = pattern[i + 1] if i + 1 < len(pattern) else ""
            if escaped not in _SYNTAX and escaped not in _ESCAPES and not (in_class and escaped == "-"):
                return f"\\{escaped} at {i}"
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        i += 1
    return None


def _patterns(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


def test_every_pattern_of_the_openapi_document_compiles_as_ecmascript(client: httpx.Client) -> None:
    patterns = _patterns(client.get("/api-json").json())
    assert len(patterns) > 10
    assert [(p[:80], why) for p in patterns if (why := _ecmascript_u_problem(p))] == []
    assert _ecmascript_u_problem("^a\\-b$") and not _ecmascript_u_problem("^[a\\-b]\\.$")  # the checker checks


def test_openapi_document_describes_routes_fields_and_errors(client: httpx.Client) -> None:
    doc = client.get("/api-json").json()
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/api/v1/gpt/getInfo"]["post"]
    assert {"201", "200", "400", "401", "404", "413", "429", "502", "503", "504"} <= set(post["responses"])
    fields = doc["components"]["schemas"]["GptRequest"]["properties"]["opts"]["properties"]
    assert {"key", "content", "isFollow", "parentMessageId", "opts"} <= set(fields)
    assert {"get", "post"} <= set(doc["paths"]["/api/v1/token/getInfo"])
    assert "text/event-stream" in post["responses"]["200"]["content"]


def test_health_and_readiness(client: httpx.Client) -> None:
    health = client.get("/healthz").json()["data"]
    assert health["alive"] is True and health["streams"] == 0 and health["queues"] == 0
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["data"]["store"] == "sqlite"


def test_cors_is_off_by_default_and_on_when_configured(client: httpx.Client, upstreams: Any, tmp_path: Any) -> None:
    from .harness import ServerProcess

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    assert "access-control-allow-origin" not in client.options("/api/v1/gpt/getInfo", headers=preflight).headers
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_CORS_ORIGINS="https://app.example")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            allowed = c.options("/api/v1/gpt/getInfo", headers=preflight)
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == "https://app.example"
            other = c.options("/api/v1/gpt/getInfo", headers={**preflight, "Origin": "https://evil.example"})
            assert other.status_code == 400
            answer = c.post("/api/v1/gpt/getInfo", json={}, headers={"Origin": "https://app.example"})
            assert answer.headers["access-control-allow-origin"] == "https://app.example"
    finally:
        server.stop()


def test_the_originals_paths_match_in_any_case(client: httpx.Client) -> None:
    """Its server (NestJS on Express) matched paths without regard to case: a client that wrote
    ``getinfo`` worked there. OpenAI's paths are matched as written."""
    body = {"mode": "1", "type": "1", "opts": {"key": KEY, "content": "any case", "isFollow": False}}
    assert client.post("/api/v1/gpt/getinfo", json=body).status_code == 201
    assert client.post("/API/V1/GPT/GETINFO/", json=body).status_code == 201
    assert client.get("/API-JSON").status_code == 200
    assert client.get("/api/v1/TOKEN/getinfo", params={"type": "9"}).status_code == 400  # reached: validated
    assert client.post("/V1/responses", json={}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
