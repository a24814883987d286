"""Mode 1 (OpenAI API key): conversations, the token budget, ownership, upstream failures."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import KEY, OTHER_KEY, Upstreams, ask
from .harness import ServerProcess, free_port
from .standins.openai_api import prompt_tokens
from .test_api_contract import assert_error


def last_body(standin_requests: list[dict[str, Any]]) -> dict[str, Any]:
    assert standin_requests, "no request reached the upstream"
    body: dict[str, Any] = standin_requests[-1]["body"]
    return body


def test_three_turn_conversation_sends_history_in_order(client: httpx.Client, upstreams: Upstreams) -> None:
    first = ask(client, "one", systemMessage="Be brief.").json()["data"]
    second = ask(client, "two", parent=first["id"], systemMessage="Be brief.").json()["data"]
    third = ask(client, "three", parent=second["id"], systemMessage="Be brief.").json()["data"]
    assert (first["text"], second["text"], third["text"]) == ("echo(1): one", "echo(2): two", "echo(3): three")
    sent = last_body(upstreams.openai.requests)["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo(1): one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo(2): two"},
        {"role": "user", "content": "three"},
    ]
    assert second["conversationId"] == third["conversationId"] == first["conversationId"]
    assert third["parentMessageId"] != second["id"]  # the new user message got its own id


def test_default_completion_params_and_overrides(client: httpx.Client, upstreams: Upstreams) -> None:
    ask(client, "params", completionParams={"temperature": 0.2, "model": "gpt-4"}, apiOrg="org-1")
    request = upstreams.openai.requests[-1]
    body = request["body"]
    assert body["model"] == "gpt-4" and body["temperature"] == 0.2 and body["top_p"] == 1.0
    assert body["max_tokens"] == 1000  # min(4000 - prompt, maxResponseTokens)
    assert request["headers"]["OpenAI-Organization"] == "org-1"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"


def test_reasoning_models_get_max_completion_tokens(client: httpx.Client, upstreams: Upstreams) -> None:
    response = ask(client, "think", completionParams={"model": "o3-mini"})
    assert response.status_code == 201, response.text
    body = last_body(upstreams.openai.requests)
    assert "max_tokens" not in body and body["max_completion_tokens"] == 1000
    assert "temperature" not in body
    # A limit the client set under either name is the limit: never both (OpenAI refuses that).
    for model, given in (
        ("gpt-4o-mini", "max_completion_tokens"),
        ("o3-mini", "max_tokens"),
        ("gpt-4o-mini", "max_tokens"),
    ):
        response = ask(client, "limited", completionParams={"model": model, given: 77})
        body = last_body(upstreams.openai.requests)
        if model == "o3-mini":  # the stand-in refuses max_tokens for reasoning models, as OpenAI does
            assert response.status_code == 400 and "max_completion_tokens" in response.text
            continue
        assert response.status_code == 201, response.text
        assert body[given] == 77 and not ({"max_tokens", "max_completion_tokens"} - {given}) & body.keys()


def test_truncation_drops_oldest_turns_exactly_at_the_budget(client: httpx.Client, upstreams: Upstreams) -> None:
    options: dict[str, Any] = {"systemMessage": "You are terse.", "maxModelTokens": 260, "maxResponseTokens": 60}
    budget = 260 - 60
    parent = None
    for i in range(8):
        content = f"turn {i}: " + "lorem ipsum dolor " * (3 + i % 3)
        response = ask(client, content, parent=parent, **options)
        assert response.status_code == 201, response.text
        parent = response.json()["data"]["id"]
    sent = last_body(upstreams.openai.requests)
    messages = sent["messages"]
    used = prompt_tokens("gpt-3.5-turbo", messages)  # tiktoken's own count
    assert used <= budget
    assert messages[0]["role"] == "system" and messages[-1]["content"].startswith("turn 7")
    assert len(messages) < 2 * 8  # some turns were dropped...
    # ...and exactly enough: the next older message would not have fitted. Rebuild the whole chain
    # from what the earlier requests sent and what the stand-in answered them.
    kept = messages[1:-1]
    older_count = len(kept)
    chain: list[dict[str, Any]] = []
    for request in upstreams.openai.requests[-8:-1]:
        question = request["body"]["messages"][-1]["content"]
        chain += [{"role": "user", "content": question}]
        users = sum(1 for m in request["body"]["messages"] if m["role"] == "user")
        chain += [{"role": "assistant", "content": f"echo({users}): {question}"}]
    assert kept == chain[len(chain) - older_count :]
    next_older = chain[len(chain) - older_count - 1]
    with_one_more = [messages[0], next_older, *messages[1:]]
    assert prompt_tokens("gpt-3.5-turbo", with_one_more) > budget
    assert sent["max_tokens"] == min(260 - used, 60)


def test_prompt_alone_over_budget_is_400(client: httpx.Client, upstreams: Upstreams) -> None:
    response = ask(client, "word " * 300, maxModelTokens=200, maxResponseTokens=100)
    message = assert_error(response, 400)
    assert "more than the 100 that maxModelTokens - maxResponseTokens leaves" in message
    assert not upstreams.openai.requests


def test_unknown_and_foreign_parent_are_404(client: httpx.Client, upstreams: Upstreams) -> None:
    message = assert_error(ask(client, "x", parent="chatcmpl-nothing"), 404)
    assert "chatcmpl-nothing" in message
    mine = ask(client, "mine").json()["data"]["id"]
    upstreams.openai.requests.clear()
    assert_error(ask(client, "steal", parent=mine, key=OTHER_KEY), 404)
    assert not upstreams.openai.requests  # never a silent answer without history


def test_usage_marked_estimated_when_upstream_gives_none(client: httpx.Client, upstreams: Upstreams) -> None:
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("no-usage"))
    usage = ask(client, "count me", systemMessage="").json()["data"]["detail"]["usage"]
    assert usage["estimated"] is True
    assert usage["prompt_tokens"] == prompt_tokens("gpt-3.5-turbo", [{"role": "user", "content": "count me"}])
    # Half of it (the completion's count alone): ours for the rest, said to be estimated, totals that add up.
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append("half-usage"))
    half = ask(client, "count me", systemMessage="").json()["data"]["detail"]["usage"]
    assert half["completion_tokens"] == 3 and half["prompt_tokens"] == usage["prompt_tokens"]
    assert half["total_tokens"] == half["prompt_tokens"] + 3 and half["estimated"] is True


def test_disallowed_api_base_url_is_refused_before_any_request(client: httpx.Client) -> None:
    received: list[bytes] = []
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.settimeout(0.5)
        url = f"http://127.0.0.1:{trap.getsockname()[1]}/v1"
        message = assert_error(ask(client, "x", apiBaseUrl=url), 400)
        try:
            conn, _ = trap.accept()
            received.append(conn.recv(100))
        except TimeoutError:
            pass
    assert "CHATGPT_SERVER_ALLOWED_UPSTREAMS" in message and url in message
    assert received == []


def test_allow_listed_api_base_url_is_used(client: httpx.Client, upstreams: Upstreams) -> None:
    response = ask(client, "via alt", apiBaseUrl=upstreams.alt_openai_url + "/")
    assert response.status_code == 201
    assert upstreams.alt_openai.requests and not upstreams.openai.requests
    # Trimmed as JavaScript trims (the original's, and the OpenAPI pattern's \s): U+FEFF is space, U+001C not.
    assert ask(client, "via alt", apiBaseUrl="\ufeff " + upstreams.alt_openai_url + "\u3000").status_code == 201
    assert ask(client, "via alt", apiBaseUrl="\x1c" + upstreams.alt_openai_url).status_code == 400


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        ("rate", 429, "rate limit reached"),
        ("quota", 429, "quota exhausted"),
        ("500", 502, "failed with HTTP 500"),
        ("503", 502, "failed with HTTP 503"),
        ("html", 502, "other than the expected reply"),
    ],
)
def test_upstream_failures_become_precise_errors(
    client: httpx.Client, upstreams: Upstreams, failure: str, status: int, words: str
) -> None:
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append(failure))
    response = ask(client, "x")
    message = assert_error(response, status)
    assert words in message and "127.0.0.1:" in message
    # The same answer to a stream request: the same plain error, before any stream begins.
    upstreams.apps.call(lambda: upstreams.openai.fail_next.append(failure))
    streamed = ask(client, "x", kind="2")
    assert streamed.headers["content-type"].startswith("application/json"), streamed.text
    assert assert_error(streamed, status) == message
    if failure == "rate":
        assert response.headers["Retry-After"] == "7"
    if failure == "quota":
        assert response.headers["Retry-After"] == "3600"


def test_invalid_key_is_401_without_the_key(client: httpx.Client) -> None:
    response = ask(client, "x", key="sk-wrongwrongwrong1234")
    message = assert_error(response, 401)
    assert "invalid_api_key" in message and "wrong" not in response.text and "1234" not in response.text


def test_upstream_400s_pass_the_message(client: httpx.Client) -> None:
    message = assert_error(ask(client, "x", completionParams={"model": "gpt-nope"}), 404)  # OpenAI's status
    assert "The model `gpt-nope` does not exist" in message
    big = ask(client, "word " * 1500, completionParams={"model": "gpt-small-test"}, maxModelTokens=10_000)
    assert "maximum context length is 2048 tokens" in assert_error(big, 400)


def test_unreachable_upstream_is_502_and_timeout_504(tmp_path: Path, upstreams: Upstreams) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = upstreams.env(CHATGPT_SERVER_ALLOWED_UPSTREAMS=dead)
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            message = assert_error(ask(c, "x", apiBaseUrl=dead), 502)
            assert "cannot reach 127.0.0.1" in message and "connection failed" in message
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("sleep:2"))
            message = assert_error(ask(c, "x", timeoutMs=300), 504)
            assert "did not answer within 0.3 s" in message
    finally:
        server.stop()


def test_conversation_survives_sigkill(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.env()).start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        first = ask(c, "remember me").json()["data"]
        second = ask(c, "and this", parent=first["id"]).json()["data"]
    server.kill()  # SIGKILL right after answering
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            third = ask(c, "still there?", parent=second["id"])
            assert third.status_code == 201, third.text
            assert third.json()["data"]["text"] == "echo(3): still there?"
    finally:
        server.stop()


def test_completion_params_pass_through_and_the_upstream_judges_them(client: httpx.Client) -> None:
    ok = ask(client, "x", completionParams={"stop": ["\n"], "seed": 7, "frequency_penalty": 0.1})
    assert ok.status_code == 201, ok.text
    refused = assert_error(ask(client, "x", completionParams={"temprature": 0.3}), 400)
    assert "Unrecognized request argument supplied: temprature" in refused


@pytest.mark.parametrize("kind", ["1", "2"])
def test_a_reply_of_tool_calls_only_shows_them_and_its_id_continues(client: httpx.Client, kind: str) -> None:
    """A model that answers with a tool call only: the client sees the call in ``detail`` (as the
    upstream's completion carries it), and the ``id`` it is told is stored, so a follow-up reaches the
    upstream (which here, strict as OpenAI, asks for the call's output), never a 404."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    first = ask(client, "call:get_weather", kind=kind, completionParams={"tools": tools})
    if kind == "2":
        done = [json.loads(line[6:]) for line in first.text.splitlines() if line.startswith("data: ")][-1]
        data = done["data"]
    else:
        assert first.status_code == 201, first.text
        data = first.json()["data"]
    message = data["detail"]["choices"][0]["message"]
    assert message["content"] is None and data["text"] == ""
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    assert data["detail"]["choices"][0]["finish_reason"] == "tool_calls"
    follow = ask(client, "and?", parent=data["id"], completionParams={"tools": tools})
    assert follow.status_code == 400, follow.text
    assert "must be followed by tool messages" in follow.json()["message"]


def test_the_default_system_message_is_dated_in_utc(tmp_path: Path, upstreams: Upstreams) -> None:
    """As the original's library dated it (``toISOString``): a server whose local date is another day
    still says today's UTC date."""
    hour = time.gmtime().tm_hour
    zone = "Etc/GMT-14" if hour >= 10 else "Etc/GMT+12"  # one of them is on another day at any hour
    server = ServerProcess(tmp_path, {**upstreams.env(), "TZ": zone}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert ask(c, "what day is it").status_code == 201
    finally:
        server.stop()
    system = last_body(upstreams.openai.requests)["messages"][0]["content"]
    assert system.endswith("Current date: " + time.strftime("%Y-%m-%d", time.gmtime())), system
