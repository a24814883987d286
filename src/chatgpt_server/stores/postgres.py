"""Conversations in PostgreSQL, shared by every instance that names the same database.

Every operation is one statement, one round trip (a turn included: its items and records are written
by one statement with data-modifying CTEs), bounded by the store timeout. A connection found dead
(after a server restart) is replaced and the operation retried once: reads and the turn write, which
is idempotent, are safe to retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson

from ..errors import StoreUnavailable
from ..settings import mask_url
from .base import (
    LEASE_LOST,
    PURGE_BATCH,
    SHORT_LIVED_S,
    HistoryRow,
    OnePerPass,
    Record,
    Store,
    StoredItem,
    TurnWrite,
    settle,
)
from .pg_pool import Connection, Conns
from .sql import (
    ITEM_COLUMNS,
    MIGRATIONS_TABLE,
    PURGE_ITEMS,
    PURGE_PROBE,
    PURGE_RANGE,
    PURGE_RECORDS,
    RECORD_COLUMNS,
    V1_INSERT_COLUMNS,
    V1_SELECT,
    convert_v1,
    history_query,
    item_query,
    migrations,
    path_ids_query,
    purge_cut,
    response_item_query,
    tip_off_deleted,
)
from .sqlite import item_from_row, record_from_row

_TIP_OFF_DELETED = tip_off_deleted("$")

T = TypeVar("T")
_MIGRATION_LOCK = 7002_0001  # advisory lock id: one instance migrates at a time
# What "the connection is gone" looks like from asyncpg: worth one retry on a fresh connection.
_GONE = (
    OSError,
    asyncpg.PostgresConnectionError,  # the connection failed or is gone
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, crashed, cannot connect now
    asyncpg.InterfaceError,  # includes a connection that was closed under us
    asyncpg.exceptions.InternalClientError,  # a connection left in a broken state as the server went
)
_DOWN = (*_GONE, asyncio.TimeoutError, asyncpg.exceptions.TooManyConnectionsError, asyncpg.PostgresError)

_ADD_TURN = """
WITH par AS (
    SELECT branch, before + cost AS e FROM items WHERE id = $1 AND owner = $2
), pos AS (
    SELECT CASE WHEN $3::boolean OR NOT EXISTS (SELECT 1 FROM par)
                  OR EXISTS (SELECT 1 FROM items i, par WHERE i.branch = par.branch AND i.before = par.e)
                THEN $4::text ELSE (SELECT branch FROM par) END AS branch,
           COALESCE((SELECT e FROM par), 0) AS e
), resp AS (
    INSERT INTO records (kind, id, owner, body, tip, created_at, updated_at, version, gen)
    SELECT 'response', $10::text, $2, $11::text, $12::text, $9, $9, 1, 0 WHERE $10::text IS NOT NULL
    ON CONFLICT DO NOTHING
), made AS (  -- the statement's snapshot: conv below does not see a record made here, only one before
    INSERT INTO records (kind, id, owner, body, tip, created_at, updated_at, version, gen)
    SELECT 'conversation', $5, $2, '{"metadata":{}}', CASE WHEN $24::boolean THEN $1::text ELSE $12::text END,
           $9, $9, 1, 0 WHERE $25::boolean
    ON CONFLICT DO NOTHING
), conv AS (
    UPDATE records SET tip = $12::text, updated_at = $9, version = version + 1
    WHERE kind = 'conversation' AND id = $5 AND NOT $24::boolean
      AND ($13::boolean OR tip IS NOT DISTINCT FROM $1::text)
)
INSERT INTO items (id, owner, conversation_id, parent_id, branch, before, cost, enc, kind, role, text, extra,
                   chat, status, origin, response_id, created_at)
SELECT v.id, $2, $5, v.parent, pos.branch, pos.e + v.off, v.cost, $6, v.kind, v.role, v.text, v.extra,
       v.chat, v.status, $7, $8, $9
FROM pos, unnest($14::text[], $15::text[], $16::bigint[], $17::int[], $18::text[], $19::text[], $20::text[],
                 $21::text[], $22::bytea[], $23::text[]) AS v(id, parent, off, cost, kind, role, text, extra, chat,
                                                               status)
ON CONFLICT (id) DO NOTHING
"""


NUL = "\x00"


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL: it is kept as U+FFFD in the shown text (the item's exact chat
    JSON, which prompts are built from, keeps it escaped)."""
    return text.replace(NUL, "\ufffd") if NUL in text else text


# The conversation's tip (locked until the turn is written), if it is an item of the caller's in it.
_LOCK_LEASE = "SELECT body FROM records WHERE kind = 'lease' AND id = $1 FOR SHARE"
_LOCK_TIP = """
SELECT r.tip FROM records r
WHERE r.kind = 'conversation' AND r.id = $1
  AND EXISTS (SELECT 1 FROM items i WHERE i.id = r.tip AND i.owner = $2 AND i.conversation_id = $1)
FOR UPDATE
"""


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _execute_turn(conn: Connection, args: tuple[Any, ...]) -> None:
    await conn.execute(_ADD_TURN, *args)


async def _outcome(work: Awaitable[None]) -> Exception | None:
    try:
        await work
    except Exception as exc:
        return exc
    return None


async def _on(pool: Conns, operation: Callable[[Connection], Awaitable[T]]) -> T:
    """``operation`` on a connection of ``pool``; the connection goes back unless it may be broken."""
    conn = await pool.acquire()
    healthy = False
    try:
        result = await operation(conn)
        healthy = True
        return result
    except asyncpg.PostgresError:  # the server refused a statement: the connection itself is fine
        healthy = not conn.is_in_transaction()
        raise
    finally:
        pool.release(conn, healthy)


def describe(exc: BaseException, url: str) -> str:
    """Why the store failed, for the log: the error class and message, credentials masked."""
    text = str(exc) or type(exc).__name__
    for secret in (asyncpg_password(url),):
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text} ({mask_url(url)})"


def asyncpg_password(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


class PostgresStore(Store):
    kind = "postgresql"

    def __init__(self, url: str, timeout_s: float = 2.0):
        self.url = url.replace("postgres://", "postgresql://", 1)
        self.timeout_s = timeout_s
        self._pool: Conns | None = None
        self._connecting: asyncio.Future[Conns] | None = None
        self._turns: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []  # waiting for the next group write
        self._writing: set[asyncio.Future[Any]] = set()
        # The simple protocol: least work on both sides.
        self._ping = OnePerPass(lambda: self._call(lambda conn: conn.execute("SELECT 1")), self._writing)
        self._history = history_query(lambda n: f"${n}", "LEAST")
        self._path_ids = path_ids_query(lambda n: f"${n}")
        self._item = item_query(lambda n: f"${n}")
        self._response_item = response_item_query(lambda n: f"${n}")

    async def open(self) -> None:
        await self._connection_attempt()  # at start-up the whole attempt (a migration may take a while)

    async def _ready(self) -> Conns:
        """The pool, created (and the schema migrated) on first use, so a store that was down at
        start-up is picked up as soon as it answers. One attempt at a time runs in the background;
        a request waits for it at most the store timeout, never behind the attempts of others."""
        if self._pool is not None:
            return self._pool
        try:
            return await asyncio.wait_for(asyncio.shield(self._connection_attempt()), self.timeout_s)
        except TimeoutError as exc:
            raise StoreUnavailable(reason=f"no connection within {self.timeout_s} s ({mask_url(self.url)})") from exc

    def _connection_attempt(self) -> asyncio.Future[Conns]:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_swallow)
        return self._connecting

    async def _connect(self) -> Conns:
        # Operations are timed by ``_within``, not by asyncpg (no timer per query). The server ends a
        # statement shortly after we stop waiting for it, so one we gave up on (its connection closed
        # under it) does not run on, holding locks and a backend.
        limit_ms = str(int(self.timeout_s * 1000) + 500)
        settings = {
            "statement_timeout": limit_ms,
            "lock_timeout": limit_ms,
            "idle_in_transaction_session_timeout": "60000",
        }
        pool = Conns(lambda: asyncpg.connect(self.url, timeout=self.timeout_s, server_settings=settings),
                     max_size=16, idle_s=60)  # fmt: skip
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(self.timeout_s * 3, 5)):
                conn = await pool.acquire()
                try:
                    async with conn.transaction():
                        await conn.execute("SET LOCAL statement_timeout = 0")  # a migration takes what it takes
                        await conn.execute("SET LOCAL lock_timeout = 0")
                        await self._migrate(conn)
                finally:
                    pool.release(conn, not conn.is_in_transaction())
        except TimeoutError as exc:  # a server that accepts connections and then says nothing
            await pool.close(0)
            waited = time.monotonic() - started
            raise StoreUnavailable(reason=f"no answer within {waited:.1f} s ({mask_url(self.url)})") from exc
        except (*_DOWN, ValueError) as exc:
            await pool.close(0)
            raise StoreUnavailable(reason=describe(exc, self.url)) from exc
        except BaseException:  # cancelled (the store is closing)
            await pool.close(0)
            raise
        self._pool = pool
        return pool

    @staticmethod
    async def _migrate(conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(MIGRATIONS_TABLE)
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, statements in migrations("postgresql"):
            if version in done:
                continue
            for statement in statements:
                await conn.execute(statement)
            if version == 2:
                rows = convert_v1([tuple(r) for r in await conn.fetch(V1_SELECT)])
                marks = ",".join(f"${n}" for n in range(1, 18))
                await conn.executemany(f"INSERT INTO items ({V1_INSERT_COLUMNS}) VALUES ({marks})", rows)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, time.time())

    async def close(self) -> None:
        if self._writing:  # turns being written finish first
            await asyncio.wait(list(self._writing), timeout=self.timeout_s * 2)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(self.timeout_s)

    async def _call(self, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``operation`` on a pooled connection within the store timeout; a dead connection is
        replaced and the operation retried once."""
        for attempt in (1, 2):
            pool = await self._ready()
            try:
                return await self._within(_on(pool, operation))
            except TimeoutError as exc:  # a store that hangs: waiting again would only double the wait
                raise StoreUnavailable(reason=f"no answer within {self.timeout_s} s ({mask_url(self.url)})") from exc
            except _GONE as exc:
                pool.expire()  # every pooled connection may be as dead as this one
                if attempt == 2:
                    raise StoreUnavailable(reason=describe(exc, self.url)) from exc
            except asyncpg.UniqueViolationError:
                raise
            except _DOWN as exc:
                raise StoreUnavailable(reason=describe(exc, self.url)) from exc
        raise AssertionError("unreachable")

    async def _within(self, operation: Awaitable[T]) -> T:
        """The operation's result within the store timeout. It runs as a task of its own, timed by
        one timer: at the deadline the caller is answered at once and the operation cancelled (its
        connection closed by ``_on``); a caller cancelled sooner leaves it to finish, or to meet the
        same deadline, so no operation outlives it. An inline ``asyncio.timeout`` measured no faster
        and made asyncpg log every connection closed under a cancelled query."""
        loop = asyncio.get_running_loop()
        task: asyncio.Future[T] = asyncio.ensure_future(operation)
        task.add_done_callback(_swallow)
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        def expire() -> None:
            # At the deadline the operation is cancelled, whether its caller still waits or was
            # itself cancelled meanwhile (a readiness probe's shorter limit): it never outlives it.
            wake()
            task.cancel()

        timer = loop.call_later(self.timeout_s, expire)
        task.add_done_callback(lambda _: timer.cancel())
        task.add_done_callback(wake)
        await waiter
        if not task.done() or task.cancelled():
            raise TimeoutError
        return task.result()

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return await self._call(lambda conn: conn.fetch(query, *args))

    async def ping(self) -> None:
        """One ``SELECT 1`` answers every check asked in the same pass of the event loop."""
        await self._ping()

    async def shared_secret(self, candidate: bytes, name: str = "hmac_key") -> bytes:
        rows = await self._fetch(
            """WITH ins AS (INSERT INTO meta (key, value) VALUES ($2, $1)
                            ON CONFLICT (key) DO NOTHING RETURNING value)
               SELECT value FROM ins UNION ALL SELECT value FROM meta WHERE key = $2""",
            candidate.hex(),
            name,
        )
        if not rows:  # another instance inserted it after this statement's snapshot: it is there now
            rows = await self._fetch("SELECT value FROM meta WHERE key = $1", name)
        return bytes.fromhex(rows[0][0])

    # -- items --------------------------------------------------------------------------------------
    async def add_turn(self, turn: TurnWrite) -> None:
        items = [n.item for n in turn.items]
        parents = [turn.parent_id, *[i.id for i in items[:-1]]]
        offsets, total = [], 0
        for new in turn.items:
            offsets.append(total)
            total += new.cost
        extras = [orjson.dumps(e).decode() if (e := i.extra()) else None for i in items]
        response = turn.response
        args = (
            turn.parent_id, turn.owner, False, items[0].id, turn.conversation_id, turn.enc, turn.origin,
            turn.response_id, turn.created_at,
            response.id if response else None, orjson.dumps(response.body).decode() if response else None,
            items[-1].id, bool(turn.conversation_tip),
            [i.id for i in items], parents, offsets, [n.cost for n in turn.items], [i.kind for i in items],
            [i.role for i in items], [_storable(i.text) for i in items], extras, [n.chat for n in turn.items],
            [i.status for i in items], turn.keep_tip, turn.opens_record,
        )  # fmt: skip
        if turn.conversation_tip:
            if not await self._single(args, lambda conn, a: self._add_after_tip(conn, turn, a)):
                raise StoreUnavailable("conversation_lease_lost", id=turn.conversation_id[:256], reason=LEASE_LOST)
            return
        # Group commit: the turns written in one pass of the event loop go in one round trip and one
        # transaction (asyncpg's executemany is atomic), a fraction of the server's work per turn.
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._turns.append((args, done))
        if len(self._turns) == 1:
            loop.call_soon(self._write_turns)
        await done

    def _write_turns(self) -> None:
        batch, self._turns = [entry for entry in self._turns if not entry[1].done()], []  # not the cancelled
        if batch:
            task = asyncio.ensure_future(self._write_batch(batch))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write_batch(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[None]]]) -> None:
        try:
            if len(batch) == 1:
                await self._single(batch[0][0], _execute_turn)
            else:
                try:
                    await self._call(lambda conn: conn.executemany(_ADD_TURN, [args for args, _ in batch]))
                except asyncpg.UniqueViolationError:  # a slot taken meanwhile: each on its own, as one would
                    for args, done in batch:
                        settle(done, await _outcome(self._single(args, _execute_turn)))
                    return
        except Exception as exc:  # each caller raises it
            for _, done in batch:
                settle(done, exc)
            return
        for _, done in batch:
            settle(done, None)

    async def _single(
        self, args: tuple[Any, ...], write: Callable[[Connection, tuple[Any, ...]], Awaitable[Any]]
    ) -> Any:
        try:
            return await self._call(lambda conn: write(conn, args))
        except asyncpg.UniqueViolationError:
            # Another turn took the parent's next slot between our read and write: fork instead.
            forced = (*args[:2], True, *args[3:])
            try:
                return await self._call(lambda conn: write(conn, forced))
            except asyncpg.UniqueViolationError as exc:
                raise StoreUnavailable(reason=describe(exc, self.url)) from exc

    @staticmethod
    async def _add_after_tip(conn: Connection, turn: TurnWrite, args: tuple[Any, ...]) -> bool:
        """A conversation's turn, after its tip as it is now: the tip is read under a row lock, and the
        turn written in the same transaction (by a later statement, which sees a turn another door
        committed while we waited for the lock)."""
        async with conn.transaction():
            if turn.lease is not None:  # a write sent before a partition may land after another took the lease
                held = await conn.fetchval(_LOCK_LEASE, turn.lease[0])  # shared: a takeover waits for this write
                if held is None or orjson.loads(held).get("lease") != turn.lease[1]:
                    return False  # raised by the caller: the connection is sound (nothing was written)
            tip = await conn.fetchval(_LOCK_TIP, turn.conversation_id, turn.owner)
            if tip is not None and tip != turn.parent_id:
                first_parents = [tip, *args[14][1:]]
                args = (tip, *args[1:14], first_parents, *args[15:])
            await conn.execute(_ADD_TURN, *args)
        return True

    async def get_item(self, owner: str, item_id: str) -> StoredItem | None:
        if NUL in item_id:  # no id of ours holds one (and PostgreSQL text cannot)
            return None
        rows = await self._fetch(self._item, item_id, owner)
        return item_from_row(rows[0]) if rows else None

    async def response_item(self, owner: str, response_id: str) -> StoredItem | None:
        if NUL in response_id:
            return None
        rows = await self._fetch(self._response_item, response_id, owner)
        return item_from_row(rows[0]) if rows else None

    async def get_items(self, owner: str, item_ids: list[str]) -> list[StoredItem]:
        item_ids = [i for i in item_ids if NUL not in i]
        rows = await self._fetch(f"SELECT {ITEM_COLUMNS} FROM items WHERE owner = $1 AND id = ANY($2)", owner, item_ids)
        found = {r[0]: item_from_row(r) for r in rows}
        return [found[i] for i in item_ids if i in found]

    async def history(self, owner: str, item_id: str, budget: int) -> list[HistoryRow]:
        if NUL in item_id:
            return []
        rows = await self._fetch(self._history, item_id, owner, budget)
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def path_ids(self, owner: str, item_id: str) -> list[str]:
        if NUL in item_id:
            return []
        return [r[0] for r in await self._fetch(self._path_ids, item_id, owner)]

    async def conversation_items(
        self, owner: str, conversation_id: str, after_seq: int | None, limit: int, descending: bool
    ) -> list[StoredItem]:
        if NUL in conversation_id:
            return []
        order, compare = ("DESC", "<") if descending else ("ASC", ">")
        bound = after_seq if after_seq is not None else (2**62 if descending else -1)
        rows = await self._fetch(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE conversation_id = $1 AND owner = $2 AND NOT deleted "
            f"AND seq {compare} $3 ORDER BY seq {order} LIMIT $4",
            conversation_id, owner, bound, limit,
        )  # fmt: skip
        return [item_from_row(r) for r in rows]

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        if NUL in conversation_id or NUL in item_id:
            return False
        rows = await self._fetch(
            """WITH del AS (UPDATE items SET deleted = TRUE
                            WHERE id = $1 AND owner = $2 AND conversation_id = $3 AND NOT deleted RETURNING id),
                    bump AS (UPDATE records SET gen = gen + 1, version = version + 1
                             WHERE kind = 'conversation' AND id = $3 AND EXISTS (SELECT 1 FROM del))
               SELECT count(*) FROM del""",
            item_id, owner, conversation_id,
        )  # fmt: skip
        if rows[0][0]:
            await self._call(lambda conn: conn.execute(_TIP_OFF_DELETED, conversation_id, item_id))
        return bool(rows[0][0])

    # -- records ------------------------------------------------------------------------------------
    async def put_record(self, record: Record, expect_version: int | None) -> bool:
        body = orjson.dumps(record.body).decode()
        if expect_version is None:
            status = await self._call(lambda conn: conn.execute(
                f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$9,$8) ON CONFLICT DO NOTHING",
                record.kind, record.id, record.owner, body, record.tip, record.created_at, record.updated_at,
                record.gen, record.version if record.version > 0 else 1,
            ))  # fmt: skip
        else:
            status = await self._call(lambda conn: conn.execute(
                "UPDATE records SET owner = $1, body = $2, tip = $3, updated_at = $4, gen = $5, version = $6 "
                "WHERE kind = $7 AND id = $8 AND version = $9",
                record.owner, body, record.tip, record.updated_at, record.gen, expect_version + 1, record.kind,
                record.id, expect_version,
            ))  # fmt: skip
        return str(status).split()[-1] == "1"

    async def get_record(self, kind: str, record_id: str) -> Record | None:
        if NUL in record_id:
            return None
        rows = await self._fetch(f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1 AND id = $2", kind, record_id)
        return record_from_row(rows[0]) if rows else None

    async def delete_record(self, kind: str, record_id: str, expect_version: int | None = None) -> bool:
        if NUL in record_id:
            return False
        status = await self._call(lambda conn: conn.execute(
            "DELETE FROM records WHERE kind = $1 AND id = $2 AND ($3::bigint IS NULL OR version = $3)",
            kind, record_id, expect_version))  # fmt: skip
        return str(status).split()[-1] == "1"

    async def list_records(
        self, kind: str, owner: str, after_id: str | None, limit: int, descending: bool
    ) -> list[Record]:
        order, compare = ("DESC", "<") if descending else ("ASC", ">")
        anchor = None
        if after_id is not None and NUL not in after_id:
            found = await self._fetch("SELECT created_at FROM records WHERE kind = $1 AND id = $2", kind, after_id)
            anchor = found[0][0] if found else None
        if anchor is None:
            rows = await self._fetch(
                f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1 AND owner = $2 "
                f"ORDER BY created_at {order}, id {order} LIMIT $3",
                kind, owner, limit,
            )  # fmt: skip
        else:
            rows = await self._fetch(
                f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = $1 AND owner = $2 "
                f"AND (created_at, id) {compare} ($3, $4) ORDER BY created_at {order}, id {order} LIMIT $5",
                kind, owner, anchor, after_id, limit,
            )  # fmt: skip
        return [record_from_row(r) for r in rows]

    async def purge(self, before: float) -> int:
        async def created(n: int) -> float | None:
            rows = await self._fetch(PURGE_PROBE.format(p="$1"), n)
            return float(rows[0][0]) if rows else None

        low, high = (await self._fetch(PURGE_RANGE))[0]
        cut = await purge_cut(created, int(low), int(high), before) if low is not None else -1

        async def deleting(sql: str, *params: Any) -> int:
            status = await self._call(lambda conn: conn.execute(sql, *params))
            return int(str(status).split()[-1])

        removed = 0
        start = int(low) if low is not None else 0
        while start <= cut:  # in batches, each its own short transaction
            end = min(start + PURGE_BATCH - 1, cut)
            removed += await deleting(PURGE_ITEMS.format(p="$"), start, end, before)
            start = end + 1
        return removed + await deleting(PURGE_RECORDS.format(p="$"), before, time.time() - SHORT_LIVED_S)
