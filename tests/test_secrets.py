"""Keys, tokens and passwords never appear in logs, responses or the store, whatever happens."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from .conftest import Upstreams, ask
from .harness import ServerProcess, within
from .standins.chatgpt_web import mint


def test_no_secret_in_any_log_line_response_or_stored_byte(tmp_path: Path, upstreams: Upstreams) -> None:
    key = f"sk-test-{uuid.uuid4().hex}"
    bad_key = f"sk-bad-{uuid.uuid4().hex}"
    token = mint("secret-keeper@example.com")
    expired = mint("secret-keeper@example.com", exp=1)
    email, password = "vault@example.com", f"pw-{uuid.uuid4().hex}"
    upstreams.apps.call(lambda: upstreams.signin.accounts.__setitem__(email, password))
    secrets = [key, bad_key, token, expired, password, token.split(".")[2], key[8:]]

    env = upstreams.env(CHATGPT_SERVER_LOG_LEVEL="DEBUG", CHATGPT_SERVER_SECRET_KEY="s3cr3t-hmac-key-value")
    server = ServerProcess(tmp_path, env).start()
    seen: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:

            def keep(response: httpx.Response) -> httpx.Response:
                seen.append(str(response.headers) + response.text)
                return response

            first = keep(ask(c, "hello", key=key)).json()["data"]
            keep(ask(c, "again", parent=first["id"], key=key))
            keep(ask(c, "streamed", parent=first["id"], key=key, kind="2"))
            keep(ask(c, "bad", key=bad_key))
            upstreams.apps.call(lambda: upstreams.openai.fail_next.append("rate"))
            keep(ask(c, "limited", key=key))
            keep(ask(c, "steal", parent=first["id"], key=bad_key))
            keep(ask(c, "web", key=token, mode="2"))
            keep(ask(c, "web", key=expired, mode="2"))
            keep(ask(c, "web", key=token[:-3] + "xyz", mode="2"))
            keep(ask(c, "web", key=token, mode="2", kind="2"))
            keep(c.get("/api/v1/token/getInfo", params={"type": "1", "email": email, "password": "wrong-" + password}))
            keep(c.get("/api/v1/token/getInfo", params={"type": "7", "email": email, "password": password}))
            ok = keep(c.post("/api/v1/token/getInfo", json={"type": "1", "email": email, "password": password}))
            issued = ok.json()["data"]
            keep(c.post("/api/v1/token/getInfo", data={"type": "2", "email": email, "password": password}))
    finally:
        server.stop()
    assert len(seen) == 14
    log = server.log()
    assert "s3cr3t-hmac-key-value" not in log and "settings:" in log
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("conversations.db*"))
    assert stored, "the store file was not found"
    for secret in [*secrets, "wrong-" + password]:
        assert secret not in log, "secret in the server log"
        assert all(secret not in text for text in seen), "secret in a response"
        assert secret.encode() not in stored, "secret in the store"
    # The issued access token goes to its caller only: not to the log, not to the store.
    assert issued not in log and issued.encode() not in stored


def test_a_secret_sent_in_the_wrong_field_is_never_quoted_back(tmp_path: Path, upstreams: Upstreams) -> None:
    """A message that quotes what the client sent (an unknown id, a bad field) quotes neither the
    request's own credential, in any spelling, nor anything shaped like one, on any door or log."""
    key = f"sk-test-{uuid.uuid4().hex}"
    other = "gsk_" + uuid.uuid4().hex  # no known shape: only knowing it is the request's key finds it
    token = mint("wrong-field@example.com")
    password = f"pw-{uuid.uuid4().hex}"
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_LOG_LEVEL="DEBUG")).start()
    seen: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for parent in (key, key.upper(), key[-8:], f"x{key}y", "see " + token):
                seen.append(ask(c, "hi", parent=parent, key=key).text)
            seen.append(ask(c, "hi", parent=other, key=other).text)
            seen.append(ask(c, "hi", parent=other.upper(), key=other, maxModelTokens=other).text)
            seen.append(ask(c, "hi", key=key, systemMessage=5, model=key).text)
            headers = {"Authorization": f"Bearer {key}"}
            for body in ({"model": "gpt-3.5-turbo", "input": "x", "previous_response_id": key.upper()},
                         {"model": "gpt-3.5-turbo", "input": "x", "conversation": "conv_" + key[-8:]},
                         {"model": "gpt-3.5-turbo", "input": "x", "previous_response_id": "resp_" + key}):  # fmt: skip
                seen.append(c.post("/v1/responses", json=body, headers=headers).text)
            seen.append(c.get(f"/v1/responses/{key}", headers=headers).text)
            seen.append(c.get(f"/v1/conversations/{token}", headers=headers).text)
            signin = {"type": "1", "email": password, "password": password}
            seen.append(c.post("/api/v1/token/getInfo", json=signin).text)
            seen.append(c.get("/api/v1/token/getInfo", params={"type": "9", "token": token}).text)
    finally:
        server.stop()
    log = server.log()
    assert all(len(text) > 20 for text in seen), seen  # every request was answered (with an error)
    for secret in (key, key[-8:], other, token, token.split(".")[1], password):
        assert secret.lower() not in log.lower(), f"{secret} in the server log"
        assert all(secret.lower() not in text.lower() for text in seen), (secret, seen)


def test_a_bearer_key_in_the_path_of_an_unknown_route_is_masked(server: ServerProcess, client: httpx.Client) -> None:
    """The request's bearer credential is its secret on every route, an unknown one too (its 404 quotes
    the path, and the access log writes it)."""
    key = f"myLocalKey{uuid.uuid4().hex}"  # not shaped like a key: masked as the request's own only
    for path in (f"/api/v1/gpt/getInfo/{key}", f"/nowhere/{key}", f"/v1/nowhere/{key}"):
        answer = client.get(path, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 404 and key not in answer.text, answer.text
        rid = answer.headers["x-request-id"]
        assert within(5, lambda rid=rid: rid in server.log())  # type: ignore[misc]
    assert key not in server.log() and key[-8:] not in server.log()


def test_the_start_up_log_masks_credentials_in_every_url(tmp_path: Path, upstreams: Upstreams) -> None:
    env = upstreams.env(
        CHATGPT_SERVER_PROXY="http://SECRETTOKEN@127.0.0.1:9",
        CHATGPT_SERVER_STORE_URL=f"sqlite:///{tmp_path / 'x.db'}?password=PWINQUERY&synchronous=normal",
        CHATGPT_SERVER_ALLOWED_UPSTREAMS="http://127.0.0.1:9/v1",
    )
    server = ServerProcess(tmp_path, env).start()
    server.stop()
    log = server.log()
    assert "settings:" in log and "SECRETTOKEN" not in log and "PWINQUERY" not in log
    assert "***@127.0.0.1:9" in log and "password=***" in log


def test_mask_url_covers_userinfo_and_query_secrets() -> None:
    from chatgpt_server.settings import mask_url

    assert mask_url("http://SECRETTOKEN@proxy:3128") == "http://***@proxy:3128"
    assert mask_url("socks5://user:pass@proxy:1080") == "socks5://***@proxy:1080"
    assert (
        mask_url("postgresql://h/db?password=abc&sslmode=require") == "postgresql://h/db?password=***&sslmode=require"
    )
    assert mask_url("redis://:hunter2@[::1]:6379/0?prefix=x") == "redis://***@[::1]:6379/0?prefix=x"
    assert mask_url("https://h/v1?api_key=SEKRIT&access_token=SEKRIT") == "https://h/v1?api_key=***&access_token=***"
    # An absolute SQLite path stays absolute (the empty authority is kept), a relative one relative.
    assert mask_url("sqlite:////srv/data/x.db") == "sqlite:////srv/data/x.db"
    assert mask_url("sqlite:///data/x.db?synchronous=full") == "sqlite:///data/x.db?synchronous=full"


def test_a_refused_base_url_is_quoted_without_its_credentials(tmp_path: Path) -> None:
    """The start-up error that refuses a base URL quotes it masked: userinfo, credential-like query
    values and key-shaped text, and never its fragment."""
    import os
    import subprocess
    import sys

    for url in ("http://bob:an0therSecret@127.0.0.1:9/v1", "https://h.example/v1?api-key=an0therSecret",
                "http://127.0.0.1:9/v1?x=sk-an0therSecret", "ftp://u:an0therSecret@h/x",
                "http://h/v1#an0therSecret", "http://h/v1 Bearer an0therSecret"):  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGPT_SERVER_")}
        env.update(CHATGPT_SERVER_OPENAI_BASE_URL=url, CHATGPT_SERVER_DATA_DIR=str(tmp_path))
        done = subprocess.run([sys.executable, "-m", "chatgpt_server", "serve", "--port", "9"], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode != 0 and "CHATGPT_SERVER_OPENAI_BASE_URL" in done.stderr, done.stderr
        assert "an0therSecret" not in done.stdout + done.stderr, done.stderr
