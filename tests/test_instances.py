"""Several instances, one memory: Redis and PostgreSQL shared by two server processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import KEY, Upstreams, ask
from .harness import ServerProcess
from .private_stores import PrivatePostgres, PrivateRedis
from .tcp_proxy import TCPProxy
from .test_api_contract import assert_error
from .test_stores import POSTGRES_PORT, REDIS_PORT, store_url


@pytest.fixture(params=["redis", "postgresql"])
def shared_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxy(shared_kind: str) -> Iterator[TCPProxy]:
    p = TCPProxy(REDIS_PORT if shared_kind == "redis" else POSTGRES_PORT).start()
    yield p
    p.stop()


def two_servers(tmp_path: Path, upstreams: Upstreams, url: str) -> tuple[ServerProcess, ServerProcess]:
    env = upstreams.env(CHATGPT_SERVER_STORE_URL=url)
    a = ServerProcess(tmp_path / "a", env)
    b = ServerProcess(tmp_path / "b", env)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return a.start(), b.start()


def test_a_conversation_moves_between_instances(shared_kind: str, tmp_path: Path, upstreams: Upstreams) -> None:
    a, b = two_servers(tmp_path, upstreams, store_url(shared_kind, tmp_path))
    try:
        with httpx.Client(base_url=a.url) as ca, httpx.Client(base_url=b.url) as cb:
            first = ask(ca, "one").json()["data"]
            second = ask(cb, "two", parent=first["id"]).json()["data"]
            third = ask(ca, "three", parent=second["id"])
            assert third.status_code == 201, third.text
            assert third.json()["data"]["text"] == "echo(3): three"
            ready = cb.get("/readyz").json()["data"]
            assert ready == {"store": shared_kind, "ready": True}
    finally:
        a.stop()
        b.stop()


def _load(url: str, stop: threading.Event, acked: list[str], failures: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            try:
                response = ask(c, f"load {len(acked)}")
            except httpx.HTTPError:
                continue  # the instance died under us: nothing was acknowledged
            if response.status_code == 201:
                acked.append(response.json()["data"]["id"])
            else:
                failures.append(response.status_code)


def test_sigkill_under_load_loses_no_acknowledged_message(
    shared_kind: str, tmp_path: Path, upstreams: Upstreams
) -> None:
    a, b = two_servers(tmp_path, upstreams, store_url(shared_kind, tmp_path))
    stop = threading.Event()
    acked: list[str] = []
    failures: list[int] = []
    workers = [threading.Thread(target=_load, args=(a.url, stop, acked, failures)) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        time.sleep(1.0)
        a.kill()  # SIGKILL in the middle of the load
        stop.set()
        for w in workers:
            w.join()
        assert len(acked) > 20
        with httpx.Client(base_url=b.url, timeout=10) as cb:
            for reply_id in acked:
                follow = ask(cb, "still here?", parent=reply_id)
                assert follow.status_code == 201, follow.text
                assert follow.json()["data"]["text"] == "echo(2): still here?"
    finally:
        stop.set()
        a.stop()
        b.stop()


def test_store_stopped_and_restarted_under_load(
    shared_kind: str, proxy: TCPProxy, tmp_path: Path, upstreams: Upstreams
) -> None:
    server = ServerProcess(
        tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=store_url(shared_kind, tmp_path, proxy.port))
    )
    server.start()
    stop = threading.Event()
    acked: list[str] = []
    failures: list[int] = []
    workers = [threading.Thread(target=_load, args=(server.url, stop, acked, failures)) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.7)
        proxy.stop()  # the store goes away
        time.sleep(0.5)
        with httpx.Client(base_url=server.url, timeout=15) as c:
            calls_before = len(upstreams.openai.requests)
            down = ask(c, "while down")
            assert assert_error(down, 503) == "conversation store unavailable"
            assert len(upstreams.openai.requests) == calls_before  # the upstream was not called
            assert c.get("/readyz").status_code == 503
            proxy.start()  # the store comes back: the same process recovers
            deadline = time.monotonic() + 15
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.7)
            stop.set()
            for w in workers:
                w.join()
            assert set(failures) <= {503}, failures  # never a 500
            assert 503 in failures
            after = ask(c, "after")
            assert after.status_code == 201, after.text
            for reply_id in acked:  # every acknowledged reply was stored
                assert ask(c, "again", parent=reply_id).status_code == 201
    finally:
        stop.set()
        server.stop()
    assert "Traceback" not in server.log()
    assert KEY not in server.log()


@pytest.fixture(params=["redis", "postgresql"])
def private_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis | PrivatePostgres]:
    directory = Path(tempfile.mkdtemp(prefix="store-"))  # postgres must be able to enter it
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
    server = ServerProcess(tmp_path, upstreams.env(CHATGPT_SERVER_STORE_URL=private_store.url)).start()
    stop = threading.Event()
    acked: list[str] = []
    failures: list[int] = []
    workers = [threading.Thread(target=_load, args=(server.url, stop, acked, failures)) for _ in range(3)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.7)
        private_store.stop()
        time.sleep(0.5)
        with httpx.Client(base_url=server.url, timeout=15) as c:
            assert assert_error(ask(c, "while down"), 503) == "conversation store unavailable"
            private_store.start()
            deadline = time.monotonic() + 20
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            stop.set()
            for w in workers:
                w.join()
            assert set(failures) <= {503}, failures
            assert len(acked) > 10
            for reply_id in acked:  # acknowledged before the stop, or after the restart: all kept
                follow = ask(c, "again", parent=reply_id)
                assert follow.status_code == 201, follow.text
    finally:
        stop.set()
        server.stop()
