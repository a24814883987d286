"""The Redis client under the Redis store (stores/resp.py), against the real Redis on 127.0.0.1 and,
for what a real server never does, a small fake one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from chatgpt_server.errors import StoreUnavailable
from chatgpt_server.settings import Settings
from chatgpt_server.stores import open_store
from chatgpt_server.stores.resp import Resp, RespError, Script

from .shared_stores import REDIS_PORT, RUN

URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def key(name: str) -> str:
    return f"{RUN}:resp:{uuid.uuid4().hex[:8]}:{name}"


def run(body: Callable[[Resp], Awaitable[Any]], url: str = URL, timeout: float = 2.0) -> Any:
    async def go() -> Any:
        client = Resp(url, timeout, 2.0)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(go())


def test_concurrent_callers_each_get_their_own_reply() -> None:
    """Hundreds of commands in flight on the one connection: every caller gets the reply to its own."""
    names = [key(str(i)) for i in range(400)]

    async def body(client: Resp) -> None:
        await asyncio.gather(*(client.call("SET", n, f"value of {n}") for n in names))
        got = await asyncio.gather(*(client.call("GET", n) for n in names))
        assert got == [f"value of {n}".encode() for n in names]
        many = await client.many([("GET", n) for n in reversed(names)])
        assert many == [f"value of {n}".encode() for n in reversed(names)]
        assert await client.call("DEL", *names) == len(names)

    run(body)


def test_an_error_reply_raises_and_the_connection_goes_on() -> None:
    name = key("string")

    async def body(client: Resp) -> None:
        await client.call("SET", name, "not a number")
        with pytest.raises(RespError, match="not an integer"):
            await client.call("INCR", name)
        with pytest.raises(RespError, match="WRONGTYPE"):
            await client.many([("GET", name), ("HGET", name, "f")])
        assert await client.call("GET", name) == b"not a number"
        await client.call("DEL", name)

    run(body)


def test_a_script_unknown_to_the_server_is_sent_once_then_by_digest() -> None:
    script = Script(f"-- {uuid.uuid4().hex}\nreturn tonumber(ARGV[1]) + 1")  # new text: never loaded before

    async def body(client: Resp) -> None:
        assert await client.call("SCRIPT", "EXISTS", script.sha) == [0]
        assert await client.run(script, [41]) == 42
        assert await client.call("SCRIPT", "EXISTS", script.sha) == [1]
        assert await client.run(script, [1]) == 2

    run(body)


def test_a_password_and_a_database_number_are_used_and_the_password_never_shown() -> None:
    user, password = f"{RUN}-resp-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    admin = redis.Redis(port=REDIS_PORT)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=[f"{RUN}*"], commands=["+@all"])
    name = key("in-db-5")
    try:
        good = f"redis://{user}:{password}@127.0.0.1:{REDIS_PORT}/5"
        run(lambda client: client.call("SET", name, "here"), good)
        assert redis.Redis(port=REDIS_PORT, db=5).get(name) == b"here"
        assert admin.get(name) is None  # not in database 0

        async def refused() -> str:
            store = open_store(f"redis://{user}:wrong-{password}@127.0.0.1:{REDIS_PORT}/5?prefix={RUN}:", 30)
            try:
                with pytest.raises(StoreUnavailable) as raised:
                    await store.open()
                return str(raised.value.reason)
            finally:
                await store.close()

        reason = asyncio.run(refused())
        assert "WRONGPASS" in reason and password not in reason, reason
    finally:
        redis.Redis(port=REDIS_PORT, db=5).delete(name)
        admin.acl_deluser(user)


class FakeRedis:
    """Answers every command with ``+OK``, and lets a test say what else to do: cut the connection
    after some commands, or add a reply nobody asked for."""

    def __init__(self) -> None:
        self.connections = 0
        self.cut_after: int | None = None
        self.extra = False
        self.silent = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        seen = 0
        try:
            while line := await reader.readline():
                if not line.startswith(b"*"):
                    continue
                for _ in range(int(line[1:])):  # the command's arguments: a length line, then the bytes
                    size = int((await reader.readline())[1:])
                    await reader.readexactly(size + 2)
                seen += 1
                if self.cut_after is not None and seen > self.cut_after:
                    self.cut_after = None
                    writer.close()
                    return
                if self.silent:
                    continue
                writer.write(b"+OK\r\n+SURPRISE\r\n" if self.extra else b"+OK\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass


def with_fake(body: Callable[[FakeRedis, Resp], Awaitable[None]], timeout: float = 2.0) -> None:
    async def go() -> None:
        fake = FakeRedis()
        client = Resp(await fake.start(), timeout, 2.0)
        try:
            await body(fake, client)
        finally:
            await client.close()

    asyncio.run(go())


def test_a_dropped_connection_is_reconnected_and_the_command_retried_once() -> None:
    async def body(fake: FakeRedis, client: Resp) -> None:
        assert await client.call("PING") == b"OK"
        fake.cut_after = 0  # the next command's connection is cut before it is answered
        assert await client.call("PING") == b"OK"  # retried on a new connection
        assert fake.connections == 2

    with_fake(body)


def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    async def body(fake: FakeRedis, client: Resp) -> None:
        fake.extra = True  # the answer and a surprise, in one write
        assert await client.call("PING") == b"OK"
        fake.extra = False
        assert await client.call("PING") == b"OK"
        assert fake.connections == 2  # a connection whose replies cannot be matched is not used again

    with_fake(body)


def test_a_silent_server_fails_every_waiting_command_within_the_timeout() -> None:
    async def body(fake: FakeRedis, client: Resp) -> None:
        await client.call("PING")
        fake.silent = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(client.call("PING") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert loop.time() - started < 0.3 + 0.3
        fake.silent = False
        assert await client.call("PING") == b"OK"  # a new connection

    with_fake(body, timeout=0.3)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0?prefix=a:&ssl_cert_reqs=none", "redis://127.0.0.1/db"])
def test_a_redis_url_with_what_the_client_does_not_take_is_a_settings_error(url: str) -> None:
    with pytest.raises(ValueError, match="Redis URL"):
        Settings(store_url=url)


@pytest.mark.parametrize("url", ["redis://:9f8e7d#Qq1@127.0.0.1:6379/0", "redis://default:abc?9f8e7d@127.0.0.1:6379"])
def test_a_redis_url_that_cannot_be_read_is_refused_by_the_client_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as direct:  # the settings' own check: tests/test_operations.py
        Resp(url, 1.0, 1.0)
    assert "9f8e7d" not in str(direct.value)
