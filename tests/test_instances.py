"""Several instances, one memory: Redis and PostgreSQL shared by server processes, under load, while
instances die and stores go away."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import KEY, Upstreams, ask, ask_at_once
from .harness import ServerProcess
from .private_stores import PrivatePostgres, PrivateRedis
from .shared_stores import POSTGRES_PORT, REDIS_PORT, store_url
from .tcp_proxy import TCPProxy
from .test_api_contract import assert_error


class Load:
    """Clients asking new questions until stopped; records what was acknowledged and what failed."""

    def __init__(self, url: str, clients: int):
        self.url = url
        self.acked: list[str] = []
        self.failures: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_acked(self, count: int, timeout: float = 20) -> None:
        self._wait(lambda: len(self.acked) >= count, timeout, f"{count} acknowledged replies")

    def wait_failures(self, count: int, timeout: float = 20) -> None:
        self._wait(lambda: len(self.failures) >= count, timeout, f"{count} failures")

    @staticmethod
    def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.is_set():
                try:
                    response = ask(c, f"load {len(self.acked)}")
                except httpx.HTTPError:
                    continue  # the instance died under us: nothing was acknowledged
                if response.status_code == 201:
                    self.acked.append(response.json()["data"]["id"])
                else:
                    self.failures.append(response.status_code)


def assert_all_kept(url: str, acked: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        for reply_id in acked:
            follow = ask(c, "still here?", parent=reply_id)
            assert follow.status_code == 201, follow.text
            assert follow.json()["data"]["text"] == "echo(2): still here?"


def wait_ready(client: httpx.Client, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the instance did not recover"
        time.sleep(0.1)


def servers(tmp_path: Path, upstreams: Upstreams, url: str, count: int) -> list[ServerProcess]:
    started = []
    for i in range(count):
        (tmp_path / str(i)).mkdir()
        started.append(ServerProcess(tmp_path / str(i), upstreams.env(CHATGPT_SERVER_STORE_URL=url)).start())
    return started


def test_a_conversation_moves_between_instances(network_kind: str, tmp_path: Path, upstreams: Upstreams) -> None:
    a, b = servers(tmp_path, upstreams, store_url(network_kind, tmp_path), 2)
    try:
        with httpx.Client(base_url=a.url) as ca, httpx.Client(base_url=b.url) as cb:
            first = ask(ca, "one").json()["data"]
            second = ask(cb, "two", parent=first["id"]).json()["data"]
            third = ask(ca, "three", parent=second["id"])
            assert third.status_code == 201, third.text
            assert third.json()["data"]["text"] == "echo(3): three"
            assert cb.get("/readyz").json()["data"] == {"store": network_kind, "ready": True}
    finally:
        a.stop()
        b.stop()


def test_sigkill_under_load_loses_no_acknowledged_message(
    network_kind: str, tmp_path: Path, upstreams: Upstreams
) -> None:
    a, b = servers(tmp_path, upstreams, store_url(network_kind, tmp_path), 2)
    try:
        with Load(a.url, clients=4) as load:
            load.wait_acked(25)
            a.kill()  # SIGKILL in the middle of the load
        assert len(load.acked) > 20
        assert_all_kept(b.url, load.acked)
    finally:
        a.stop()
        b.stop()


def test_store_cut_off_and_back_under_load(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path, upstreams: Upstreams
) -> None:
    (server,) = servers(tmp_path, upstreams, store_url(network_kind, tmp_path, store_proxy.port), 1)
    try:
        with Load(server.url, clients=3) as load, httpx.Client(base_url=server.url, timeout=15) as c:
            load.wait_acked(10)
            store_proxy.stop()  # the store goes away
            load.wait_failures(3)
            calls_before = len(upstreams.openai.requests)
            assert assert_error(ask(c, "while down"), 503) == "conversation store unavailable"
            assert len(upstreams.openai.requests) == calls_before  # the upstream was not called
            assert c.get("/readyz").status_code == 503
            store_proxy.start()  # the store comes back: the same process recovers
            wait_ready(c)
            load.wait_acked(len(load.acked) + 10)
        assert set(load.failures) == {503}, load.failures  # never a 500
        assert_all_kept(server.url, load.acked)
    finally:
        server.stop()
    assert "Traceback" not in server.log()
    assert KEY not in server.log()


def test_a_turn_whose_lock_lapsed_is_not_written_after_the_turn_that_took_it(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path, upstreams: Upstreams
) -> None:
    """Instance A loses its store (a partition) for longer than the lock lease while it answers a turn of a
    conversation; instance B then takes the lapsed lock and answers a turn of its own. A's reply, whose
    prompt never saw B's turn, must not be written after it (the conversation would read as if it had):
    A's turn fails, and the conversation holds B's turn last."""
    import openai

    url = store_url(network_kind, tmp_path)
    timing = {"CHATGPT_SERVER_LOCK_LEASE_MS": "3000", "CHATGPT_SERVER_STORE_TIMEOUT_MS": "1000"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proxied = url.replace(f":{REDIS_PORT}/", f":{store_proxy.port}/").replace(
        f":{POSTGRES_PORT}/", f":{store_proxy.port}/"
    )
    a = ServerProcess(tmp_path / "a", upstreams.env(CHATGPT_SERVER_STORE_URL=proxied, **timing)).start()
    b = ServerProcess(tmp_path / "b", upstreams.env(CHATGPT_SERVER_STORE_URL=url, **timing)).start()
    try:
        with (
            openai.OpenAI(base_url=a.url + "/v1", api_key=KEY, max_retries=0) as sdk_a,
            openai.OpenAI(base_url=b.url + "/v1", api_key=KEY, max_retries=0) as sdk_b,
        ):
            conversation = sdk_b.conversations.create().id
            sdk_b.responses.create(model="gpt-4o-mini", input="start", conversation=conversation)
            upstreams.openai.chunk_delay = 0.4
            events: list[str] = []
            with sdk_a.responses.create(
                model="gpt-4o-mini", input="A slow one two three four five six seven eight nine ten eleven",
                conversation=conversation, stream=True,
            ) as stream:  # fmt: skip
                for event in stream:
                    events.append(event.type)
                    if event.type == "response.output_text.delta" and events.count(event.type) == 1:
                        store_proxy.freeze()  # A's store stops answering: its lock's renewals miss
                        deadline = time.monotonic() + 10
                        while True:  # B takes the lock as soon as it lapses
                            try:
                                sdk_b.responses.create(model="gpt-4o-mini", input="B fast", conversation=conversation)
                                break
                            except openai.BadRequestError as exc:
                                assert exc.code == "conversation_locked" and time.monotonic() < deadline
                                time.sleep(0.2)
                        store_proxy.thaw()
            assert events[-1] == "response.failed", events
            items = sdk_b.conversations.items.list(conversation, order="asc").data
            said = [part.text for item in items for part in item.content]  # type: ignore[union-attr]
            assert said == ["start", "echo(1): start", "B fast", "echo(2): B fast"], said
    finally:
        upstreams.openai.chunk_delay = 0.0
        store_proxy.thaw()
        a.stop()
        b.stop()
    assert "lapsed" in a.log() or "taken over" in a.log()


@pytest.fixture(params=["redis", "postgresql"])
def private_store(request: pytest.FixtureRequest) -> Iterator[PrivateRedis | PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="store-"))
    os.chmod(directory, 0o755)  # noqa: S103 - the postgres user must reach its data directory
    store: PrivateRedis | PrivatePostgres = (
        PrivateRedis(directory) if request.param == "redis" else PrivatePostgres(directory)
    )
    store.start()
    yield store
    store.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_the_store_server_itself_stopped_and_restarted(
    private_store: PrivateRedis | PrivatePostgres, tmp_path: Path, upstreams: Upstreams
) -> None:
    """Not a cut connection this time: the store process shuts down and starts again from its files."""
    (server,) = servers(tmp_path, upstreams, private_store.url, 1)
    try:
        with Load(server.url, clients=3) as load, httpx.Client(base_url=server.url, timeout=15) as c:
            load.wait_acked(10)
            private_store.stop()
            load.wait_failures(3)
            assert assert_error(ask(c, "while down"), 503) == "conversation store unavailable"
            private_store.start()
            wait_ready(c)
            load.wait_acked(len(load.acked) + 10)
        assert set(load.failures) <= {503}, load.failures
        assert len(load.acked) > 10
        assert_all_kept(server.url, load.acked)  # acknowledged before the stop or after the restart
    finally:
        server.stop()


def test_one_account_one_reply_at_a_time_across_instances(
    network_kind: str, tmp_path: Path, upstreams: Upstreams
) -> None:
    """The web backend allows one reply at a time per account: two instances queue as one."""
    from .standins.chatgpt_web import mint

    a, b = servers(tmp_path, upstreams, store_url(network_kind, tmp_path), 2)
    token = mint("queued@example.com")
    upstreams.chatgpt.chunk_delay = 0.05
    upstreams.chatgpt.max_concurrent_seen = 0
    try:
        statuses = ask_at_once([b.url, a.url], 6, "parallel", key=token, mode="2")
    finally:
        upstreams.chatgpt.chunk_delay = 0.0
        a.stop()
        b.stop()
    assert statuses == [201] * 6
    assert upstreams.chatgpt.max_concurrent_seen == 1
