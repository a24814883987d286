"""Conversations in an SQLite file: the default store, for one machine.

Queries run on the event loop thread: each is a few tens of microseconds against a local file,
cheaper than a hop to a worker thread. WAL mode with ``synchronous=NORMAL`` makes a commit survive
the process being killed (the WAL is written before the commit returns); only a power cut may lose
the last commits, which ``CHATGPT_SERVER_STORE_URL=sqlite:///path?synchronous=full`` also covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import StoreUnavailable
from .base import DuplicateMessage, Store, StoredMessage
from .sql import COLUMNS, MIGRATIONS, MIGRATIONS_TABLE, chain_query

CHECKPOINT_EVERY_S = 0.5
WAL_LIMIT_BYTES = 64 * 1024 * 1024
_INSERT = f"INSERT INTO messages ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"


def _row(values: tuple[Any, ...]) -> StoredMessage:
    id_, parent, conversation, owner, mode, role, text, cl100k, o200k, incomplete, created = values
    return StoredMessage(id_, parent, conversation, owner, mode, role, text, cl100k, o200k, bool(incomplete), created)


def _params(m: StoredMessage) -> tuple[Any, ...]:
    return (
        m.id, m.parent_id, m.conversation_id, m.owner, m.mode, m.role, m.text,
        m.tokens_cl100k, m.tokens_o200k, int(m.incomplete), m.created_at,
    )  # fmt: skip


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, url: str):
        # sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy spells them
        if not url.startswith("sqlite:///"):
            raise ValueError("an SQLite store URL looks like sqlite:///path/to/file.db")
        parts = urlsplit(url)
        self.path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        self.synchronous = parse_qs(parts.query).get("synchronous", ["normal"])[0].upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be normal, full or extra")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[StoredMessage, StoredMessage, asyncio.Future[None]]] = []
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._queries = {enc: chain_query(enc, lambda n: f"?{n}") for enc in ("cl100k_base", "o200k_base")}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable()
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            # Checkpoints copy the WAL into the database and fsync it: milliseconds that would stall
            # every request if they ran on the event loop. A thread of ours runs them instead.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._migrate(db)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(detail=str(exc)) from exc
        self._db = db
        self._stop.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_forever, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_forever(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                with contextlib.suppress(sqlite3.Error):
                    # PASSIVE never blocks writers; RESTART once the WAL grows large, so it cannot grow forever.
                    mode = "RESTART" if self._wal_size() > WAL_LIMIT_BYTES else "PASSIVE"
                    db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            db.close()

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(f"{self.path}-wal")
        except OSError:
            return 0

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            db.execute(MIGRATIONS_TABLE)
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        try:
            self.db.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc

    async def shared_secret(self, candidate: bytes) -> bytes:
        try:
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('hmac_key', ?) ON CONFLICT DO NOTHING",
                (candidate.hex(),),
            )
            row = self.db.execute("SELECT value FROM meta WHERE key = 'hmac_key'").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc
        return bytes.fromhex(row[0])

    async def add_turn(self, user: StoredMessage, reply: StoredMessage) -> None:
        """Group commit: the turns that arrive in one pass of the event loop share a transaction
        (one WAL append instead of one per turn), and each caller resumes only after the commit."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((user, reply, done))
        if len(self._pending) == 1:
            loop.call_soon(self._commit_pending)
        await done

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, []
        error = self._write([row for user, reply, _ in batch for row in (_params(user), _params(reply))])
        if isinstance(error, DuplicateMessage):
            # Some turn repeats a stored id: write the turns one by one so only that one fails.
            outcomes = [self._write([_params(user), _params(reply)]) for user, reply, _ in batch]
        else:
            outcomes = [error] * len(batch)
        for (_, _, done), outcome in zip(batch, outcomes, strict=True):
            if done.done():  # the caller was cancelled
                continue
            if outcome is None:
                done.set_result(None)
            else:
                done.set_exception(outcome)

    def _write(self, rows: list[tuple[Any, ...]]) -> Exception | None:
        """Insert in one transaction; the error a caller should see, if any. Never raises: it runs
        as a loop callback, where an escaping exception would leave every caller waiting forever."""
        try:
            db = self.db
            with db:  # one transaction: all rows or none
                db.execute("BEGIN")
                db.executemany(_INSERT, rows)
        except sqlite3.IntegrityError as exc:
            return DuplicateMessage(str(exc))
        except (sqlite3.Error, StoreUnavailable) as exc:
            error = StoreUnavailable()
            error.__cause__ = exc
            return error
        return None

    async def get(self, owner: str, message_id: str) -> StoredMessage | None:
        try:
            row = self.db.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id = ? AND owner = ?", (message_id, owner)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc
        return _row(row) if row else None

    async def chain(self, owner: str, message_id: str, encoding: str, budget: int) -> list[StoredMessage]:
        try:
            rows = self.db.execute(self._queries[encoding], (message_id, owner, budget)).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc
        return [_row(r) for r in rows]

    async def purge(self, before: float) -> int:
        try:
            with self.db:
                self.db.execute("BEGIN")
                cursor = self.db.execute("DELETE FROM messages WHERE created_at < ?", (before,))
        except sqlite3.Error as exc:
            raise StoreUnavailable() from exc
        return cursor.rowcount
