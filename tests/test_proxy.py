"""CHATGPT_SERVER_PROXY carries the upstream calls, and a bad value stops the server at start-up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import Upstreams, ask
from .harness import ServerProcess
from .standins.chatgpt_web import mint
from .standins.http_proxy import ForwardProxy


def forward_proxy(upstreams: Upstreams) -> tuple[ForwardProxy, int]:
    """A forward proxy on the stand-ins' loop, and its port."""
    proxy = ForwardProxy()

    async def start() -> int:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    return proxy, asyncio.run_coroutine_threadsafe(start(), upstreams.apps.loop).result(10)


def test_upstream_calls_go_through_the_proxy(tmp_path: Path, upstreams: Upstreams) -> None:
    proxy, port = forward_proxy(upstreams)
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_PROXY=f"http://127.0.0.1:{port}")).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert ask(c, "via proxy").json()["data"]["text"] == "echo(1): via proxy"
            assert ask(c, "web via proxy", key=mint("p@example.com"), mode="2").status_code == 201
    finally:
        server.stop()
    assert proxy.seen == [
        f"POST {upstreams.openai_url}/chat/completions",
        f"POST {upstreams.chatgpt_url}",
    ]


def test_sign_in_and_codex_calls_go_through_the_proxy(tmp_path: Path, upstreams: Upstreams) -> None:
    """Device sign-in (issuer calls, the JWKS) and mode 2 on the Codex backend, all via the proxy."""
    from .test_accounts import sign_in, unique

    proxy, port = forward_proxy(upstreams)
    env = upstreams.codex_env(CHATGPT_SERVER_PROXY=f"http://127.0.0.1:{port}")
    server = ServerProcess(tmp_path, env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            email, account = unique("proxied")
            token = sign_in(c, upstreams, email, account)["accessToken"]
            assert ask(c, "codex via proxy", key=token, mode="2").status_code == 201
    finally:
        server.stop()
    paths = [line.split(" ", 1)[1].split("?")[0] for line in proxy.seen]
    auth, codex = upstreams.auth_url, upstreams.codex_url
    for expected in (f"{auth}/api/accounts/deviceauth/usercode", f"{auth}/api/accounts/deviceauth/token",
                     f"{auth}/oauth/token", f"{auth}/.well-known/jwks.json", f"{codex}/responses"):  # fmt: skip
        assert expected in paths, (expected, proxy.seen)


def test_invalid_proxy_is_refused_at_start_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatgpt_server", "serve", "--port", "1"],
        env={"CHATGPT_SERVER_PROXY": "ftp://proxy:21", "CHATGPT_SERVER_DATA_DIR": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr  # one line, no traceback
    assert "CHATGPT_SERVER_PROXY: must be one of http, https, socks5, socks5h" in result.stderr
