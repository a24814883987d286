"""Keys, tokens and passwords never appear in logs, responses or the store, whatever happens."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from .conftest import Upstreams, ask
from .harness import ServerProcess
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
