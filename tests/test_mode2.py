"""Mode 2 (ChatGPT web access token): follow-ups by parentMessageId alone, both reply forms, errors."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from .conftest import Upstreams, ask, ask_at_once
from .harness import ServerProcess
from .standins.chatgpt_web import mint
from .test_api_contract import assert_error


@pytest.fixture
def token() -> str:
    return mint(f"user{time.monotonic_ns()}@example.com")


@pytest.mark.parametrize("classic", [False, True], ids=["delta", "classic"])
def test_three_turn_conversation_needs_only_parent_ids(
    client: httpx.Client, upstreams: Upstreams, token: str, classic: bool
) -> None:
    upstreams.chatgpt.force_classic = classic
    first = ask(client, "one", key=token, mode="2").json()["data"]
    second = ask(client, "two", parent=first["id"], key=token, mode="2").json()["data"]
    third_response = ask(client, "three", parent=second["id"], key=token, mode="2")
    assert third_response.status_code == 201, third_response.text
    third = third_response.json()["data"]
    # The stand-in only counts earlier turns when conversation_id and parent_message_id were right.
    assert (first["text"], second["text"], third["text"]) == ("echo(1): one", "echo(2): two", "echo(3): three")
    assert set(third) == {"role", "id", "parentMessageId", "conversationId", "text"}
    assert first["conversationId"] == second["conversationId"] == third["conversationId"]
    sent = upstreams.chatgpt.requests[-1]["body"]
    assert sent["conversation_id"] == first["conversationId"]
    # Ids are ours (issue 8): the backend's own message id went upstream, not the id we gave the client.
    assert sent["parent_message_id"] != second["id"]
    assert sent["messages"][0]["id"] == third["parentMessageId"]
    assert sent["supported_encodings"] == ["v1"] and sent["model"] == "auto"


def test_first_message_has_fresh_parent_and_no_conversation(
    client: httpx.Client, upstreams: Upstreams, token: str
) -> None:
    ask(client, "hi", key=token, mode="2", model="gpt-4o", headers={"X-Extra": "1"})
    request = upstreams.chatgpt.requests[-1]
    assert "conversation_id" not in request["body"]
    assert request["body"]["model"] == "gpt-4o"
    assert request["headers"]["X-Extra"] == "1"
    assert request["headers"]["Accept"] == "text/event-stream"


def test_authorization_header_cannot_be_replaced(client: httpx.Client, token: str) -> None:
    message = assert_error(ask(client, "x", key=token, mode="2", headers={"authorization": "Bearer x"}), 400)
    assert message == "opts.opts.headers cannot set authorization"
    for name in ("X-Forwarded-For", "Forwarded", "x-real-ip", "Cookie2", "X-Forwarded-Port", "x-forwarded-server",
                 "X-Forwarded-Prefix", "X-Forwarded-Client-Cert", "True-Client-IP", "CF-Connecting-IP", "X-Client-IP",
                 "X-Original-Forwarded-For", "Via", "X_Forwarded_For", "X_Real_IP", "Transfer_Encoding",
                 "Proxy_Authorization", "X-Forwarded", "X-Original-URL", "X-HTTP-Method-Override", "X-Host",
                 "Max-Forwards"):  # who the request is from, and what it asks for, are ours  # fmt: skip
        refused = assert_error(ask(client, "x", key=token, mode="2", headers={name: "203.0.113.9"}), 400)
        assert refused == f"opts.opts.headers cannot set {name}", refused


def test_unknown_and_foreign_parent_are_404(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    assert_error(ask(client, "x", parent="0b8a3f4e-0000-4000-8000-000000000000", key=token, mode="2"), 404)
    mine = ask(client, "mine", key=token, mode="2").json()["data"]["id"]
    other = mint("someone-else@example.com")
    before = len(upstreams.chatgpt.requests)
    assert_error(ask(client, "steal", parent=mine, key=other, mode="2"), 404)
    assert len(upstreams.chatgpt.requests) == before
    mode1 = assert_error(ask(client, "cross", parent=mine, key=token, mode="1"), 400)
    assert mode1 == f'parentMessageId {mine} belongs to a mode "2" conversation'


def test_expired_token_is_refused_before_any_call(client: httpx.Client, upstreams: Upstreams) -> None:
    expired = mint("late@example.com", exp=time.time() - 60)
    message = assert_error(ask(client, "x", key=expired, mode="2"), 401)
    assert message.startswith("the access token expired at 20")
    assert not upstreams.chatgpt.requests


def test_rejected_token_is_401(client: httpx.Client) -> None:
    forged = mint("x@example.com")[:-4] + "AAAA"
    assert "rejected the credential" in assert_error(ask(client, "x", key=forged, mode="2"), 401)


def test_cloudflare_challenge_is_502(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    upstreams.apps.call(lambda: upstreams.chatgpt.fail_next.append("cloudflare"))
    message = assert_error(ask(client, "x", key=token, mode="2"), 502)
    assert message.startswith("blocked by Cloudflare")


def test_upstream_5xx_is_502(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    upstreams.apps.call(lambda: upstreams.chatgpt.fail_next.append("500"))
    assert "failed with HTTP 500" in assert_error(ask(client, "x", key=token, mode="2"), 502)


def test_conversation_unknown_upstream_is_404(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    first = ask(client, "one", key=token, mode="2").json()["data"]
    upstreams.apps.call(lambda: upstreams.chatgpt.conversations.pop(first["conversationId"]))
    message = assert_error(ask(client, "two", parent=first["id"], key=token, mode="2"), 404)
    assert first["conversationId"] in message


def test_cut_stream_keeps_the_text_that_arrived(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    upstreams.apps.call(lambda: upstreams.chatgpt.fail_next.append("cut"))
    response = ask(client, "a longer question here", key=token, mode="2")
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert data["incomplete"] is True
    assert data["text"] == "echo(1): a"


def test_one_account_is_queued_not_refused(client: httpx.Client, upstreams: Upstreams, server_url: str) -> None:
    token = mint("busy@example.com")
    upstreams.chatgpt.chunk_delay = 0.05
    upstreams.chatgpt.max_concurrent_seen = 0
    results = ask_at_once([server_url], 4, "parallel", key=token, mode="2")
    assert results == [201] * 4
    assert upstreams.chatgpt.max_concurrent_seen == 1  # never two at once for one account


@pytest.fixture
def server_url(server) -> str:  # type: ignore[no-untyped-def]
    return str(server.url)


def test_stream_cut_before_any_text_is_502(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    upstreams.apps.call(lambda: upstreams.chatgpt.fail_next.append("cut0"))
    message = assert_error(ask(client, "x", key=token, mode="2"), 502)
    assert message.endswith("closed the reply stream before any text arrived")


def test_busy_account_upstream_is_429(client: httpx.Client, upstreams: Upstreams) -> None:
    email = "elsewhere@example.com"  # a reply in progress from another client of the same account
    upstreams.apps.call(lambda: upstreams.chatgpt.busy.add(email))
    try:
        message = assert_error(ask(client, "x", key=mint(email), mode="2"), 429)
    finally:
        upstreams.apps.call(lambda: upstreams.chatgpt.busy.discard(email))
    assert message.endswith("only one message at a time for this account")


def test_reverse_proxy_url_must_be_allowed(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    message = assert_error(ask(client, "x", key=token, mode="2", apiReverseProxyUrl="http://127.0.0.1:9/conv"), 400)
    assert "apiReverseProxyUrl" in message and "CHATGPT_SERVER_ALLOWED_UPSTREAMS" in message
    assert not upstreams.chatgpt.requests


def holding_the_account(
    server: ServerProcess, upstreams: Upstreams, token: str, answered: list[int]
) -> threading.Thread:
    """A slow first turn of ``token``'s account, in a thread, once the upstream has it (its status goes
    to ``answered``): the account's queue is busy until the thread ends."""

    def hold() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            answered.append(ask(c, "one two three four five six seven", key=token, mode="2").status_code)

    holder = threading.Thread(target=hold)
    holder.start()
    deadline = time.monotonic() + 5
    while not upstreams.chatgpt.requests:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return holder


def test_a_client_that_leaves_while_queued_is_logged_not_crashed(server: ServerProcess, upstreams: Upstreams) -> None:
    """A turn waiting for its account's queue is given up when its client leaves: the access log says so
    (499, "client left"), no traceback, and the upstream never hears of it."""
    token = mint("leaver@example.com")
    upstreams.chatgpt.chunk_delay = 0.1
    first: list[int] = []
    holder = holding_the_account(server, upstreams, token, first)
    deadline = time.monotonic() + 5
    with httpx.Client(base_url=server.url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        ask(c, "the queued question", key=token, mode="2")
    holder.join()
    assert first == [201]
    while "client left" not in server.log():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    left = [line for line in server.log().splitlines() if "client left" in line]
    assert len(left) == 1 and " 499 " in left[0], left
    assert "Traceback" not in server.log() and "CancelledError" not in server.log()
    assert all("the queued question" not in str(r) for r in upstreams.chatgpt.requests)


def test_a_turn_that_never_gets_past_its_accounts_queue_says_so(server: ServerProcess, upstreams: Upstreams) -> None:
    """Its timeout spent waiting for the account (the web backend takes one message at a time): a 504
    that says the account was busy and nothing was sent, not that the upstream did not answer."""
    token = mint("queued@example.com")
    upstreams.chatgpt.chunk_delay = 0.15
    first: list[int] = []
    holder = holding_the_account(server, upstreams, token, first)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            message = assert_error(ask(c, "queued", key=token, mode="2", timeoutMs=300), 504)
        assert "answering another message" in message and "nothing was sent" in message, message
    finally:
        holder.join()
        upstreams.chatgpt.chunk_delay = 0.0
    assert first == [201]
    assert all("queued" not in str(r["body"]) for r in upstreams.chatgpt.requests)


@pytest.mark.parametrize("exp", [-1e20, -1, 1e300, 0])
def test_a_token_that_expired_at_any_time_is_a_401(client: httpx.Client, upstreams: Upstreams, exp: float) -> None:
    import base64
    import json

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    token = f"{part({'alg': 'RS256'})}.{part({'exp': exp})}.AAAA"
    response = ask(client, "x", key=token, mode="2")
    if exp > 1e10:  # not expired: the backend is asked (and refuses a token it did not sign)
        assert response.status_code != 500, response.text
    else:
        assert "expired" in assert_error(response, 401)


def test_a_long_question_is_sent_to_the_web_backend(client: httpx.Client, token: str) -> None:
    """The web backend keeps the history itself; the original's mode 2 counted no tokens, and neither
    does the default here beyond the model's own window."""
    long = " ".join(f"word{i}" for i in range(5000))
    answered = ask(client, long, key=token, mode="2")
    assert answered.status_code == 201, answered.text
    assert answered.json()["data"]["text"].startswith("echo(1): word0 word1")


def test_mode_1_options_are_ignored_in_mode_2(client: httpx.Client, upstreams: Upstreams, token: str) -> None:
    """As the original ignored them: a client that always sends completionParams works in mode 2 too."""
    answered = ask(client, "hi", key=token, mode="2", completionParams={"temperature": 2}, apiOrg="org-x",
                   apiBaseUrl="http://evil.example/v1", maxModelTokens="9000")  # fmt: skip
    assert answered.status_code == 201, answered.text
    # Without maxModelTokens the budget is the model's window: a reply share past mode 1's 4000 default fits.
    assert ask(client, "hi", key=token, mode="2", maxResponseTokens=8000).status_code == 201
    assert "temperature" not in upstreams.chatgpt.requests[-1]["body"]
    # One past the window is named as such (not as a prompt too long for a budget of 1 token).
    over = assert_error(ask(client, "hi", key=token, mode="2", maxResponseTokens=999_999), 400)
    assert "maxResponseTokens" in over and ("context window" in over or "上下文窗口" in over), over


def test_a_reply_handed_off_mid_stream_is_kept_as_incomplete(client: httpx.Client, upstreams: Upstreams,
                                                             token: str) -> None:  # fmt: skip
    """After a stream_handoff frame the rest of the reply is only in the conversation: what arrived is
    not the whole reply, so it is marked incomplete, never told as finished."""
    upstreams.apps.call(lambda: upstreams.chatgpt.fail_next.append("handoff"))
    answered = ask(client, "one two three four", key=token, mode="2")
    assert answered.status_code == 201, answered.text
    data = answered.json()["data"]
    assert data["text"] == "echo(1): one" and data["incomplete"] is True
