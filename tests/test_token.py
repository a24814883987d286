"""The token endpoint: the sign-in flow against its stand-in, the cache, refresh, and every failure."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import Upstreams
from .harness import ServerProcess
from .standins.chatgpt_web import verify
from .test_api_contract import assert_error

PATH = "/api/v1/token/getInfo"


@pytest.fixture
def account(upstreams: Upstreams) -> tuple[str, str]:
    email, password = f"u{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
    upstreams.apps.call(lambda: upstreams.signin.accounts.__setitem__(email, password))
    return email, password


def get(client: httpx.Client, kind: str, email: str, password: str) -> httpx.Response:
    return client.get(PATH, params={"type": kind, "email": email, "password": password})


def test_get_signs_in_once_then_serves_the_cache(
    client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]
) -> None:
    email, password = account
    first = get(client, "1", email, password)
    assert first.status_code == 200, first.text
    token = first.json()["data"]
    assert isinstance(token, str) and verify(token) is not None  # a bare JWT of that account
    assert upstreams.signin.sign_ins[email] == 1
    again = client.post(PATH, json={"type": "1", "email": email, "password": password})
    assert again.status_code == 201 and again.json()["data"] == token
    form = client.post(PATH, data={"type": "1", "email": email, "password": password})
    assert form.status_code == 201 and form.json()["data"] == token
    assert upstreams.signin.sign_ins[email] == 1


def test_cache_needs_the_same_password(client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]) -> None:
    email, password = account
    assert get(client, "1", email, password).status_code == 200
    wrong = get(client, "1", email, "not-the-password")
    assert assert_error(wrong, 401, PATH) == "sign-in failed at step 5: wrong email or password"
    assert "not-the-password" not in wrong.text


def test_refresh_uses_the_kept_session(client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]) -> None:
    email, password = account
    token = get(client, "1", email, password).json()["data"]
    calls = upstreams.signin.session_calls
    refreshed = get(client, "2", email, password)
    assert refreshed.status_code == 200
    assert refreshed.json()["data"] != token and verify(refreshed.json()["data"]) is not None
    assert upstreams.signin.sign_ins[email] == 1  # no new sign-in: step 8 alone
    assert upstreams.signin.session_calls == calls + 1


def test_refresh_signs_in_again_when_the_session_is_gone(
    client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]
) -> None:
    email, password = account
    get(client, "1", email, password)
    upstreams.apps.call(upstreams.signin.revoke_sessions)
    assert get(client, "2", email, password).status_code == 200
    assert upstreams.signin.sign_ins[email] == 2


@pytest.mark.parametrize(
    ("secret", "status", "message"),
    [
        ("<captcha>", 403, "sign-in failed at step 5: the identity service requires a captcha"),
        ("<sso>", 400, "this account signs in through Google, Microsoft or Apple and has no password"),
    ],
)
def test_identity_refusals(client: httpx.Client, upstreams: Upstreams, secret: str, status: int, message: str) -> None:
    email = f"x{uuid.uuid4().hex[:6]}@example.com"
    upstreams.apps.call(lambda: upstreams.signin.accounts.__setitem__(email, secret))
    assert assert_error(get(client, "1", email, "whatever"), status, PATH) == message


def test_oauth_signin_refusal_is_429(client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]) -> None:
    upstreams.signin.refuse = True
    message = assert_error(get(client, "1", *account), 429, PATH)
    assert message.startswith("sign-in refused or rate limited at step 2")


def test_unsupported_country_suggests_a_proxy(
    client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]
) -> None:
    upstreams.signin.country_block = True
    assert "CHATGPT_SERVER_PROXY" in assert_error(get(client, "1", *account), 403, PATH)


def test_password_goes_only_to_the_configured_identity_host(
    tmp_path: Path,
    upstreams: Upstreams,
    account: tuple[str, str],
) -> None:
    env = upstreams.env(CHATGPT_SERVER_AUTH_URL="https://auth.example.invalid")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            message = assert_error(get(c, "1", *account), 502, PATH)
        # Refused before any request to the identity host it leads to (issue 8: no request goes
        # anywhere but the allowed upstream), let alone the password.
        assert message.startswith("sign-in flow changed at step 2: the flow leads to 127.0.0.1:")
        assert "use device sign-in" in message
        assert not any("password" in q for q in upstreams.signin.seen_queries)
    finally:
        server.stop()


def test_the_sign_in_flow_goes_nowhere_but_its_two_hosts(
    client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]
) -> None:
    """After the password, the identity service sends the browser on (resume, then the web app's
    callback): a hop to another host is refused before any request goes there, so no host but the two
    configured ones is called, or sets the session cookie the token comes from."""
    elsewhere = upstreams.signin.identity_url.replace("127.0.0.1", "localhost")  # the same server, another origin
    upstreams.signin.resume_origin = elsewhere
    message = assert_error(get(client, "1", *account), 502, PATH)
    assert message.endswith("answered with a redirect, which is never followed"), message
    assert not any(host.startswith("localhost") for host in upstreams.signin.resume_hosts)


def test_a_token_near_expiry_is_not_served_from_cache(
    client: httpx.Client, upstreams: Upstreams, account: tuple[str, str]
) -> None:
    """Nor is the password signed in with again: the kept session gives a fresh token (step 8 alone, as
    upstreams.md has it), and only a session that is gone costs a sign-in."""
    email, password = account
    upstreams.signin.token_ttl = 120  # inside the 300 s safety margin
    try:
        first = get(client, "1", email, password).json()["data"]
        calls = upstreams.signin.session_calls
        second = get(client, "1", email, password)
        assert second.status_code == 200 and second.json()["data"] != first
        assert upstreams.signin.sign_ins[email] == 1 and upstreams.signin.session_calls == calls + 1
        upstreams.apps.call(upstreams.signin.revoke_sessions)
        assert get(client, "1", email, password).status_code == 200
    finally:
        upstreams.signin.token_ttl = 3600
    assert upstreams.signin.sign_ins[email] == 2


def test_unreachable_sign_in_is_502(tmp_path: Path, upstreams: Upstreams) -> None:
    from .harness import free_port

    env = upstreams.env(CHATGPT_SERVER_CHATGPT_WEB_URL=f"http://127.0.0.1:{free_port()}")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert "cannot reach" in assert_error(get(c, "1", "a@b.c", "pw-secret-1"), 502, PATH)
    finally:
        server.stop()


def test_password_sign_ins_are_bounded_per_address(tmp_path: Path, upstreams: Upstreams,
                                                   account: tuple[str, str]) -> None:  # fmt: skip
    """Each sign-in with a password is an unauthenticated call to the identity service, and a guess: one
    address gets so many an hour (then 429 with Retry-After, the identity service not called); a token
    served from the cache does not count."""
    email, password = account
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_PASSWORD_SIGN_INS_PER_HOUR="3")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert get(c, "1", email, password).status_code == 200  # 1: signs in
            for _ in range(3):
                assert get(c, "1", email, password).status_code == 200  # from the cache: not counted
            for guess in ("guess-1", "guess-2"):  # 2, 3
                assert_error(get(c, "1", email, guess), 401, PATH)
            tried = upstreams.signin.sign_ins[email]
            limited = get(c, "1", email, "guess-3")
            assert "too many password sign-ins" in assert_error(limited, 429, PATH)
            assert 0 < int(limited.headers["Retry-After"]) <= 3600
            assert upstreams.signin.sign_ins[email] == tried  # the identity service was not called
            assert get(c, "1", email, password).status_code == 200  # the cache still serves its owner
    finally:
        server.stop()
