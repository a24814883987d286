"""Bad input gets a clear error, never a 500: every field of the body, every wrong JSON type."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from .conftest import KEY, Upstreams

WRONG: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"a": 1}, "9" * 30]
VALID = {
    "mode": "1",
    "type": "1",
    "opts": {
        "key": KEY,
        "content": "hello",
        "isFollow": False,
        "parentMessageId": None,
        "opts": {
            "systemMessage": "Be brief.",
            "completionParams": {"model": "gpt-3.5-turbo", "temperature": 0.5},
            "maxModelTokens": 4000,
            "maxResponseTokens": 100,
            "timeoutMs": 5000,
            "idleTimeoutMs": 5000,
            "apiOrg": "org",
            "model": "gpt-3.5-turbo",
        },
    },
}
PATHS = [
    ("mode",), ("type",), ("opts",), ("opts", "key"), ("opts", "content"), ("opts", "isFollow"),
    ("opts", "parentMessageId"), ("opts", "opts"), ("opts", "opts", "systemMessage"),
    ("opts", "opts", "completionParams"), ("opts", "opts", "completionParams", "model"),
    ("opts", "opts", "maxModelTokens"), ("opts", "opts", "maxResponseTokens"), ("opts", "opts", "timeoutMs"),
    ("opts", "opts", "idleTimeoutMs"), ("opts", "opts", "apiOrg"), ("opts", "opts", "model"),
    ("opts", "opts", "apiBaseUrl"), ("opts", "opts", "headers"), ("opts", "opts", "apiReverseProxyUrl"),
]  # fmt: skip


def with_value(path: tuple[str, ...], value: Any, mode: str, kind: str) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    body["mode"], body["type"] = mode, kind
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize("path", PATHS, ids=".".join)
def test_no_wrong_type_anywhere_gives_a_500(client: httpx.Client, path: tuple[str, ...]) -> None:
    for mode in ("1", "2"):
        for kind in ("1", "2"):
            for value in WRONG:
                response = client.post("/api/v1/gpt/getInfo", json=with_value(path, value, mode, kind))
                assert response.status_code < 500 or response.status_code in (502, 504), (
                    path,
                    value,
                    mode,
                    kind,
                    response.text,
                )
                if response.headers["content-type"].startswith("application/json"):
                    body = response.json()
                    assert body["success"] is (response.status_code < 300)
                    assert body["message"]


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe", b'{"mode": NaN}', b"1e999"])
def test_odd_bodies(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/api/v1/gpt/getInfo", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text


def test_token_endpoint_odd_bodies(client: httpx.Client) -> None:
    for body in ([1], "x", {"type": [], "email": {}, "password": 5}, {"type": 1, "email": "a", "password": ""}):
        response = client.post("/api/v1/token/getInfo", json=body)
        assert response.status_code == 400, response.text


def test_a_key_past_16384_characters_is_refused_before_any_upstream_call(client: httpx.Client,
                                                                          upstreams: Upstreams) -> None:  # fmt: skip
    """As on the /v1 doors: a key no upstream has, 200 kB as a header, is a 400 naming ``opts.key``."""
    before = len(upstreams.openai.requests)
    for kind in ("1", "2"):
        body = with_value(("opts", "key"), KEY + "x" * 200_000, "1", kind)
        response = client.post("/api/v1/gpt/getInfo", json=body)
        assert response.status_code == 400 and response.json()["message"] == "opts.key must be at most 16384 characters"
    assert len(upstreams.openai.requests) == before


def test_two_authorization_headers_are_refused_not_guessed_between(client: httpx.Client) -> None:
    """Which key is meant? A proxy in front may have checked the other one: a 400, never the first."""
    body = {"model": "gpt-4o-mini", "input": "hi"}
    for path in ("/v1/responses", "/v1/chat/completions", "/v1/models"):
        headers = [("Authorization", "Bearer sk-test-first-0000000000"), ("Authorization", f"Bearer {KEY}")]
        response = client.request("GET" if path == "/v1/models" else "POST", path, headers=headers,
                                  json=None if path == "/v1/models" else body)  # fmt: skip
        assert response.status_code == 400, response.text
        assert "more than one Authorization header" in response.json()["error"]["message"]


@pytest.mark.parametrize("name", ["maxModelTokens", "maxResponseTokens", "timeoutMs", "idleTimeoutMs"])
@pytest.mark.parametrize("value", [1e30, 10**30])
def test_a_huge_whole_number_is_too_large_not_a_non_integer(client: httpx.Client, name: str, value: Any) -> None:
    response = client.post("/api/v1/gpt/getInfo", json=with_value(("opts", "opts", name), value, "1", "1"))
    assert response.status_code == 400
    assert f"opts.opts.{name} must be at most" in response.json()["message"], response.text


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/api/v1/token/getInfo", {"type": "1", "email": "a" * 400 + "@x.com", "password": "p"},
         "email must be at most 320 characters"),
        ("/api/v1/token/getInfo", {"type": "1", "email": {"a": 1}, "password": 123},
         "email must be a string,password must be a string"),
        ("/api/v1/token/device/poll", {"deviceAuthId": ["x"]}, "deviceAuthId must be a string"),
        ("/api/v1/token/device/poll", {"deviceAuthId": "x" * 10_000}, "deviceAuthId must be at most 512 characters"),
        ("/api/v1/token/device/poll", {"deviceAuthId": "a\u0000b"}, "deviceAuthId"),
        ("/api/v1/token/device/poll", {}, "deviceAuthId is required"),
    ],
)  # fmt: skip
def test_token_routes_say_what_is_wrong_with_a_field(client: httpx.Client, path: str, body: Any, words: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400 and words in response.json()["message"], response.text
