"""Conversations in PostgreSQL, shared by every instance that names the same database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from ..errors import StoreUnavailable
from .base import DuplicateMessage, Store, StoredMessage
from .sql import COLUMNS, MIGRATIONS, MIGRATIONS_TABLE, chain_query

# Both messages of a turn in one statement: atomic, and one round trip.
_INSERT_TURN = (
    f"INSERT INTO messages ({COLUMNS}) VALUES "
    "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11), ($12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22)"
)
_MIGRATION_LOCK = 7002_0001  # advisory lock id: one instance migrates at a time
# What "the store cannot answer" looks like from asyncpg.
_DOWN = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,  # the connection failed or is gone
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, crashed, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # includes a connection that was closed under us
    asyncpg.exceptions.InternalClientError,  # a connection left in a broken state as the server went
)


def _row(record: Any) -> StoredMessage:
    return StoredMessage(*record)


def _params(m: StoredMessage) -> tuple[Any, ...]:
    return (
        m.id, m.parent_id, m.conversation_id, m.owner, m.mode, m.role, m.text,
        m.tokens_cl100k, m.tokens_o200k, m.incomplete, m.created_at,
    )  # fmt: skip


class PostgresStore(Store):
    kind = "postgresql"

    def __init__(self, url: str):
        self.url = url.replace("postgres://", "postgresql://", 1)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._queries = {enc: chain_query(enc, lambda n: f"${n}") for enc in ("cl100k_base", "o200k_base")}

    async def open(self) -> None:
        await self._ready()

    async def _ready(self) -> asyncpg.Pool:
        """The pool, created (and the schema migrated) on first use, so a store that was down at
        start-up is picked up as soon as it answers."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                try:
                    pool = await asyncpg.create_pool(self.url, min_size=0, max_size=16, timeout=3, command_timeout=10)
                    async with pool.acquire() as conn, conn.transaction():
                        await self._migrate(conn)
                except (*_DOWN, asyncpg.PostgresError) as exc:
                    raise StoreUnavailable() from exc
                self._pool = pool
        return self._pool

    @staticmethod
    async def _migrate(conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(MIGRATIONS_TABLE)
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, time.time())

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        pool = await self._ready()
        try:
            return list(await pool.fetch(query, *args))
        except _DOWN as exc:
            raise StoreUnavailable() from exc

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def shared_secret(self, candidate: bytes) -> bytes:
        rows = await self._fetch(
            """WITH ins AS (INSERT INTO meta (key, value) VALUES ('hmac_key', $1)
                            ON CONFLICT (key) DO NOTHING RETURNING value)
               SELECT value FROM ins UNION ALL SELECT value FROM meta WHERE key = 'hmac_key'""",
            candidate.hex(),
        )
        return bytes.fromhex(rows[0][0])

    async def add_turn(self, user: StoredMessage, reply: StoredMessage) -> None:
        pool = await self._ready()
        try:
            await pool.execute(_INSERT_TURN, *_params(user), *_params(reply))
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateMessage(str(exc)) from exc
        except _DOWN as exc:
            raise StoreUnavailable() from exc

    async def get(self, owner: str, message_id: str) -> StoredMessage | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM messages WHERE id = $1 AND owner = $2", message_id, owner)
        return _row(rows[0]) if rows else None

    async def chain(self, owner: str, message_id: str, encoding: str, budget: int) -> list[StoredMessage]:
        return [_row(r) for r in await self._fetch(self._queries[encoding], message_id, owner, budget)]

    async def purge(self, before: float) -> int:
        pool = await self._ready()
        try:
            status = await pool.execute("DELETE FROM messages WHERE created_at < $1", before)
        except _DOWN as exc:
            raise StoreUnavailable() from exc
        return int(status.split()[-1])
