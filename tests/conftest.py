from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from .harness import ServerProcess, ThreadedApps
from .shared_stores import POSTGRES_PORT, REDIS_PORT, clean_up
from .standins.chatgpt_auth import ChatGPTAuthStandIn
from .standins.chatgpt_web import ChatGPTStandIn
from .standins.codex import CodexStandIn
from .standins.openai_api import ALT_KEY_PREFIX, VALID_KEY_PREFIX, OpenAIStandIn
from .standins.signin import SignInStandIn
from .tcp_proxy import TCPProxy

KEY = "sk-test-0123456789abcdefKEYONE"
OTHER_KEY = "sk-test-0123456789abcdefKEYTWO"


@dataclass
class Upstreams:
    apps: ThreadedApps
    openai: OpenAIStandIn
    openai_url: str  # base URL, ends in /v1
    alt_openai: OpenAIStandIn
    alt_openai_url: str  # allow-listed alternative
    chatgpt: ChatGPTStandIn
    chatgpt_url: str  # the conversation URL
    signin: SignInStandIn
    web_url: str
    identity_url: str
    auth: ChatGPTAuthStandIn
    auth_url: str  # the issuer (device sign-in, refresh, JWKS)
    codex: CodexStandIn
    codex_url: str  # CHATGPT_SERVER_CODEX_URL

    def codex_env(self, **extra: str) -> dict[str, str]:
        """Mode 2 on the Codex backend with accounts: what the real service speaks today."""
        settings = {
            "CHATGPT_SERVER_CHATGPT_BACKEND": "codex",
            "CHATGPT_SERVER_CODEX_URL": self.codex_url,
            "CHATGPT_SERVER_CHATGPT_AUTH_ISSUER": self.auth_url,
            "CHATGPT_SERVER_DEFAULT_CHATGPT_MODEL": "gpt-5",
            "CHATGPT_SERVER_SECRET_KEY": "test-secret-key-for-accounts",
            "CHATGPT_SERVER_DEVICE_SIGN_INS_PER_HOUR": "1000",  # the suite signs many accounts in from one address
        }
        return self.env(**{**settings, **extra})

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "CHATGPT_SERVER_OPENAI_BASE_URL": self.openai_url,
            "CHATGPT_SERVER_ALLOWED_UPSTREAMS": self.alt_openai_url,
            "CHATGPT_SERVER_CHATGPT_URL": self.chatgpt_url,
            "CHATGPT_SERVER_CHATGPT_WEB_URL": self.web_url,
            "CHATGPT_SERVER_AUTH_URL": self.identity_url,
            "CHATGPT_SERVER_DEFAULT_MODEL": "gpt-3.5-turbo",
            "CHATGPT_SERVER_CHATGPT_BACKEND": "web",  # the legacy suites; the Codex ones say codex
            "CHATGPT_SERVER_DEFAULT_CHATGPT_MODEL": "auto",
            "CHATGPT_SERVER_PASSWORD_SIGN_INS_PER_HOUR": "1000",  # the suite signs in many times from one address
        }
        env.update(extra)
        return env

    def reset(self) -> None:
        def clear() -> None:
            for standin in (self.openai, self.alt_openai):
                standin.requests.clear()
                standin.fail_next.clear()
                standin.chunk_delay = 0.0
                standin.next_id = None
                standin.models_asked.clear()
            self.chatgpt.requests.clear()
            self.chatgpt.fail_next.clear()
            self.chatgpt.force_classic = False
            self.chatgpt.chunk_delay = 0.0
            self.chatgpt.first_delay = 0.0
            self.signin.refuse = False
            self.signin.country_block = False
            self.signin.resume_origin = ""
            self.chatgpt.require_sentinel = False
            self.codex.requests.clear()
            self.codex.fail_next.clear()
            self.codex.chunk_delay = 0.0
            self.auth.refresh_delay = 0.0
            self.auth.refresh_answers.clear()
            self.auth.jwks_down = False
            self.auth.exchange_delay = 0.0
            self.auth.access_lifetime_s = 3600

        self.apps.call(clear)


@pytest.fixture(scope="session")
def upstreams() -> Iterator[Upstreams]:
    apps = ThreadedApps()
    openai, alt = OpenAIStandIn(), OpenAIStandIn(accepts=(VALID_KEY_PREFIX, ALT_KEY_PREFIX))
    chatgpt = ChatGPTStandIn()
    signin = SignInStandIn()
    web_url = apps.serve(signin.web_app())
    identity_url = apps.serve(signin.identity_app())
    signin.web_url, signin.identity_url = web_url, identity_url
    auth = ChatGPTAuthStandIn()
    auth.issuer = apps.serve(auth.app())
    codex = CodexStandIn(auth=auth)
    ups = Upstreams(
        apps=apps,
        openai=openai,
        openai_url=apps.serve(openai.app()) + "/v1",
        alt_openai=alt,
        alt_openai_url=apps.serve(alt.app()) + "/v1",
        chatgpt=chatgpt,
        chatgpt_url=apps.serve(chatgpt.app()) + "/backend-api/conversation",
        signin=signin,
        web_url=web_url,
        identity_url=identity_url,
        auth=auth,
        auth_url=auth.issuer,
        codex=codex,
        codex_url=apps.serve(codex.app()) + "/backend-api/codex",
    )
    yield ups
    apps.close()


@pytest.fixture(scope="session", autouse=True)
def _leave_nothing_behind() -> Iterator[None]:
    """The shared PostgreSQL and Redis get back what this run took: its schemas and keys go."""
    yield
    clean_up()


@pytest.fixture(scope="session", autouse=True)
def _no_key_in_any_server_log() -> Iterator[None]:
    """Every server this run started: none of them wrote a key of the run into its log."""
    yield
    for log in ServerProcess.logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        for secret in (KEY, OTHER_KEY, KEY[8:], OTHER_KEY[8:]):
            assert secret not in text, f"a test key appears in {log}"


@pytest.fixture(autouse=True)
def _fresh_upstreams(request: pytest.FixtureRequest) -> None:
    if "upstreams" in request.fixturenames:
        request.getfixturevalue("upstreams").reset()


@pytest.fixture(params=["redis", "postgresql"])
def network_kind(request: pytest.FixtureRequest) -> str:
    """The stores that live on another server, shared by several instances."""
    return str(request.param)


@pytest.fixture
def store_proxy(network_kind: str) -> Iterator[TCPProxy]:
    """A path to that store which a test can cut and restore."""
    proxy = TCPProxy(REDIS_PORT if network_kind == "redis" else POSTGRES_PORT).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def server(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("server"), upstreams.env()).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def ask_at_once(urls: list[str], count: int, question: str, **kwargs: Any) -> list[int]:
    """``count`` asks at once (a thread each), the i-th to ``urls[i % len(urls)]`` with question
    "<question> i"; their statuses, in the order they came."""
    statuses: list[int] = []

    def one(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=30) as c:
            statuses.append(ask(c, f"{question} {i}", **kwargs).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def ask(
    client: httpx.Client,
    content: str,
    parent: str | None = None,
    key: str = KEY,
    mode: str = "1",
    kind: str = "1",
    **options: Any,
) -> httpx.Response:
    """POST /api/v1/gpt/getInfo the way a client of the original does."""
    opts: dict[str, Any] = {"key": key, "content": content, "isFollow": parent is not None}
    if parent:
        opts["parentMessageId"] = parent
    if options:
        opts["opts"] = options
    return client.post("/api/v1/gpt/getInfo", json={"mode": mode, "type": kind, "opts": opts})
