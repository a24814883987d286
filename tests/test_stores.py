"""One contract, every store: SQLite, Redis and PostgreSQL, against the real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatgpt_server.errors import StoreUnavailable
from chatgpt_server.stores import DuplicateMessage, Store, StoredMessage, open_store

from .conftest import POSTGRES_PORT, REDIS_PORT
from .tcp_proxy import TCPProxy

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(_wrap(coro))


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


def store_url(kind: str, tmp_path: Path, port: int | None = None) -> str:
    name = f"t{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    if kind == "redis":
        return f"redis://127.0.0.1:{port or REDIS_PORT}/0?prefix={name}:"
    # A schema of its own per test: asyncpg passes unknown URL parameters on as server settings.
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(f"postgresql://127.0.0.1:{POSTGRES_PORT}/test")
        await conn.execute(f"CREATE SCHEMA {name}")
        await conn.close()

    run(create())
    return f"postgresql://127.0.0.1:{port or POSTGRES_PORT}/test?search_path={name}"


KINDS = ["sqlite", "redis", "postgresql"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def with_store(url: str, body: Callable[[Store], Awaitable[T]], retention_days: float = 30) -> T:
    async def go() -> T:
        store = open_store(url, retention_days)  # type: ignore[arg-type]
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return run(go())


def message(mid: str, parent: str | None, owner: str = "owner-a", role: str = "user", text: str = "hi",
            tokens: int = 10, created: float | None = None, incomplete: bool = False) -> StoredMessage:  # fmt: skip
    return StoredMessage(mid, parent, "conv-1", owner, "1", role, text, tokens, tokens + 1, incomplete,
                         created if created is not None else time.time())  # fmt: skip


async def build_chain(store: Store, turns: int, owner: str = "owner-a", tokens: int = 10) -> list[str]:
    ids: list[str] = []
    parent = None
    for i in range(turns):
        u, r = f"u{i}-{uuid.uuid4().hex[:6]}", f"r{i}-{uuid.uuid4().hex[:6]}"
        await store.add_turn(
            message(u, parent, owner, "user", f"question {i}", tokens),
            message(r, u, owner, "assistant", f"answer {i} ✓ 你好", tokens),
        )
        ids += [u, r]
        parent = r
    return ids


def test_turn_round_trips_and_belongs_to_its_owner(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        user = message("u1", None, text="question ✓ 你好")
        reply = message("r1", "u1", role="assistant", text="partial", incomplete=True)
        await store.add_turn(user, reply)
        assert await store.get("owner-a", "u1") == user
        assert await store.get("owner-a", "r1") == reply
        assert await store.get("owner-b", "r1") is None
        assert await store.get("owner-a", "missing") is None

    with_store(store_url(kind, tmp_path), body)


def test_a_turn_is_atomic(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.add_turn(message("u1", None), message("r1", "u1", role="assistant"))
        with pytest.raises(DuplicateMessage):
            await store.add_turn(message("u2", "r1"), message("r1", "u2", role="assistant"))
        assert await store.get("owner-a", "u2") is None  # neither message of the failed turn

    with_store(store_url(kind, tmp_path), body)


def test_concurrent_turns_all_land(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        turns = [(message(f"u{i}", None), message(f"r{i}", f"u{i}", role="assistant")) for i in range(50)]
        results = await asyncio.gather(*(store.add_turn(u, r) for u, r in turns), return_exceptions=True)
        assert results == [None] * 50
        for i in range(50):
            assert (await store.get("owner-a", f"r{i}")) is not None

    with_store(store_url(kind, tmp_path), body)


def test_chain_is_newest_first_and_stops_at_the_budget(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = await build_chain(store, 10, tokens=10)
        newest = ids[-1]
        everything = await store.chain("owner-a", newest, "cl100k_base", 10_000)
        assert [m.id for m in everything] == ids[::-1]
        assert everything[0].text == "answer 9 ✓ 你好"
        # cl100k costs 10 per message: a budget of 55 holds 5 messages, not 6.
        assert [m.id for m in await store.chain("owner-a", newest, "cl100k_base", 55)] == ids[::-1][:5]
        # o200k costs 11 per message: 55 holds exactly 5.
        assert len(await store.chain("owner-a", newest, "o200k_base", 55)) == 5
        assert len(await store.chain("owner-a", newest, "o200k_base", 54)) == 4
        # The named message always comes back, even over the budget.
        assert [m.id for m in await store.chain("owner-a", newest, "cl100k_base", 1)] == [newest]
        assert await store.chain("owner-b", newest, "cl100k_base", 10_000) == []
        assert await store.chain("owner-a", "missing", "cl100k_base", 10_000) == []

    with_store(store_url(kind, tmp_path), body)


def test_chain_never_crosses_into_another_owner(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.add_turn(message("x1", None, owner="owner-b"), message("x2", "x1", owner="owner-b"))
        await store.add_turn(message("a1", "x2"), message("a2", "a1"))
        assert [m.id for m in await store.chain("owner-a", "a2", "cl100k_base", 10_000)] == ["a2", "a1"]

    with_store(store_url(kind, tmp_path), body)


def test_deep_chain_in_one_call(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = await build_chain(store, 500, tokens=1)
        chain = await store.chain("owner-a", ids[-1], "cl100k_base", 10_000_000)
        assert len(chain) == 1000 and chain[-1].id == ids[0]

    with_store(store_url(kind, tmp_path), body)


def test_shared_secret_is_kept_once(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)

    async def body(store: Store) -> tuple[bytes, bytes]:
        return await store.shared_secret(b"first"), await store.shared_secret(b"second")

    assert with_store(url, body) == (b"first", b"first")
    assert with_store(url, body) == (b"first", b"first")  # and across opens


def test_reopening_migrates_once_and_keeps_data(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    with_store(url, lambda s: s.add_turn(message("u1", None), message("r1", "u1")))
    assert with_store(url, lambda s: s.get("owner-a", "r1")) is not None


def test_retention_expires_old_messages(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    if kind == "redis":  # every key carries the retention as its TTL
        with_store(url, lambda s: s.add_turn(message("u1", None), message("r1", "u1")), retention_days=1.5 / 86400)
        time.sleep(2.0)
    else:
        old = time.time() - 40 * 86400
        with_store(url, lambda s: s.add_turn(message("u1", None, created=old), message("r1", "u1", created=old)))
        with_store(url, lambda s: s.add_turn(message("u2", None), message("r2", "u2")))
        assert with_store(url, lambda s: s.purge(time.time() - 30 * 86400)) == 2
        assert with_store(url, lambda s: s.get("owner-a", "r2")) is not None
    assert with_store(url, lambda s: s.get("owner-a", "r1")) is None


def test_a_store_that_goes_away_is_unavailable_then_recovers(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path
) -> None:
    proxy = store_proxy
    url = store_url(network_kind, tmp_path, port=proxy.port)

    async def body(store: Store) -> None:
        await store.add_turn(message("u1", None), message("r1", "u1"))
        proxy.stop()
        for operation in (
            store.ping(),
            store.get("owner-a", "r1"),
            store.chain("owner-a", "r1", "cl100k_base", 100),
            store.add_turn(message("u2", "r1"), message("r2", "u2")),
        ):
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(operation, 15)
        proxy.start()
        for _ in range(50):  # the same store object recovers: no restart
            try:
                await store.ping()
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        assert (await store.get("owner-a", "r1")) is not None
        await store.add_turn(message("u3", "r1"), message("r3", "u3"))

    with_store(url, body)


def test_store_down_at_start_is_picked_up_later(network_kind: str, tmp_path: Path) -> None:
    proxy = TCPProxy(REDIS_PORT if network_kind == "redis" else POSTGRES_PORT)  # not started yet
    url = store_url(network_kind, tmp_path, port=proxy.port)

    async def body() -> Any:
        store = open_store(url, 30)
        with pytest.raises(StoreUnavailable):
            await store.open()
        proxy.start()
        try:
            await store.ping()
            await store.add_turn(message("u1", None), message("r1", "u1"))
            return await store.get("owner-a", "r1")
        finally:
            await store.close()
            proxy.stop()

    assert run(body()) is not None


def test_sqlite_write_after_close_fails_instead_of_hanging(tmp_path: Path) -> None:
    async def body() -> None:
        store = open_store(store_url("sqlite", tmp_path), 30)
        await store.open()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.add_turn(message("u1", None), message("r1", "u1")), 2)

    run(body())
