"""ChatGPT accounts as they work today: device sign-in, rotating refresh tokens shared by instances,
and mode 2 on the Codex backend, against stand-ins as strict as auth.openai.com and chatgpt.com."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import Upstreams, ask, ask_at_once
from .harness import ServerProcess, within
from .standins.chatgpt_auth import Tokens
from .test_api_contract import assert_error
from .test_streaming import events

TOKEN_PATH = "/api/v1/token"


@pytest.fixture(scope="module")
def codex_server(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("codex"), upstreams.codex_env()).start()
    yield proc
    proc.stop()


@pytest.fixture
def cx(codex_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=codex_server.url, timeout=30) as c:
        yield c


def unique(name: str) -> tuple[str, str]:
    tag = os.urandom(4).hex()
    return f"{name}-{tag}@example.com", f"acct-{name}-{tag}"


def sign_in(client: httpx.Client, upstreams: Upstreams, email: str, account: str, plan: str = "plus",
            pending_first: bool = False) -> dict[str, Any]:  # fmt: skip
    """Device sign-in over HTTP, with the stand-in playing the person (``pending_first``: a poll before
    the person approves, which then makes the next poll wait out the issuer's interval)."""
    started = client.post(f"{TOKEN_PATH}/device", json={})
    assert started.status_code == 201, started.text
    device = started.json()["data"]
    assert set(device) == {"userCode", "verificationUri", "deviceAuthId", "interval", "expiresAt"}
    assert device["verificationUri"] == upstreams.auth_url + "/codex/device"
    if pending_first:
        pending = client.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device["deviceAuthId"]})
        assert pending.status_code == 201 and pending.json()["data"]["status"] == "pending"
    assert upstreams.apps.call(lambda: upstreams.auth.approve(device["userCode"], email, account, plan))
    deadline = time.monotonic() + float(device["interval"]) + 5
    while True:  # the gateway asks the issuer at most once per interval: a poll before then is pending
        done = client.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device["deviceAuthId"]})
        assert done.status_code == 201, done.text
        if done.json()["data"]["status"] != "pending":
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    data: dict[str, Any] = done.json()["data"]
    assert data["status"] == "signed_in" and data["email"] == email and data["accountId"] == account
    return data


def grant_for(upstreams: Upstreams, email: str) -> Any:
    return upstreams.apps.call(lambda: next(g for g in upstreams.auth.grants.values() if g.email == email))


def test_device_sign_in_over_http_then_three_turns_on_codex(cx: httpx.Client, upstreams: Upstreams) -> None:
    email, account = unique("three")
    signed = sign_in(cx, upstreams, email, account, pending_first=True)
    token = signed["accessToken"]
    assert signed["plan"] == "plus" and signed["expiresAt"] > time.time()
    first = ask(cx, "one", key=token, mode="2").json()["data"]
    second = ask(cx, "two", parent=first["id"], key=token, mode="2").json()["data"]
    third = ask(cx, "three", parent=second["id"], key=token, mode="2").json()["data"]
    assert (first["text"], second["text"], third["text"]) == ("echo(1): one", "echo(2): two", "echo(3): three")
    request = upstreams.codex.requests[-1]
    body, headers = request["body"], request["headers"]
    said = [(i["role"], i["content"][0]["text"]) for i in body["input"]]
    assert said == [("user", "one"), ("assistant", "echo(1): one"), ("user", "two"), ("assistant", "echo(2): two"),
                    ("user", "three")]  # fmt: skip
    assert body["store"] is False and body["stream"] is True and body["instructions"]
    assert body["model"] == "gpt-5" and "temperature" not in body and "max_output_tokens" not in body
    assert headers["ChatGPT-Account-Id"] == account and headers["originator"] == "chatgpt_server"
    assert headers["User-Agent"].startswith("chatgpt-server/")
    sessions = {r["headers"].get("session_id") for r in upstreams.codex.requests[-3:]}
    assert len(sessions) == 1 and None not in sessions  # stable per conversation
    assert third["detail"]["rateLimits"]["primaryUsedPercent"] == 12  # the plan's window, for the client
    streamed = ask(cx, "four", parent=third["id"], key=token, mode="2", kind="2")
    assert "event: done" in streamed.text and "echo(4): four" in streamed.text


def test_mode_2_budgets_by_the_models_window_unless_the_client_sets_one(cx: httpx.Client, upstreams: Upstreams) -> None:
    """The original's mode 2 counted no tokens (its 4000 was the API library's, for mode 1): a long
    question is sent, and a long conversation's whole history, within the ChatGPT model's window. A
    maxModelTokens the client sets still bounds it."""
    email, account = unique("window")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    long = " ".join(f"word{i}" for i in range(5000))  # about 10,000 tokens
    parent = None
    for turn in range(4):
        answered = ask(cx, f"{turn} {long}", parent=parent, key=token, mode="2")
        assert answered.status_code == 201, answered.text
        parent = answered.json()["data"]["id"]
    said = [i["role"] for i in upstreams.codex.requests[-1]["body"]["input"]]
    assert said == ["user", "assistant"] * 3 + ["user"]  # every turn, none cut
    bounded = ask(cx, "more", parent=parent, key=token, mode="2", maxModelTokens=30_000)
    assert bounded.status_code == 201, bounded.text
    assert len(upstreams.codex.requests[-1]["body"]["input"]) < 7
    refused = ask(cx, long, key=token, mode="2", maxModelTokens=4000)
    assert refused.status_code == 400 and "maxModelTokens" in refused.json()["message"]


def test_device_sign_in_from_the_command_line(tmp_path: Path, upstreams: Upstreams) -> None:
    email, account = unique("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
    env.update(upstreams.codex_env(CHATGPT_SERVER_DATA_DIR=str(tmp_path / "data")))
    upstreams.apps.call(lambda: setattr(upstreams.auth, "interval", "0"))
    try:
        login = subprocess.Popen([sys.executable, "-m", "chatgpt_server", "login"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert login.stdout is not None
        shown = ""
        code = None
        while code is None:
            line = login.stdout.readline()
            assert line, f"login ended early: {login.stderr.read() if login.stderr else ''}"
            shown += line
            match = re.fullmatch(r"\s+([A-Z0-9-]{4,})\s*", line)
            code = match.group(1) if match else None
        assert upstreams.auth_url + "/codex/device" in shown
        assert upstreams.apps.call(lambda: upstreams.auth.approve(code, email, account, "pro"))
        out = login.stdout.read()  # what the pipe's buffer holds, then the rest
        assert login.wait(30) == 0, login.stderr.read() if login.stderr else ""
        assert "Never share this code" in shown + out and email in out
    finally:
        upstreams.apps.call(lambda: setattr(upstreams.auth, "interval", "1"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chatgpt_server", *args], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    listed = cli("accounts")
    assert listed.returncode == 0 and email in listed.stdout and account in listed.stdout and "pro" in listed.stdout
    grant = grant_for(upstreams, email)
    assert grant.refresh_token not in listed.stdout + listed.stderr  # never a token
    # README's next step: CHATGPT_ACCESS_TOKEN=$(chatgpt-server token), then ask --mode 2
    printed = cli("token")
    assert printed.returncode == 0 and printed.stdout.count(".") == 2, printed.stderr
    assert cli("token", email).stdout == printed.stdout
    missing = cli("token", "nobody@example.com")
    assert missing.returncode == 1 and missing.stderr.strip() == "chatgpt-server: this ChatGPT account is not stored"
    asked = subprocess.run([sys.executable, "-m", "chatgpt_server", "ask", "hello", "--mode", "2"], timeout=60,
                           env={**env, "CHATGPT_ACCESS_TOKEN": printed.stdout.strip()}, capture_output=True,
                           text=True)  # fmt: skip
    assert asked.returncode == 0 and asked.stdout.strip() == "echo(1): hello", asked.stderr
    assert cli("logout", email).returncode == 0
    assert email not in cli("accounts").stdout
    none = cli("token")  # nothing stored now (this test's data directory is its own)
    assert none.returncode == 1 and "chatgpt-server login adds one" in none.stderr, none.stderr


def test_a_sign_in_whose_client_left_while_its_code_was_spent_is_still_stored(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """The authorization code is single-use: once the issuer has it, the sign-in runs to the stored
    account even though the client that polled gave up (else the person must sign in all over again)."""
    email, account = unique("left")
    server = ServerProcess(tmp_path, upstreams.codex_env()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            device = c.post(f"{TOKEN_PATH}/device", json={}).json()["data"]
        assert upstreams.apps.call(lambda: upstreams.auth.approve(device["userCode"], email, account, "plus"))
        upstreams.apps.call(lambda: setattr(upstreams.auth, "exchange_delay", 1.5))
        deadline = time.monotonic() + float(device["interval"]) + 5
        with httpx.Client(base_url=server.url, timeout=0.5) as c:
            while True:  # polls before the issuer's interval are pending; the one that reaches it waits
                try:
                    c.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device["deviceAuthId"]})
                except httpx.ReadTimeout:
                    break  # the client gives up while the code is being exchanged
                assert time.monotonic() < deadline, "no poll reached the issuer"
                time.sleep(0.1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
        env.update(upstreams.codex_env(CHATGPT_SERVER_DATA_DIR=str(tmp_path / "data")))

        def listed() -> bool:
            out = subprocess.run([sys.executable, "-m", "chatgpt_server", "accounts"], env=env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            return email in out.stdout

        deadline = time.monotonic() + 10
        while not listed():
            assert time.monotonic() < deadline, "the account was not stored"
            time.sleep(0.2)
        with httpx.Client(base_url=server.url, timeout=30) as c:  # the client's retry gets what it missed
            again = c.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device["deviceAuthId"]})
            data = again.json()["data"]
            assert data["status"] == "signed_in" and data["email"] == email and data["accessToken"]
            claims = upstreams.apps.call(lambda: upstreams.auth.verify_access(data["accessToken"]))
            assert claims is not None  # a token the issuer gave for it
            once = c.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device["deviceAuthId"]})
            assert once.status_code == 404  # given once
    finally:
        server.stop()


def test_twenty_requests_on_two_instances_while_the_token_expires_refresh_once(
    tmp_path: Path, upstreams: Upstreams, network_kind: str
) -> None:
    from .shared_stores import store_url

    url = store_url(network_kind, tmp_path)
    servers = [ServerProcess(tmp_path / n, upstreams.codex_env(CHATGPT_SERVER_STORE_URL=url)) for n in "ab"]
    for server in servers:
        server.workdir.mkdir()
        server.start()
    try:
        email, account = unique("race")
        upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 60))  # inside the 300 s margin
        with httpx.Client(base_url=servers[0].url, timeout=30) as c:
            token = sign_in(c, upstreams, email, account)["accessToken"]
        upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 3600))
        upstreams.apps.call(lambda: setattr(upstreams.auth, "refresh_delay", 0.3))  # so the requests overlap
        grant = grant_for(upstreams, email)
        statuses = ask_at_once([s.url for s in servers], 20, "race", key=token, mode="2")
        assert statuses == [201] * 20
        assert grant.refreshes == 1  # exactly one refresh reached the issuer, for both instances
        assert not grant.revoked
        # Both instances use the new token now, and a restart keeps the account.
        servers[1].stop()
        servers[1].start()
        with httpx.Client(base_url=servers[1].url, timeout=30) as c:
            assert ask(c, "after restart", key=token, mode="2").status_code == 201
        assert grant.refreshes == 1
        fresh = upstreams.codex.requests[-1]["headers"]["Authorization"]
        assert fresh != f"Bearer {token}"
    finally:
        for server in servers:
            server.stop()


def test_an_issuer_outage_at_an_early_refresh_does_not_fail_a_token_that_still_works(
    cx: httpx.Client, upstreams: Upstreams
) -> None:
    """Within the margin the token is refreshed early; if the issuer fails then (500), the token, which
    still works, is used, and the refresh is tried again 30 s later, not by every request meanwhile (an
    issuer that hangs would make each of them wait). A token about to expire fails."""
    email, account = unique("outage")
    upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 200))  # inside the 300 s margin
    try:
        token = sign_in(cx, upstreams, email, account)["accessToken"]
        upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 3600))
        upstreams.apps.call(lambda: setattr(upstreams.auth, "refresh_outages", 1))
        tried = len(upstreams.auth.refresh_calls)
        for question in ("during the outage", "just after it"):
            assert ask(cx, question, key=token, mode="2").status_code == 201
            assert upstreams.codex.requests[-1]["headers"]["Authorization"] == f"Bearer {token}"
        assert len(upstreams.auth.refresh_calls) == tried + 1  # one try, not one per request
        assert grant_for(upstreams, email).refreshes == 0
        email, account = unique("expiring")
        upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 10))
        token = sign_in(cx, upstreams, email, account)["accessToken"]
        upstreams.apps.call(lambda: setattr(upstreams.auth, "refresh_outages", 1))
        assert ask(cx, "too late", key=token, mode="2").status_code == 502
    finally:
        upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 3600))
        upstreams.apps.call(lambda: setattr(upstreams.auth, "refresh_outages", 0))


def test_an_issuers_odd_refusal_neither_ends_the_grant_nor_shows_the_refresh_token(
    cx: httpx.Client, upstreams: Upstreams, codex_server: ServerProcess
) -> None:
    """Only the issuer's words for a grant that is over (refresh_token_reused, _expired, _invalidated,
    invalid_grant) make the account sign in again; another refusal (invalid_client, invalid_request: a
    setting or a request of ours) is an error, and the grant is tried again later. An issuer that echoes
    the refresh token it was sent shows it to nobody."""
    email, account = unique("odd")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    grant = grant_for(upstreams, email)
    for answer in ((400, "invalid_client"), (401, "invalid_request"), (500, "{presented}"), (400, "{presented}")):
        upstreams.apps.call(lambda answer=answer: upstreams.auth.refresh_answers.append(answer))  # type: ignore[misc]
        upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # the backend refuses: refresh once
        response = ask(cx, "refused", key=token, mode="2")
        assert response.status_code == 502, response.text
        assert grant.refresh_token not in response.text
    assert grant.refresh_token not in codex_server.log()
    assert grant_for(upstreams, email).refreshes == 0 and not grant.revoked
    assert ask(cx, "still signed in", key=token, mode="2").status_code == 201
    # A 401 in words of its own (not OAuth's for our own fault): the grant is over.
    upstreams.apps.call(lambda: upstreams.auth.refresh_answers.append((401, "grant_gone")))
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))
    assert "must sign in again" in assert_error(ask(cx, "over", key=token, mode="2"), 401)


def test_while_the_issuers_keys_are_out_of_reach_its_tokens_wait_for_them(tmp_path: Path, upstreams: Upstreams) -> None:
    """A server that cannot fetch the issuer's keys (just started, the issuer down) cannot tell a stored
    account's token from a forged one: a 503 to retry, never the token bound to itself (its conversations
    would be lost to its account: follow-ups 404, new ones made under another owner for good)."""
    env = upstreams.codex_env(CHATGPT_SERVER_STORE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = ServerProcess(tmp_path / "a", env).start()
    try:
        with httpx.Client(base_url=first.url, timeout=30) as c:
            email, account = unique("keys")
            token = sign_in(c, upstreams, email, account)["accessToken"]
            reply = ask(c, "one", key=token, mode="2").json()["data"]
    finally:
        first.stop()
    upstreams.apps.call(lambda: setattr(upstreams.auth, "jwks_down", True))
    asked = len(upstreams.codex.requests)
    second = ServerProcess(tmp_path / "b", env).start()
    try:
        with httpx.Client(base_url=second.url, timeout=30) as c:
            for parent in (reply["id"], None):
                answer = ask(c, "during", parent=parent, key=token, mode="2")
                assert answer.status_code == 503 and answer.headers["Retry-After"] == "30", answer.text
        assert len(upstreams.codex.requests) == asked  # nothing was sent for a token nobody could check
        assert "the issuer's keys could not be fetched (JWKS answered HTTP 503)" in second.log()
    finally:
        second.stop()


@pytest.mark.parametrize("forged", ["x", "unsigned"])
def test_a_refresh_that_gives_no_token_of_the_account_is_not_kept(
    cx: httpx.Client, upstreams: Upstreams, forged: str
) -> None:
    """What a refresh gives is checked as a sign-in's tokens are: one that does not verify as this
    account's (garbage, unsigned with a far expiry) is neither sent nor stored as its token."""
    email, account = unique("forged")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    if forged == "unsigned":  # the account's own claims, alg none, an expiry far away
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["exp"] = 9_999_999_999
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        forged = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + "." + body + "."
    answer = (200, {"access_token": forged, "refresh_token": "rt_forged", "id_token": ""})
    upstreams.apps.call(lambda: upstreams.auth.refresh_answers.append(answer))
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # the backend refuses: refresh once
    sent_before = len(upstreams.codex.requests)
    assert ask(cx, "refreshed", key=token, mode="2").status_code == 502
    tokens_sent = [r["headers"]["Authorization"] for r in upstreams.codex.requests[sent_before:]]
    assert f"Bearer {forged}" not in tokens_sent
    message = assert_error(ask(cx, "after", key=token, mode="2"), 401)
    assert "must sign in again" in message and "refreshed_token_unverified" in message


def signed_in_then_rotated(c: httpx.Client, upstreams: Upstreams, name: str) -> tuple[str, str]:
    """An account signed in and used (the server has fetched the issuer's keys), then the issuer's key
    rotated: (email, its token)."""
    email, account = unique(name)
    token = sign_in(c, upstreams, email, account)["accessToken"]
    assert ask(c, "before", key=token, mode="2").status_code == 201  # the keys are fetched by now
    upstreams.apps.call(upstreams.auth.rotate_key)
    return email, token


def test_a_refresh_signed_with_a_key_new_since_the_last_fetch_is_kept(tmp_path: Path, upstreams: Upstreams) -> None:
    """The issuer starts signing with a new key moments after this server fetched its keys: the token a
    refresh gives is checked against the keys fetched again (not refused as not the account's, which
    would spend the grant for nothing and make a person sign in again)."""
    server = ServerProcess(tmp_path, upstreams.codex_env()).start()  # its own process: a fresh key cache
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            email, token = signed_in_then_rotated(c, upstreams, "newkey")
            upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # the backend refuses: refresh
            assert ask(c, "after", key=token, mode="2").status_code == 201
            assert grant_for(upstreams, email).refreshes == 1
            assert ask(c, "and on", key=token, mode="2").status_code == 201
    finally:
        server.stop()


def test_a_token_signed_with_a_key_new_since_the_last_fetch_is_never_bound_to_itself(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    """The issuer rotates its key moments after this server fetched its keys, and a person presents a token
    signed with the new one: a 503 for moments (the keys are fetched again at most every 2 s for tokens
    newer than the last fetch), then the account's own conversation; never a conversation bound to the
    token itself, which a later token of the account could not continue (404)."""
    server = ServerProcess(tmp_path, upstreams.codex_env()).start()  # its own process: a fresh key cache
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            signed_in_then_rotated(c, upstreams, "rotated")
            other, other_account = unique("newcomer")
            first = upstreams.apps.call(lambda: upstreams.auth.mint(other, other_account)).access_token
            deadline = time.monotonic() + 10
            while (answer := ask(c, "hello", key=first, mode="2")).status_code == 503:
                assert answer.headers["Retry-After"] == "2" and time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            assert answer.status_code == 201, answer.text
            later = upstreams.apps.call(lambda: upstreams.auth.mint(other, other_account)).access_token
            follow = ask(c, "again", parent=answer.json()["data"]["id"], key=later, mode="2")
            assert follow.status_code == 201, follow.text  # the conversation is the account's
    finally:
        server.stop()


def test_refresh_token_reuse_marks_the_account(
    cx: httpx.Client, upstreams: Upstreams, codex_server: ServerProcess
) -> None:
    email, account = unique("reuse")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    grant = grant_for(upstreams, email)
    stolen = grant.refresh_token
    # Someone else uses the account's refresh token first: the one we keep is now spent.
    rotated = httpx.post(
        upstreams.auth_url + "/oauth/token",
        json={"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token", "refresh_token": stolen},
    )
    assert rotated.status_code == 200
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # the backend refuses: refresh once
    message = assert_error(ask(cx, "after theft", key=token, mode="2"), 401)
    assert "must sign in again" in message and email in message and "refresh_token_reused" in message
    again = assert_error(ask(cx, "again", key=token, mode="2"), 401)  # marked: no more refresh attempts
    assert "must sign in again" in again
    assert stolen not in codex_server.log()


def test_a_conversation_goes_on_after_a_refresh(cx: httpx.Client, upstreams: Upstreams) -> None:
    email, account = unique("after")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    first = ask(cx, "before refresh", key=token, mode="2").json()["data"]
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # forces one refresh
    second = ask(cx, "after refresh", parent=first["id"], key=token, mode="2")
    assert second.status_code == 201, second.text
    assert second.json()["data"]["text"] == "echo(2): after refresh"
    grant = grant_for(upstreams, email)
    assert grant.refreshes == 1
    fresh = cx.post(f"{TOKEN_PATH}/getInfo", json={"type": "2", "token": token}).json()["data"]
    assert fresh != token  # the token route hands out the account's current token
    third = ask(cx, "with the new token", parent=second.json()["data"]["id"], key=fresh, mode="2").json()["data"]
    assert third["text"] == "echo(3): with the new token"  # the conversation belongs to the account


def test_forged_tokens_see_nobodys_conversations(cx: httpx.Client, upstreams: Upstreams) -> None:
    email, account = unique("victim")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    mine = ask(cx, "secret plans", key=token, mode="2").json()["data"]
    for kind in ("foreign_key", "none", "hs256_public_key", "wrong_audience", "wrong_issuer", "unknown_kid"):
        forged = upstreams.apps.call(partial(upstreams.auth.forge, kind, email=email, account_id=account))
        before = len(upstreams.codex.requests)
        response = ask(cx, "let me in", parent=mine["id"], key=forged, mode="2")
        deadline = time.monotonic() + 10
        while kind == "unknown_kid" and response.status_code == 503:  # a key newer than the last fetch: no
            assert time.monotonic() < deadline, response.text  # verdict until the keys are fetched again
            time.sleep(0.2)
            response = ask(cx, "let me in", parent=mine["id"], key=forged, mode="2")
        assert response.status_code == 404, (kind, response.text)
        assert len(upstreams.codex.requests) == before, kind
    # And the token route gives a forged token nothing either.
    forged = upstreams.apps.call(lambda: upstreams.auth.forge("foreign_key", email=email, account_id=account))
    refused = cx.post(f"{TOKEN_PATH}/getInfo", json={"type": "2", "token": forged})
    assert refused.status_code == 400 and token not in refused.text


def test_an_expired_token_of_a_stored_account_is_honoured_for_the_grace_period(
    cx: httpx.Client, upstreams: Upstreams
) -> None:
    email, account = unique("grace")
    sign_in(cx, upstreams, email, account)
    expired: Tokens = upstreams.apps.call(lambda: upstreams.auth.mint(email, account, lifetime_s=-3600))
    reply = ask(cx, "old token", key=expired.access_token, mode="2")
    assert reply.status_code == 201, reply.text  # the account's current token was used instead
    unknown_email, unknown_account = unique("stranger")
    stranger: Tokens = upstreams.apps.call(lambda: upstreams.auth.mint(unknown_email, unknown_account, lifetime_s=-60))
    assert "expired" in assert_error(ask(cx, "x", key=stranger.access_token, mode="2"), 401)
    ancient: Tokens = upstreams.apps.call(lambda: upstreams.auth.mint(email, account, lifetime_s=-40 * 86400))
    assert "expired" in assert_error(ask(cx, "x", key=ancient.access_token, mode="2"), 401)


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        ("usage_limit", 429, "usage limit of the plus plan is reached"),
        ("usage_limit_seconds", 429, "resets in 120 s"),
        ("usage_not_included", 403, "plus plan does not include this use"),
        ("usage_not_included_403", 403, "plus plan does not include this use"),
        ("failed_context", 400, "exceeds the context window"),
        ("overloaded", 502, "overloaded"),
        ("rate_limited", 429, "Rate limit reached"),
    ],
)
def test_backend_failures_are_precise(
    cx: httpx.Client, upstreams: Upstreams, failure: str, status: int, words: str
) -> None:
    email, account = unique("fail")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append(failure))
    response = ask(cx, "x", key=token, mode="2")
    message = assert_error(response, status)
    assert words in message and token not in response.text
    if failure.startswith("usage_limit"):
        assert 0 < int(response.headers["Retry-After"]) <= 120
    if failure == "rate_limited":  # the backend's own Retry-After is passed on
        assert response.headers["Retry-After"] == "30"


@pytest.mark.parametrize("shape", ["refusal", "whole_item", "done_without_id", "completed_only"])
def test_a_reply_said_as_a_refusal_or_only_in_its_finished_item_is_the_reply(
    cx: httpx.Client, upstreams: Upstreams, shape: str
) -> None:
    """The Responses events a backend may send instead of output_text deltas: a refusal's deltas (the
    model declines: its words are the reply), the text only in the finished message item, or only in
    the finished response; and a finished item without its id after its deltas is not the text again."""
    email, account = unique("shape")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    for kind in ("1", "2"):
        upstreams.apps.call(lambda: upstreams.codex.fail_next.append(shape))
        response = ask(cx, "not that", key=token, mode="2", kind=kind)
        if kind == "1":
            assert response.json().get("data", {}).get("text") == "echo(1): not that", response.text
        else:
            deltas = [e for e in events(response.text) if e[0] == "delta"]
            assert deltas and deltas[-1][1]["text"] == "echo(1): not that", response.text


def test_a_reply_the_backend_ends_as_incomplete_is_incomplete_with_its_reason(
    cx: httpx.Client, upstreams: Upstreams
) -> None:
    """``response.incomplete`` (the output limit) is a reply that ended, cut short: incomplete, with the
    backend's reason, on both doors; not a failure."""
    email, account = unique("incomplete")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("incomplete"))
    data = ask(cx, "a long story", key=token, mode="2").json()["data"]
    assert (data["text"], data["incomplete"], data["incompleteReason"]) == ("echo(1): a", True, "max_output_tokens")
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("incomplete"))
    following = events(ask(cx, "and on", key=token, mode="2", parent=data["id"], kind="2").text)
    assert not [e for e in following if e[0] == "error"], following
    assert [e for e in following if e[0] == "delta"][-1][1]["text"] == "echo(2): and"


def test_a_clients_extra_headers_reach_the_codex_backend_under_the_protocols_own(
    cx: httpx.Client, upstreams: Upstreams
) -> None:
    email, account = unique("headers")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    extra = {"X-Trace-Id": "trace-42", "ORIGINATOR": "someone-else", "Session_Id": "not-this-one",
             "Session-Id": "nor-this-one"}  # fmt: skip
    response = ask(cx, "with headers", key=token, mode="2", headers=extra)
    assert response.status_code == 201, response.text
    sent = upstreams.codex.requests[-1]["header_list"]  # each header as it came, repeats included
    assert [v for k, v in sent if k.lower() == "x-trace-id"] == ["trace-42"]
    assert [v for k, v in sent if k.lower() == "originator"] == ["chatgpt_server"]
    assert [v for k, v in sent if k.lower() == "session_id"] == [response.json()["data"]["conversationId"]]
    assert not [v for k, v in sent if k.lower() == "session-id"]  # one header to servers that read _ as -
    refused = ask(cx, "another account?", key=token, mode="2", headers={"ChatGPT-Account-Id": "acct-other"})
    assert "chatgpt-account-id" in assert_error(refused, 400).lower()


def test_the_codex_backend_may_be_named_by_its_own_url(cx: httpx.Client, upstreams: Upstreams) -> None:
    """``apiReverseProxyUrl`` naming the configured Codex URL is the configured backend, as naming the
    (web) default is: neither needs the allow-list."""
    email, account = unique("own-url")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    for url in (upstreams.codex_url, upstreams.chatgpt_url):
        before = len(upstreams.codex.requests)
        response = ask(cx, "where to?", key=token, mode="2", apiReverseProxyUrl=url)
        assert response.status_code == 201, response.text
        assert len(upstreams.codex.requests) == before + 1


def test_a_sign_in_made_while_a_refresh_of_the_old_grant_ran_is_kept(
    codex_server: ServerProcess, upstreams: Upstreams
) -> None:
    """A refresh waits on the issuer; meanwhile the person revokes the old grant and signs in again. The
    refresh's outcome (here the old grant's refusal) is about a sign-in that is gone: it neither signs
    the new one out nor writes the old grant over it, and the request that waited goes on with the new
    sign-in's token."""
    email, account = unique("resigned")
    upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 100))  # inside the 300 s margin
    with httpx.Client(base_url=codex_server.url, timeout=30) as c:
        old = sign_in(c, upstreams, email, account)["accessToken"]
    old_grant = grant_for(upstreams, email)
    upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 3600))
    upstreams.apps.call(lambda: setattr(upstreams.auth, "refresh_delay", 4.0))
    calls = upstreams.apps.call(lambda: len(upstreams.auth.refresh_calls))
    answers: list[httpx.Response] = []

    def waiting() -> None:
        with httpx.Client(base_url=codex_server.url, timeout=30) as c:
            answers.append(ask(c, "during the refresh", key=old, mode="2"))

    thread = threading.Thread(target=waiting)
    thread.start()
    assert within(10, lambda: upstreams.apps.call(lambda: len(upstreams.auth.refresh_calls)) > calls)
    upstreams.apps.call(lambda: upstreams.auth.invalidate(old_grant.id))
    minted = int(time.time())  # the issuer's clock counts seconds: the next sign-in's token is minted later
    while int(time.time()) == minted:
        time.sleep(0.02)
    with httpx.Client(base_url=codex_server.url, timeout=30) as c:
        new = sign_in(c, upstreams, email, account)["accessToken"]
        thread.join()
        assert answers[0].status_code == 201, answers[0].text
        assert upstreams.codex.requests[-1]["headers"]["Authorization"] == f"Bearer {new}"
        assert ask(c, "after", key=new, mode="2").status_code == 201
        assert c.post(TOKEN_PATH + "/getInfo", json={"type": "2", "token": new}).json()["data"] == new


def test_tokens_that_live_less_than_the_margin_are_not_refreshed_by_every_request(
    cx: httpx.Client, codex_server: ServerProcess, upstreams: Upstreams
) -> None:
    """An issuer whose refreshed tokens live 200 s, inside the 300 s refresh margin: a token a refresh
    just gave is used for half its life, not refreshed again by every request (each spending the grant)."""
    email, account = unique("shortlived")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    upstreams.apps.call(lambda: setattr(upstreams.auth, "access_lifetime_s", 200))
    upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))  # the backend refuses: refresh once
    assert ask(cx, "refreshed", key=token, mode="2").status_code == 201
    grant = grant_for(upstreams, email)
    assert grant.refreshes == 1
    statuses = ask_at_once([codex_server.url], 10, "short", key=token, mode="2")
    assert statuses == [201] * 10 and grant.refreshes == 1


def test_a_token_of_an_older_sign_in_is_never_a_key_to_the_newer_one(cx: httpx.Client, upstreams: Upstreams) -> None:
    """The owner revoked a sign-in (a leaked token) and signed in again: a token of the old sign-in gets
    neither the new token from the token route nor the new token's use in mode 2 (it is sent as itself,
    and the backend refuses it); the new sign-in's token works."""
    email, account = unique("older")
    old = sign_in(cx, upstreams, email, account)["accessToken"]
    grant = grant_for(upstreams, email)
    upstreams.apps.call(lambda: upstreams.auth.invalidate(grant.id))
    minted = int(time.time())  # the issuer's clock counts seconds: the next sign-in's token is minted later
    while int(time.time()) == minted:
        time.sleep(0.02)
    new = sign_in(cx, upstreams, email, account)["accessToken"]
    answer = cx.post(TOKEN_PATH + "/getInfo", json={"type": "2", "token": old})
    assert new not in answer.text
    before = len(upstreams.codex.requests)
    assert_error(ask(cx, "with the old one", key=old, mode="2"), 401)
    sent = [r["headers"]["Authorization"] for r in upstreams.codex.requests[before:]]
    assert f"Bearer {new}" not in sent
    assert ask(cx, "with the new one", key=new, mode="2").status_code == 201
    assert cx.post(TOKEN_PATH + "/getInfo", json={"type": "2", "token": new}).json()["data"] == new
    twice = cx.post(TOKEN_PATH + "/getInfo", json={"type": "2"},
                    headers=[("Authorization", "Bearer junk"), ("Authorization", f"Bearer {new}")])  # fmt: skip
    assert "more than one Authorization" in assert_error(twice, 400, TOKEN_PATH + "/getInfo")


def test_a_token_the_backend_keeps_refusing_is_401_after_one_refresh(cx: httpx.Client, upstreams: Upstreams) -> None:
    email, account = unique("refused")
    token = sign_in(cx, upstreams, email, account)["accessToken"]
    upstreams.apps.call(lambda: upstreams.codex.fail_next.extend(["401", "401"]))
    message = assert_error(ask(cx, "x", key=token, mode="2"), 401)
    assert "rejected the credential" in message
    assert grant_for(upstreams, email).refreshes == 1  # once, not in a loop


def test_a_token_of_an_account_that_is_not_stored_is_sent_as_it_is(cx: httpx.Client, upstreams: Upstreams) -> None:
    email, account = unique("visitor")
    tokens: Tokens = upstreams.apps.call(lambda: upstreams.auth.mint(email, account))
    reply = ask(cx, "as is", key=tokens.access_token, mode="2")
    assert reply.status_code == 201, reply.text
    assert upstreams.codex.requests[-1]["headers"]["Authorization"] == f"Bearer {tokens.access_token}"


def test_accounts_need_the_secret_key(tmp_path: Path, upstreams: Upstreams) -> None:
    env = upstreams.codex_env()
    del env["CHATGPT_SERVER_SECRET_KEY"]
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            message = assert_error(c.post(f"{TOKEN_PATH}/device", json={}), 400, f"{TOKEN_PATH}/device")
        assert "CHATGPT_SERVER_SECRET_KEY" in message
    finally:
        server.stop()


def test_device_sign_ins_are_bounded_per_address_and_polls_paced(tmp_path: Path, upstreams: Upstreams) -> None:
    """Nobody authenticated starting a device sign-in: each start calls the issuer, so one address
    may start only so many an hour (then 429 with Retry-After); and however fast a client polls,
    the issuer is asked at most once per the interval it gave."""
    server = ServerProcess(tmp_path, upstreams.codex_env(CHATGPT_SERVER_DEVICE_SIGN_INS_PER_HOUR="3")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            issued = upstreams.apps.call(lambda: len(upstreams.auth.devices))
            started = [c.post(f"{TOKEN_PATH}/device", json={}) for _ in range(4)]
            assert [r.status_code for r in started] == [201, 201, 201, 429]
            assert 3000 < int(started[-1].headers["Retry-After"]) <= 3600
            assert "too many device sign-ins" in started[-1].json()["message"]
            assert upstreams.apps.call(lambda: len(upstreams.auth.devices)) == issued + 3
            device = started[0].json()["data"]["deviceAuthId"]
            polls = [c.post(f"{TOKEN_PATH}/device/poll", json={"deviceAuthId": device}) for _ in range(6)]
            assert all(p.status_code == 201 and p.json()["data"]["status"] == "pending" for p in polls)
            asked = upstreams.apps.call(lambda: [t for t, d in upstreams.auth.polls if d == device])
            assert len(asked) == 1  # the first poll went to the issuer; the five within the interval did not
    finally:
        server.stop()


def test_the_web_backend_reports_the_challenge_clearly(client: httpx.Client, upstreams: Upstreams) -> None:
    from .standins.chatgpt_web import mint

    upstreams.apps.call(lambda: setattr(upstreams.chatgpt, "require_sentinel", True))
    message = assert_error(ask(client, "x", key=mint("web@example.com"), mode="2"), 403)
    assert "unusual activity" in message and "codex" in message


def account_model_server(tmp_path: Path, upstreams: Upstreams, window: int | None = None) -> ServerProcess:
    """A server whose routes file sends gpt-5 (and its kin) to the Codex stand-in, its window if given."""
    routes = tmp_path / "models.toml"
    extra = f"context_window = {window}\n" if window is not None else ""
    routes.write_text(f'[[models]]\nname = "gpt-5*"\nupstream = "codex"\nbase_url = "{upstreams.codex_url}"\n{extra}')
    return ServerProcess(tmp_path, upstreams.codex_env(CHATGPT_SERVER_MODELS_FILE=str(routes))).start()


def test_responses_door_with_an_account_model(tmp_path: Path, upstreams: Upstreams) -> None:
    server = account_model_server(tmp_path, upstreams)
    try:
        email, account = unique("sdk")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            token = sign_in(c, upstreams, email, account)["accessToken"]
        with openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0) as client:
            first = client.responses.create(model="gpt-5", input="via codex", instructions="Be brief.")
            second = client.responses.create(model="gpt-5", input="again", previous_response_id=first.id)
            assert second.output_text == "echo(2): again"
            assert upstreams.codex.requests[-1]["body"]["instructions"]  # a default, not carried over
            with client.responses.stream(model="gpt-5", input="streamed", previous_response_id=second.id) as s:
                final = s.get_final_response()
            assert final.output_text == "echo(3): streamed"
            # Structured output goes to the backend in its own (Responses) shape; sampling it refuses is
            # refused here, before anything is sent, in its words; a malformed scope header as on every door.
            fmt: Any = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}
            client.responses.create(model="gpt-5", input="formatted", text={"format": fmt})
            assert upstreams.codex.requests[-1]["body"]["text"] == {"format": fmt}
            tools: Any = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("f", "g")]
            choice: Any = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]}
            client.responses.create(model="gpt-5", input="call one", tools=tools, tool_choice=choice)
            sent = upstreams.codex.requests[-1]["body"]
            assert ([t["name"] for t in sent["tools"]], sent["tool_choice"]) == (["g"], "required")
            client.responses.create(model="gpt-5", input="think", reasoning={"effort": "low"})
            assert upstreams.codex.requests[-1]["body"]["reasoning"] == {"effort": "low"}  # sent, not only echoed
            asked = len(upstreams.codex.requests)
            for refused in ({"temperature": 0.5}, {"top_p": 0.5}, {"max_output_tokens": 100}):
                with pytest.raises(openai.BadRequestError) as error:
                    client.responses.create(model="gpt-5", input="x", extra_body=refused)
                assert (error.value.param, error.value.code) == (next(iter(refused)), "unsupported_parameter")
            with pytest.raises(openai.BadRequestError):
                client.responses.create(model="gpt-5", input="x", extra_headers={"OpenAI-Project": "p" * 300})
            assert len(upstreams.codex.requests) == asked
    finally:
        server.stop()


def test_a_token_past_its_grace_or_of_an_earlier_sign_in_has_no_records(tmp_path: Path, upstreams: Upstreams) -> None:
    """Routes that call no backend (retrieve, list, add items, delete) judge an account token as a turn does:
    one expired past the grace period, or one of an earlier sign-in (revoked after a leak, say), is refused
    (401), not the account's key to its conversations."""
    from .standins.chatgpt_auth import encode_jwt

    server = account_model_server(tmp_path, upstreams)
    try:
        email, account = unique("stale")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            old = sign_in(c, upstreams, email, account)["accessToken"]
        with openai.OpenAI(base_url=server.url + "/v1", api_key=old, max_retries=0) as owner:
            made = owner.responses.create(model="gpt-5", input="private words")
            conversation = owner.conversations.create(items=[{"role": "user", "content": "private too"}])
        claims = json.loads(base64.urlsafe_b64decode(old.split(".")[1] + "=" * (-len(old.split(".")[1]) % 4)))
        claims["iat"], claims["exp"] = int(time.time()) - 400 * 86400, int(time.time()) - 399 * 86400
        key = upstreams.apps.call(lambda: upstreams.auth.key)
        ancient = encode_jwt(claims, "RS256", key.private, key.kid)  # the issuer's own signature, long expired
        minted = int(time.time())  # the issuer's clock counts seconds: the next sign-in's token is minted later
        while int(time.time()) == minted:
            time.sleep(0.02)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            new = sign_in(c, upstreams, email, account)["accessToken"]  # a new sign-in: the old one is earlier
        for stale in (ancient, old):
            with openai.OpenAI(base_url=server.url + "/v1", api_key=stale, max_retries=0) as intruder:
                for call in (lambda: intruder.responses.retrieve(made.id),
                             lambda: intruder.responses.input_tokens.count(model="gpt-5", previous_response_id=made.id),
                             lambda: intruder.conversations.items.list(conversation.id),
                             lambda: intruder.conversations.items.create(conversation.id,
                                                                          items=[{"role": "user", "content": "x"}]),
                             lambda: intruder.conversations.delete(conversation.id)):  # fmt: skip
                    with pytest.raises(openai.AuthenticationError):
                        call()
        # A token of an account that is not stored, expired: good for nothing, as on a turn.
        other, other_account = unique("unstored")
        fresh = upstreams.apps.call(lambda: upstreams.auth.mint(other, other_account)).access_token
        lapsed = json.loads(base64.urlsafe_b64decode(fresh.split(".")[1] + "=" * (-len(fresh.split(".")[1]) % 4)))
        lapsed["exp"] = int(time.time()) - 86400
        with openai.OpenAI(base_url=server.url + "/v1", api_key=encode_jwt(lapsed, "RS256", key.private, key.kid),
                           max_retries=0) as expired, pytest.raises(openai.AuthenticationError):  # fmt: skip
            expired.conversations.retrieve(conversation.id)
        with openai.OpenAI(base_url=server.url + "/v1", api_key=new, max_retries=0) as owner:
            assert owner.responses.retrieve(made.id).output_text == "echo(1): private words"
            listed = owner.conversations.items.list(conversation.id).model_dump_json()
            assert "private too" in listed and '"x"' not in listed
    finally:
        server.stop()


def test_mode_2_on_a_small_window_keeps_room_for_the_prompt(tmp_path: Path, upstreams: Upstreams) -> None:
    """A model whose window is smaller than the default reply share: the default takes a quarter of it, so
    a question fits (it was refused as too long for a budget of one token); a reply share the client
    gives past the window is named as such."""
    server = account_model_server(tmp_path, upstreams, window=512)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            token = sign_in(c, upstreams, *unique("small"))["accessToken"]
            answered = ask(c, "a short question", key=token, mode="2", model="gpt-5")
            assert answered.status_code == 201, answered.text
            over = assert_error(ask(c, "x", key=token, mode="2", model="gpt-5", maxResponseTokens=600), 400)
            assert "maxResponseTokens" in over and "512" in over
    finally:
        server.stop()


def test_no_token_or_code_in_the_log_or_the_store(tmp_path: Path, upstreams: Upstreams) -> None:
    server = ServerProcess(tmp_path, upstreams.codex_env(CHATGPT_SERVER_LOG_LEVEL="DEBUG")).start()
    try:
        email, account = unique("secret")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            signed = sign_in(c, upstreams, email, account)
            token = signed["accessToken"]
            ask(c, "hello", key=token, mode="2")
            upstreams.apps.call(lambda: upstreams.codex.fail_next.append("401"))
            ask(c, "after a refresh", key=token, mode="2")
    finally:
        server.stop()
    grant = grant_for(upstreams, email)
    secrets = [token, token.split(".")[2], grant.refresh_token, *grant.used_refresh]
    codes = upstreams.apps.call(lambda: [c.code for c in upstreams.auth.codes.values()])
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("conversations.db*"))
    log = server.log()
    for secret in [*secrets, *codes]:
        assert secret not in log and secret.encode() not in stored
