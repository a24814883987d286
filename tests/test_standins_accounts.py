"""The ChatGPT-account stand-ins (auth.openai.com §5, the Codex backend §4) refuse what the real ones refuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
import pytest

from .harness import ThreadedApps
from .standins.chatgpt_auth import ACCESS_AUDIENCE, AUTH_CLAIM, CLIENT_ID, FORGERIES, ChatGPTAuthStandIn, Tokens
from .standins.chatgpt_web import ChatGPTStandIn
from .standins.chatgpt_web import mint as web_mint
from .standins.codex import CodexStandIn


@dataclass
class Stands:
    apps: ThreadedApps
    auth: ChatGPTAuthStandIn
    codex: CodexStandIn
    codex_url: str
    web: ChatGPTStandIn
    web_url: str

    @property
    def issuer(self) -> str:
        return self.auth.issuer


@pytest.fixture(scope="module")
def stands() -> Iterator[Stands]:
    apps = ThreadedApps()
    auth = ChatGPTAuthStandIn()
    auth.issuer = apps.serve(auth.app())
    codex = CodexStandIn(auth)
    web = ChatGPTStandIn()
    yield Stands(apps, auth, codex, apps.serve(codex.app()), web, apps.serve(web.app()))
    apps.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def error_code(reply: httpx.Response) -> str:
    error = reply.json()["error"]
    return str(error["code"] if isinstance(error, dict) else error)


# -- auth.openai.com ---------------------------------------------------------------------------------
def test_device_flow_pending_approve_exchange(stands: Stands, http: httpx.Client) -> None:
    issuer = stands.issuer
    assert http.post(f"{issuer}/api/accounts/deviceauth/usercode", json={"client_id": "app_other"}).status_code == 400
    assert http.post(f"{issuer}/api/accounts/deviceauth/usercode", json={}).status_code == 400
    stands.auth.interval = "0"
    start = http.post(f"{issuer}/api/accounts/deviceauth/usercode", json={"client_id": CLIENT_ID})
    assert start.status_code == 200
    device = start.json()
    assert device["interval"] == "0" and device["device_auth_id"] and device["user_code"]
    poll = {"device_auth_id": device["device_auth_id"], "user_code": device["user_code"]}

    pending = http.post(f"{issuer}/api/accounts/deviceauth/token", json=poll)
    assert pending.status_code == 403 and error_code(pending) == "deviceauth_authorization_pending"
    unknown = {**poll, "device_auth_id": "deviceauth_nope"}
    assert http.post(f"{issuer}/api/accounts/deviceauth/token", json=unknown).status_code == 404

    approve = {"user_code": device["user_code"], "email": "ann@example.com", "account_id": "acct-ann", "plan": "pro"}
    assert http.post(f"{issuer}/_test/approve", json=approve).status_code == 200
    done = http.post(f"{issuer}/api/accounts/deviceauth/token", json=poll)
    assert done.status_code == 200
    code = done.json()
    assert set(code) == {"authorization_code", "code_challenge", "code_verifier"}
    assert http.post(f"{issuer}/api/accounts/deviceauth/token", json=poll).status_code == 404  # only once

    form = {"grant_type": "authorization_code", "code": code["authorization_code"],
            "redirect_uri": f"{issuer}/deviceauth/callback", "client_id": CLIENT_ID,
            "code_verifier": code["code_verifier"]}  # fmt: skip
    assert http.post(f"{issuer}/oauth/token", json=form).status_code == 400  # must be form-encoded
    for wrong in ({"redirect_uri": "http://localhost:1455/auth/callback"}, {"code_verifier": "x" * 64},
                  {"client_id": "app_other"}, {"code": "ac_unknown"}):  # fmt: skip
        reply = http.post(f"{issuer}/oauth/token", data={**form, **wrong})
        assert reply.status_code == 400, wrong
    tokens = http.post(f"{issuer}/oauth/token", data=form)
    assert tokens.status_code == 200
    body = tokens.json()
    assert {"id_token", "access_token", "refresh_token", "expires_in"} <= set(body)
    assert http.post(f"{issuer}/oauth/token", data=form).status_code == 400  # codes are single-use...
    assert stands.auth.verify_access(body["access_token"]) is None  # ...and a replay revokes its grant

    # The access token verifies against the published JWKS with an ordinary JWT library.
    jwks = http.get(f"{issuer}/.well-known/jwks.json").json()
    header = jwt.get_unverified_header(body["access_token"])
    key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(body["access_token"], key.key, algorithms=["RS256"], audience=ACCESS_AUDIENCE, issuer=issuer)
    assert claims[AUTH_CLAIM]["chatgpt_account_id"] == "acct-ann"
    assert claims[AUTH_CLAIM]["chatgpt_plan_type"] == "pro"
    id_claims = jwt.decode(body["id_token"], key.key, algorithms=["RS256"], audience=CLIENT_ID, issuer=issuer)
    assert id_claims["email"] == "ann@example.com"


def test_device_flow_disabled_and_expired(stands: Stands, http: httpx.Client) -> None:
    issuer = stands.issuer
    stands.auth.device_enabled = False
    try:
        reply = http.post(f"{issuer}/api/accounts/deviceauth/usercode", json={"client_id": CLIENT_ID})
        assert reply.status_code == 404
    finally:
        stands.auth.device_enabled = True
    device = http.post(f"{issuer}/api/accounts/deviceauth/usercode", json={"client_id": CLIENT_ID}).json()
    stands.auth.code_ttl_s = -1
    try:
        poll = {"device_auth_id": device["device_auth_id"], "user_code": device["user_code"]}
        reply = http.post(f"{issuer}/api/accounts/deviceauth/token", json=poll)
        assert reply.status_code == 410 and error_code(reply) == "deviceauth_expired"
    finally:
        stands.auth.code_ttl_s = 900


def refresh(http: httpx.Client, issuer: str, token: str, **extra: Any) -> httpx.Response:
    body = {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": token, **extra}
    return http.post(f"{issuer}/oauth/token", json=body)


def test_refresh_rotates_and_reuse_revokes_the_grant(stands: Stands, http: httpx.Client) -> None:
    auth, issuer = stands.auth, stands.issuer
    first = auth.mint("bob@example.com", "acct-bob")
    calls = len(auth.refresh_calls)
    as_form = {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": first.refresh_token}
    assert http.post(f"{issuer}/oauth/token", data=as_form).status_code == 400  # the refresh grant is JSON
    assert refresh(http, issuer, first.refresh_token, client_id="app_other").status_code == 400
    assert refresh(http, issuer, first.refresh_token, grant_type="password").status_code == 400
    assert http.post(f"{issuer}/oauth/token", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 400

    second = refresh(http, issuer, first.refresh_token)
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first.refresh_token
    assert auth.verify_access(rotated["access_token"]) is not None
    assert auth.verify_access(first.access_token) is not None  # an earlier access token lives until exp

    reused = refresh(http, issuer, first.refresh_token)
    assert reused.status_code == 401 and error_code(reused) == "refresh_token_reused"
    assert reused.json()["error"]["message"]
    latest = refresh(http, issuer, rotated["refresh_token"])
    assert latest.status_code == 401 and error_code(latest) == "refresh_token_invalidated"
    assert auth.verify_access(rotated["access_token"]) is None
    assert auth.verify_access(first.access_token) is None
    grant = auth.grant_of(first)
    assert [g for _, g in auth.refresh_calls[calls:]].count(grant.id) == 5


def test_refresh_expired_flat_errors_and_no_rotation(stands: Stands, http: httpx.Client) -> None:
    auth, issuer = stands.auth, stands.issuer
    tokens = auth.mint("cat@example.com", "acct-cat", plan="team")
    auth.expire_refresh(tokens)
    auth.error_style = "flat"
    try:
        reply = refresh(http, issuer, tokens.refresh_token)
        assert reply.status_code == 401 and reply.json()["error"] == "refresh_token_expired"
        assert reply.json()["error_description"]
    finally:
        auth.error_style = "nested"
    other = auth.mint("dan@example.com", "acct-dan")
    auth.rotate_refresh = False
    try:
        for _ in range(2):  # without rotation the same refresh token keeps working
            reply = refresh(http, issuer, other.refresh_token)
            assert reply.status_code == 200 and "refresh_token" not in reply.json()
    finally:
        auth.rotate_refresh = True
    auth.invalidate(other)
    assert error_code(refresh(http, issuer, other.refresh_token)) == "refresh_token_invalidated"
    assert auth.verify_access(other.access_token) is None


def test_two_refreshes_at_once_end_the_grant(stands: Stands) -> None:
    auth, issuer = stands.auth, stands.issuer
    tokens = auth.mint("eve@example.com", "acct-eve")
    auth.refresh_delay = 0.2
    results: list[int] = []

    def one() -> None:
        with httpx.Client(timeout=10) as client:
            results.append(refresh(client, issuer, tokens.refresh_token).status_code)

    try:
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        auth.refresh_delay = 0.0
    assert sorted(results) == [200, 401]
    assert auth.grant_of(tokens).revoked


def test_key_rotation_and_jwks(stands: Stands, http: httpx.Client) -> None:
    auth, issuer = stands.auth, stands.issuer
    old = auth.mint("fay@example.com", "acct-fay")
    calls = auth.jwks_calls
    old_kid = auth.key.kid
    auth.rotate_key()
    new = auth.mint("fay@example.com", "acct-fay")
    kids = [k["kid"] for k in http.get(f"{issuer}/.well-known/jwks.json").json()["keys"]]
    assert kids == [old_kid, auth.key.kid] and auth.jwks_calls == calls + 1
    assert jwt.get_unverified_header(new.access_token)["kid"] == auth.key.kid
    assert auth.verify_access(old.access_token) and auth.verify_access(new.access_token)
    auth.rotate_key(drop_old=True)
    assert auth.verify_access(old.access_token) is None  # its key is no longer published
    key = http.get(f"{issuer}/.well-known/jwks.json").json()["keys"]
    assert len(key) == 1 and key[0]["kid"] == auth.key.kid and key[0]["alg"] == "RS256"


def test_forged_tokens_are_refused(stands: Stands) -> None:
    auth = stands.auth
    for kind in FORGERIES:
        token = auth.forge(kind, account_id="acct-ann")
        assert auth.verify_access(token) is None, kind
    assert auth.verify_access(auth.mint("gil@example.com", "acct-gil").access_token) is not None
    assert auth.verify_access(auth.mint("gil@example.com", "acct-gil").id_token) is None
    assert auth.verify_access(auth.mint("gil@example.com", "acct-gil", alg="none").access_token) is None
    assert auth.verify_access(auth.mint("gil@example.com", "acct-gil", lifetime_s=-10).access_token) is None


# -- the Codex backend -------------------------------------------------------------------------------
def headers(tokens: Tokens, account: str = "acct-hal") -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.access_token}", "ChatGPT-Account-Id": account,
            "originator": "codex_cli_rs", "User-Agent": "standin-test/1.0", "Accept": "text/event-stream"}  # fmt: skip


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def good_body(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "instructions": "You are helpful.", "input": list(items), "store": False,
            "stream": True, "include": ["reasoning.encrypted_content"], "tools": [], "tool_choice": "auto",
            "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
            "prompt_cache_key": "4f0c6b1e-0000-4000-8000-000000000000", **extra}  # fmt: skip


def events(reply: httpx.Response) -> list[dict[str, Any]]:
    """The SSE events of a reply, checking that ``event:`` names the data's type."""
    out = []
    for frame in reply.text.split("\n\n"):
        lines = [line for line in frame.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), frame
        data = orjson.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        out.append(data)
    return out


@pytest.fixture
def hal(stands: Stands) -> Tokens:
    stands.codex.fail_next.clear()
    return stands.auth.mint("hal@example.com", "acct-hal")


@pytest.mark.parametrize(("change", "status", "expected"), [
    ({"store": True}, 400, "Store must be set to false"),
    ({"store": None}, 400, "Store must be set to false"),
    ({"stream": False}, 400, "Stream must be set to true"),
    ({"temperature": 0.5}, 400, "Unsupported parameter: temperature"),
    ({"max_output_tokens": 10}, 400, "Unsupported parameter: max_output_tokens"),
    ({"previous_response_id": "resp_1"}, 400, "Unsupported parameter: previous_response_id"),
    ({"instructions": ""}, 400, "Instructions are required"),
    ({"instructions": None}, 400, "Instructions are required"),
    ({"model": "gpt-4o"}, 400, "The 'gpt-4o' model is not supported when using Codex with a ChatGPT account."),
])  # fmt: skip
def test_codex_front_door_refusals(stands: Stands, http: httpx.Client, hal: Tokens, change: dict[str, Any],
                                   status: int, expected: str) -> None:  # fmt: skip
    body = {k: v for k, v in {**good_body(user("hi")), **change}.items() if v is not None}
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", json=body, headers=headers(hal))
    assert (reply.status_code, reply.json()) == (status, {"detail": expected})


@pytest.mark.parametrize("items", [
    [{"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "x"}]}],
    [{"type": "message", "role": "user", "content": "a plain string"}],
    [{"type": "message", "role": "tool", "content": []}],
    [{"type": "function_call_output", "call_id": "call_1", "output": "42"}],
    [{"type": "function_call", "call_id": "call_1", "name": "", "arguments": "{}"}],
    [{"type": "reasoning", "id": "rs_1", "summary": []}],
    [{"type": "item_reference", "id": "msg_1"}],
    "a string",
])  # fmt: skip
def test_codex_refuses_bad_input(stands: Stands, http: httpx.Client, hal: Tokens, items: Any) -> None:
    body = {**good_body(), "input": items}
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", json=body, headers=headers(hal))
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_codex_refuses_chat_completions_tools(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", json=good_body(user("hi"), tools=tools),
                      headers=headers(hal))  # fmt: skip
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tools[0].name"


def test_codex_checks_token_account_and_headers(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    url, body = f"{stands.codex_url}/backend-api/codex/responses", good_body(user("hi"))
    forged = Tokens(stands.auth.forge("foreign_key", account_id="acct-hal"), "", "", 0)
    assert http.post(url, json=body, headers=headers(forged)).status_code == 401
    expired = stands.auth.mint("hal@example.com", "acct-hal", lifetime_s=-5)
    reply = http.post(url, json=body, headers=headers(expired))
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "token_expired"
    assert http.post(url, json=body, headers=headers(hal, account="acct-other")).status_code == 403
    for name in ("ChatGPT-Account-Id", "originator"):
        status = http.post(url, json=body, headers={k: v for k, v in headers(hal).items() if k != name}).status_code
        assert status == (403 if name == "ChatGPT-Account-Id" else 400)
    assert http.post(url, json=body, headers={k: v for k, v in headers(hal).items() if k != "Authorization"}
                     ).status_code == 401  # fmt: skip


def test_codex_streams_events_in_order(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    body = good_body(user("first"), assistant("echo(1): first"), user("second question"))
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", json=body, headers=headers(hal))
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["x-codex-primary-used-percent"] == "12"
    assert int(reply.headers["x-codex-primary-reset-at"]) > 0 and reply.headers["x-codex-secondary-window-minutes"]
    got = events(reply)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    kinds = [e["type"] for e in got if e["type"] != "response.output_text.delta"]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.output_item.done", "codex.rate_limits",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    text = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    assert text == "echo(2): second question"
    assert len([e for e in got if e["type"] == "response.output_text.delta"]) == 3
    completed = got[-1]["response"]
    assert completed["status"] == "completed" and completed["output"][-1]["content"][0]["text"] == text
    assert completed["output"][0]["type"] == "reasoning" and completed["output"][0]["encrypted_content"]
    assert set(completed["usage"]) >= {"input_tokens", "output_tokens", "total_tokens"}
    assert stands.codex.requests[-1]["body"] == body

    # The reasoning item (with its encrypted content) goes back in the next turn's input.
    follow = good_body(*body["input"], completed["output"][0], assistant(text), user("third"))
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", json=follow, headers=headers(hal))
    assert "".join(e["delta"] for e in events(reply) if e["type"] == "response.output_text.delta") == "echo(3): third"


def test_codex_function_call(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    tools = [{"type": "function", "name": "lookup", "description": "d", "parameters": {"type": "object"}}]
    url = f"{stands.codex_url}/backend-api/codex/responses"
    got = events(http.post(url, json=good_body(user("call:lookup now"), tools=tools), headers=headers(hal)))
    item = got[-1]["response"]["output"][-1]
    assert item["type"] == "function_call" and item["name"] == "lookup" and item["arguments"] == '{"x":1}'
    deltas = "".join(e["delta"] for e in got if e["type"] == "response.function_call_arguments.delta")
    assert deltas == '{"x":1}'
    answered = good_body(user("call:lookup now"), {"type": "function_call", "call_id": item["call_id"],
                         "name": "lookup", "arguments": item["arguments"]},
                         {"type": "function_call_output", "call_id": item["call_id"], "output": "42"},
                         tools=tools)  # fmt: skip
    got = events(http.post(url, json=answered, headers=headers(hal)))
    assert got[-1]["response"]["output"][-1]["content"][0]["text"] == "echo(1): call:lookup now [tool: 42]"


def test_codex_failures(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    url, body, codex = f"{stands.codex_url}/backend-api/codex/responses", good_body(user("hi")), stands.codex
    codex.fail_next[:] = ["401", "usage_limit", "usage_limit_seconds", "usage_not_included", "overloaded"]
    assert http.post(url, json=body, headers=headers(hal)).status_code == 401
    limit = http.post(url, json=body, headers=headers(hal))
    assert limit.status_code == 429 and limit.json()["error"]["type"] == "usage_limit_reached"
    assert limit.json()["error"]["plan_type"] == "plus" and limit.json()["error"]["resets_at"] > 0
    assert http.post(url, json=body, headers=headers(hal)).json()["error"]["resets_in_seconds"] == 120
    assert http.post(url, json=body, headers=headers(hal)).json()["error"]["type"] == "usage_not_included"
    overloaded = http.post(url, json=body, headers=headers(hal))
    assert overloaded.status_code == 503 and overloaded.json()["error"]["code"] == "server_is_overloaded"

    codex.fail_next[:] = ["failed_context", "failed_quota"]
    for code in ("context_length_exceeded", "insufficient_quota"):
        got = events(http.post(url, json=body, headers=headers(hal)))
        assert got[-1]["type"] == "response.failed" and got[-1]["response"]["error"]["code"] == code
        assert any(e["type"] == "response.output_text.delta" for e in got)

    codex.fail_next[:] = ["cut"]
    with pytest.raises(httpx.HTTPError):
        http.post(url, json=body, headers=headers(hal)).read()

    codex.fail_next[:] = ["keepalive:0.25"]
    reply = http.post(url, json=body, headers=headers(hal))
    assert reply.text.startswith(": keepalive\n\n") and events(reply)[-1]["type"] == "response.completed"


def test_codex_models(stands: Stands, http: httpx.Client, hal: Tokens) -> None:
    url = f"{stands.codex_url}/backend-api/codex/models"
    models = http.get(url, params={"client_version": "0.99.0"}, headers=headers(hal))
    assert {"gpt-5", "gpt-5-codex"} <= {m["slug"] for m in models.json()["models"]}
    assert http.get(url, headers=headers(hal)).status_code == 400
    assert http.get(url, params={"client_version": "0.99.0"}).status_code == 401
    free = stands.auth.mint("ivy@example.com", "acct-ivy", plan="free")
    reply = http.post(f"{stands.codex_url}/backend-api/codex/responses", headers=headers(free, "acct-ivy"),
                      json=good_body(user("hi"), model="gpt-5-codex"))  # fmt: skip
    assert reply.status_code == 400


# -- the web backend's sentinel ----------------------------------------------------------------------
def test_web_backend_requires_sentinel_when_asked(stands: Stands, http: httpx.Client) -> None:
    import uuid

    body = {"action": "next", "model": "auto", "parent_message_id": str(uuid.uuid4()),
            "messages": [{"id": str(uuid.uuid4()), "author": {"role": "user"},
                          "content": {"content_type": "text", "parts": ["hi"]}}]}  # fmt: skip
    auth = {"Authorization": f"Bearer {web_mint('joe@example.com')}"}
    url = f"{stands.web_url}/backend-api/conversation"
    stands.web.require_sentinel = True
    try:
        refused = http.post(url, json=body, headers=auth)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "Unusual activity has been detected from your device. Try again later."}
        sentinel = {"openai-sentinel-chat-requirements-token": "t", "openai-sentinel-proof-token": "p"}
        assert http.post(url, json=body, headers={**auth, **sentinel}).status_code == 200
    finally:
        stands.web.require_sentinel = False
    assert http.post(url, json=body, headers=auth).status_code == 200


def test_codex_counts_streams_the_client_left(stands: Stands, hal: Tokens) -> None:
    codex = stands.codex
    before, codex.chunk_delay = codex.closed_streams, 0.05
    try:
        url = f"{stands.codex_url}/backend-api/codex/responses"
        body = good_body(user("one two three four five six seven eight"))
        with httpx.stream("POST", url, json=body, headers=headers(hal), timeout=10) as reply:
            for line in reply.iter_lines():
                if "response.output_text.delta" in line:
                    break
        deadline = time.monotonic() + 5
        while codex.closed_streams == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert codex.closed_streams == before + 1 and codex.active == 0
    finally:
        codex.chunk_delay = 0.0
