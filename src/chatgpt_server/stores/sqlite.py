"""Conversations in an SQLite file: the default store, for one machine.

Queries run on the event loop thread: each is a few microseconds against a local file, cheaper than
a hop to a worker thread. WAL mode with ``synchronous=NORMAL`` makes a commit survive the process
being killed (the WAL is written before the commit returns); only a power cut may lose the last
commits, which ``CHATGPT_SERVER_STORE_URL=sqlite:///path?synchronous=full`` also covers. Several
worker processes may share the file: writes take SQLite's write lock (``BEGIN IMMEDIATE``), and one
of them (whichever holds a lock file) runs the checkpoints.

The file holds conversations and the instance secret: it is created ``0600``, and a directory we
create for it ``0700``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from ..core.items import Item
from ..errors import StoreUnavailable
from .base import PURGE_BATCH, SHORT_LIVED_S, HistoryRow, Record, Store, StoredItem, TurnWrite
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

_TIP_OFF_DELETED = tip_off_deleted("?")

# The WAL is checkpointed (copied into the database) by a thread of ours, every 0.2 s, PASSIVE: that
# never blocks a writer. Under steady load the WAL never empties by itself, so once it holds more than
# WAL_RESTART_BYTES a RESTART checkpoint lets it start over from its beginning. Its file is not
# truncated (journal_size_limit is above what it reaches): growing a file again after a truncation
# needs the file system's journal, which a checkpoint's fsync holds, and that stalled every write for
# milliseconds (p99 at 1 client: 16 ms with truncation, 1.8 ms without; measured, bench/RESULTS.md).
CHECKPOINT_EVERY_S = 0.2
WAL_RESTART_BYTES = 64 * 1024 * 1024
JOURNAL_SIZE_LIMIT = 128 * 1024 * 1024
CHECKPOINTER_BUSY_MS = 2
# A known id is ours, written before (the same turn again): nothing to do. The branch slot was looked
# up in the same transaction, so no other constraint can be what conflicts.
_INSERT_ITEM = (
    "INSERT INTO items (id, owner, conversation_id, parent_id, branch, before, cost, enc, kind, role, text, "
    "extra, chat, status, origin, response_id, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (id) DO NOTHING"
)
_INSERT_RECORD = f"INSERT INTO records ({RECORD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
# A turn moves its conversation's tip when it was asked for through ``conversation=`` (the flag), or
# when it continues from the tip through another door; either way the record's version changes, so
# an update that read the record before fails its compare-and-set instead of rewinding the tip.
_MOVE_TIP = (
    "UPDATE records SET tip = ?1, updated_at = ?2, version = version + 1 "
    "WHERE kind = 'conversation' AND id = ?3 AND (?4 OR tip IS ?5)"
)
_OPEN_RECORD = (
    f"INSERT INTO records ({RECORD_COLUMNS}) "
    "VALUES ('conversation', ?1, ?2, '{\"metadata\":{}}', ?3, ?4, ?4, 1, 0) ON CONFLICT DO NOTHING"
)
_KEEP_SECRET = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING"
_KEPT_SECRET = "SELECT value FROM meta WHERE key = ?"
# After a write failed for want of room, a write this large must pass before another reply is bought.
_ROOM_PROBE = (
    "INSERT INTO meta (key, value) VALUES ('room_probe', zeroblob(65536)) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
BUSY_RETRY_S = 0.0005  # under uvloop a timer below 1 ms is the loop's next pass (measured)
BUSY_WAIT_S = 0.001  # a check for the write lock polls more gently: nothing of the turn waits on the loop
READ_BUSY_TRIES = 50
OPEN_WAIT_S = 30.0  # at start-up: another process's migration, a backup holding the lock
OPEN_BUSY_MS = 5000
REOPEN_EVERY_S = 1.0
_BUSY = object()
T = TypeVar("T")
log = logging.getLogger("chatgpt_server")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo a failed transaction, keeping its error: SQLite has already rolled back after some
    (a full disk), and a second error would hide the first."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


# SQLite's unix VFS: every connection to a WAL database holds a shared lock on this byte of its -shm file
# (the "dead-man switch"), so an exclusive lock on it can be had only when no connection has the file.
SHM_DMS_BYTE = 128


def _same_file(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


class _Companions:
    """The -wal and -shm of the file this process opened, held open (read-only) for as long as it uses the
    file: while they are, their inodes cannot be reused, so what is at the path is known to be them or
    not. Closed only after every connection of this process to that file is (closing any descriptor of
    a file drops this process's POSIX locks on it, SQLite's included)."""

    def __init__(self, path: Path):
        self.path = path
        self.fds: dict[str, int] = {}
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.fds[suffix] = os.open(f"{path}{suffix}", os.O_RDONLY)

    def at_path(self, suffix: str) -> bool:
        """Whether the path's -wal or -shm is still the one this process opened."""
        fd = self.fds.get(suffix)
        if fd is None:
            return False
        try:
            here, ours = os.stat(f"{self.path}{suffix}"), os.fstat(fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    def clear(self) -> bool:
        """Remove them from the path once no process has them open; False while one does. SQLite keeps a
        removed or replaced file's -wal and -shm (it cannot checkpoint into a file gone from its path) and
        pairs a file with the WAL at its path by name: a new file opened with them would read the old
        one's pages as its own. Ones at the path since are another file's: never touched."""
        old_wal, old_shm = self.at_path("-wal"), self.at_path("-shm")
        if old_wal and not old_shm:
            return False  # its -shm gone: nothing tells whether a process still has the WAL open
        if old_shm:
            try:
                fd = os.open(f"{self.path}-shm", os.O_RDWR)
            except OSError:
                return False
            try:
                if not _same_file(fd, self.fds["-shm"]):
                    return False  # replaced between the look and the open: look again later
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_BYTE)  # raises while a connection holds it
                # Removed while the lock is ours, so no process opens the old pair meanwhile.
                if old_wal:
                    Path(f"{self.path}-wal").unlink(missing_ok=True)
                Path(f"{self.path}-shm").unlink(missing_ok=True)
            except OSError:
                return False
            finally:
                os.close(fd)
        self.release()
        return True

    def release(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _unavailable(exc: BaseException, where: str = "") -> StoreUnavailable:
    error = StoreUnavailable(reason=f"{type(exc).__name__}: {exc}{where}")
    error.__cause__ = exc
    return error


def item_from_row(row: tuple[Any, ...] | Any) -> StoredItem:
    """A row in ITEM_COLUMNS order (plus, optionally, the conversation's gen)."""
    (id_, owner, conversation, parent, _branch, _before, cost, enc, kind, role, text, extra, _chat, status,
     origin, response_id, created, deleted, seq) = tuple(row[:19])  # fmt: skip
    item = Item.from_row(id_, kind, role, text, orjson.loads(extra) if extra else None, status)
    gen = int(row[19]) if len(row) > 19 else 0
    return StoredItem(item, owner, conversation, parent, enc, int(cost), origin, response_id, float(created),
                      int(seq), bool(deleted), gen)  # fmt: skip


def record_from_row(row: tuple[Any, ...] | Any) -> Record:
    kind, id_, owner, body, tip, created, updated, version, gen = tuple(row)
    return Record(kind, id_, owner, orjson.loads(body), tip, float(created), float(updated), int(version), int(gen))


def record_params(r: Record, version: int) -> tuple[Any, ...]:
    return (r.kind, r.id, r.owner, orjson.dumps(r.body).decode(), r.tip, r.created_at, r.updated_at, version, r.gen)


# The conversation's tip, if it is an item of the caller's in that conversation.
_CURRENT_TIP = (
    "SELECT r.tip FROM records r JOIN items i ON i.id = r.tip "
    "WHERE r.kind = 'conversation' AND r.id = ?1 AND i.owner = ?2 AND i.conversation_id = ?1"
)


def turn_rows(turn: TurnWrite, branch: str, end: int) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    parent, before = turn.parent_id, end
    for new in turn.items:
        item = new.item
        extra = item.extra()
        rows.append((
            item.id, turn.owner, turn.conversation_id, parent, branch, before, new.cost, turn.enc, item.kind,
            item.role, item.text, orjson.dumps(extra).decode() if extra else None, new.chat, item.status,
            turn.origin, turn.response_id, turn.created_at,
        ))  # fmt: skip
        parent, before = item.id, before + new.cost
    return rows


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, url: str, timeout_s: float = 2.0):
        # sqlite:///relative/path or sqlite:////absolute/path, as SQLAlchemy spells them
        if not url.startswith("sqlite:///"):
            raise ValueError("an SQLite store URL looks like sqlite:///path/to/file.db")
        parts = urlsplit(url)
        self.path = Path(url[len("sqlite:///") :].split("?", 1)[0])
        self.synchronous = parse_qs(parts.query).get("synchronous", ["normal"])[0].upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be normal, full or extra")
        self._db: sqlite3.Connection | None = None
        self.timeout_s = timeout_s
        self._pending: list[tuple[TurnWrite, asyncio.Future[None], float]] = []
        self._scheduled = False
        self._free_this_pass = False  # the write lock was found free in this pass of the event loop
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._opened_as: tuple[int, int] | None = None
        self._moved = False  # the path no longer names the file we have open
        self._failing: str | None = None  # a write failed for want of room (or an I/O error)
        self._secrets: dict[str, bytes] = {}  # what shared_secret gave out
        self._wanted = False  # open() was called and close() was not: a request may open it again
        self._ours: _Companions | None = None  # the open file's -wal and -shm, held (see _Companions)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the store serves (the watcher calls it)
        self._leftovers: _Companions | None = None  # a replaced file's, still held by another process
        self._next_try = 0.0
        self._why_closed = "the SQLite store is closed"
        self._history = history_query(lambda n: f"?{n}", "min")
        self._path_ids = path_ids_query(lambda n: f"?{n}")
        self._item = item_query(lambda n: f"?{n}")
        self._response_item = response_item_query(lambda n: f"?{n}")

    @property
    def db(self) -> sqlite3.Connection:
        if self._moved:  # looked at here, not called: this runs for every statement
            self._notice_moved()
        if self._db is None:
            self._reopen()
        if self._db is None:
            raise StoreUnavailable(reason=self._why_closed)
        return self._db

    def _reopen(self) -> None:
        """A store that could not be opened at start-up (a lock held past the wait, a directory not
        yet writable) is tried again by the requests that need it, at most once a second, without
        waiting on a lock: the event loop must not stall."""
        now = time.monotonic()
        if not self._wanted or now < self._next_try:
            return
        self._next_try = now + REOPEN_EVERY_S
        if self._leftovers is not None:  # a replaced file's WAL, which another process still had open
            if not self._leftovers.clear():
                return
            self._leftovers = None
            log.warning("store: the other process let go of the replaced database file; %s opened again", self.path)
        db: sqlite3.Connection | None = None
        try:
            db = self._connect(wait_ms=0)
            self._keep_secrets(db)
            self._started(db)
        except (StoreUnavailable, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            self._why_closed = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"

    def _create_private(self) -> None:
        """The directory (if we make it) 0700, the file 0600, before SQLite opens it."""
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)

    async def open(self) -> None:
        """Open (creating and migrating as needed). Worker processes starting together on a new file
        race to switch it to WAL and to migrate it; SQLite refuses the loser at once in some of those
        moments (it would deadlock), without its busy handler: the whole open is tried again."""
        self._wanted = True
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + OPEN_WAIT_S
        while True:
            try:
                self._started(self._connect(wait_ms=OPEN_BUSY_MS))
                return
            except StoreUnavailable as exc:
                self._why_closed = exc.reason or self._why_closed
                if not isinstance(exc.__cause__, sqlite3.OperationalError) or not _is_busy(exc.__cause__):
                    raise
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(random.uniform(0.005, 0.05))  # apart, so the same two do not meet again

    def _connect(self, wait_ms: int) -> sqlite3.Connection:
        db: sqlite3.Connection | None = None
        try:
            self._create_private()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=wait_ms / 1000)
            db.execute(f"PRAGMA busy_timeout={wait_ms}")  # migrations wait for another process's
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            # Checkpoints copy the WAL into the database and fsync it: milliseconds that would stall
            # every request if they ran on the event loop. A thread of ours runs them instead.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._migrate(db)
            # From now on SQLite never waits on the event loop: a write that finds the lock taken (by
            # another worker process) is retried a moment later, a read a few times at once.
            db.execute("PRAGMA busy_timeout=0")
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise _unavailable(exc, f" ({self.path})") from exc
        return db

    def _started(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._opened_as = _identity(self.path)
        self._ours = _Companions(self.path)  # none held before: _let_go and close hand theirs on or release them
        self._moved = False
        self._stop = threading.Event()  # its own: a thread of an earlier open may still be stopping
        self._checkpointer = threading.Thread(
            target=self._watch_forever, args=(self._stop,), name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _watch_forever(self, stop: threading.Event) -> None:
        """Every CHECKPOINT_EVERY_S: see that the path still names the file we opened (an operator's
        ``rm`` or a restored backup would leave us writing replies into a file nobody will read), and
        checkpoint if this process holds the lock file: worker processes share the file, and one
        checkpointer is enough."""
        with os.fdopen(os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o600), "r+b") as lock:
            db: sqlite3.Connection | None = None
            page = 4096
            frames = 0  # how much the WAL holds since it last started over (not its file's size)
            next_try = 0.0
            try:
                while not stop.wait(CHECKPOINT_EVERY_S):
                    if _identity(self.path) != self._opened_as:
                        if db is not None:  # first: the loop looks for other users of the old file's WAL
                            db.close()
                            db = None
                        self._moved = True  # the event loop closes and opens the path again
                        loop = self._loop
                        if loop is not None:
                            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                                loop.call_soon_threadsafe(self._notice_moved)
                        return
                    if db is None and time.monotonic() >= next_try:
                        next_try = time.monotonic() + 1.0
                        with contextlib.suppress(OSError, sqlite3.Error):
                            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            # Never creates the file (mode=rw): one removed meanwhile is for the loop to open again.
                            uri = self.path.resolve().as_uri() + "?mode=rw"
                            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                            # A RESTART holds the write lock while it waits for readers: it gives up
                            # within 2 ms (and tries again at the next turn) rather than stall the writers.
                            db.execute(f"PRAGMA busy_timeout={CHECKPOINTER_BUSY_MS}")
                            page = int(db.execute("PRAGMA page_size").fetchone()[0])
                    if db is not None:
                        with contextlib.suppress(sqlite3.Error):
                            mode = "RESTART" if frames * page > WAL_RESTART_BYTES else "PASSIVE"
                            frames = int(db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[1])
            finally:
                if db is not None:
                    db.close()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            db.execute(MIGRATIONS_TABLE)
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, name, statements in migrations("sqlite"):
                if version in done:
                    continue
                for statement in statements:
                    db.execute(statement)
                if version == 2:
                    rows = convert_v1(db.execute(V1_SELECT).fetchall())
                    marks = ",".join("?" * 17)
                    db.executemany(f"INSERT INTO items ({V1_INSERT_COLUMNS}) VALUES ({marks})", rows)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        self._wanted = False
        self._why_closed = "the SQLite store is closed"
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None
        for held in (self._ours, self._leftovers):  # after every connection: closing them drops locks
            if held is not None:
                held.release()
        self._ours = self._leftovers = None

    def _notice_moved(self) -> None:
        """The watcher saw the path name another file: let go of the old one (the watcher calls this at
        once too, so an idle worker holding it does not keep the others from opening the new one)."""
        if self._moved and self._wanted:
            self._let_go(f"the database file {self.path} was removed or replaced; opened again")

    def _let_go(self, why: str) -> None:
        """Close the connection (the file it holds is not the path's any more) and open the path
        again at once; if that fails, the next requests try again. Not while another process (a worker,
        the sqlite3 shell) still has the old file open: SQLite pairs a file with the WAL and shared
        memory at its path by name, and a new file would read the old one's pages as its own."""
        self._stop.set()
        self._checkpointer = None  # it returns by itself within CHECKPOINT_EVERY_S
        self._moved = False
        if self._db is not None:
            self._db.close()
            self._db = None
        self._next_try = 0.0
        # SQLite keeps a removed file's -wal and -shm (it cannot checkpoint into a file gone from its path).
        leftovers, self._ours = self._ours, None
        if leftovers is not None and not leftovers.clear():
            self._leftovers = leftovers
            self._why_closed = (f"the database file {self.path} was removed or replaced while another process "
                                "has it open: it is opened again once that process lets go of it (restart "
                                "that process, or every worker)")  # fmt: skip
            log.error("store: %s", self._why_closed)
            return
        log.warning("store: %s", why)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        for attempt in range(READ_BUSY_TRIES):
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == READ_BUSY_TRIES - 1:
                    raise StoreUnavailable(reason=f"{type(exc).__name__}: {exc}") from exc
                time.sleep(0.0002)  # a reader meets a lock only in a rare moment of a checkpoint
            except sqlite3.Error as exc:
                raise StoreUnavailable(reason=f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _write_one(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a write transaction. Another process holding the write lock is waited
        for off the event loop (a short sleep, then again) until the store timeout."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                db = self.db
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                    db.execute("COMMIT")
                    return result
                except BaseException:
                    _roll_back(db)
                    raise
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    self._note_failure(exc)
                    raise _unavailable(exc) from exc
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            await asyncio.sleep(BUSY_RETRY_S)

    async def ping(self) -> None:
        await self.writable()

    async def writable(self) -> None:
        """The write lock is free now: taken and let go at once (a few µs). Another process holding it
        (a backup, the sqlite3 shell) is waited for as a turn's write would be, up to the store timeout,
        so no reply is bought that could not be stored. Reads alone would pass: WAL lets them. One
        look answers every turn that asks in the same pass of the event loop (they arrive together)."""
        if self._free_this_pass:
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                db = self.db
                db.execute("BEGIN IMMEDIATE")
                if self._failing is None:
                    db.execute("ROLLBACK")
                else:
                    self._probe_room(db)
                self._free_this_pass = True
                asyncio.get_running_loop().call_soon(self._next_pass)
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise _unavailable(exc) from exc
            except sqlite3.Error as exc:
                raise _unavailable(exc) from exc
            if time.monotonic() > deadline:
                raise StoreUnavailable(reason="the database stayed locked by another process")
            await asyncio.sleep(BUSY_WAIT_S)

    def _next_pass(self) -> None:
        self._free_this_pass = False

    def _note_failure(self, exc: sqlite3.Error) -> None:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            self._failing = f"{type(exc).__name__}: {exc}"

    def _probe_room(self, db: sqlite3.Connection) -> None:
        """A write failed for want of room (or an I/O error): until a write of a turn's size passes,
        no reply is bought (it would be paid for and thrown away), and /readyz says so."""
        try:
            db.execute(_ROOM_PROBE)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _roll_back(db)
            raise StoreUnavailable(reason=f"{self._failing}; a write of a turn's size still fails ({exc})") from exc
        self._failing = None

    async def shared_secret(self, candidate: bytes, name: str = "hmac_key") -> bytes:
        await self._write_one(lambda db: db.execute(_KEEP_SECRET, (name, candidate.hex())))
        kept = bytes.fromhex(self._run(_KEPT_SECRET, (name,))[0][0])
        self._secrets[name] = kept
        return kept

    def _keep_secrets(self, db: sqlite3.Connection) -> None:
        """In a file opened again (it was removed or replaced), the secrets this process works with:
        without them the owners of the turns it stores would be hashed under another instance's key."""
        for name, value in self._secrets.items():
            db.execute(_KEEP_SECRET, (name, value.hex()))
            if db.execute(_KEPT_SECRET, (name,)).fetchone()[0] != value.hex():
                self._wanted = False  # not opened again: this process cannot serve this file
                raise StoreUnavailable(
                    reason=f"the database file {self.path} was replaced by one of another instance: restart the server"
                )

    # -- items --------------------------------------------------------------------------------------
    async def add_turn(self, turn: TurnWrite) -> None:
        """Group commit: the turns that arrive in one pass of the event loop share a transaction
        (one WAL append instead of one per turn), and each caller resumes only after the commit."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((turn, done, time.monotonic()))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._commit_pending)
        await done

    def _commit_pending(self) -> None:
        self._scheduled = False
        batch = [entry for entry in self._pending if not entry[1].done()]  # not the cancelled
        self._pending = []
        if not batch:
            return
        outcome = self._write([turn for turn, _, _ in batch])
        if outcome is _BUSY:
            # Another worker process holds the write lock: try again shortly, without ever blocking
            # the event loop in SQLite's busy handler, until the store timeout has passed.
            now = time.monotonic()
            expired = [e for e in batch if now - e[2] > self.timeout_s]
            for _, done, _ in expired:
                done.set_exception(StoreUnavailable(reason="the database stayed locked by another process"))
            self._pending = [e for e in batch if e not in expired] + self._pending
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._commit_pending)
            return
        for _, done, _ in batch:
            if done.done():
                continue
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(None)

    def _write(self, turns: list[TurnWrite]) -> Exception | object | None:
        """Write turns in one transaction; the error a caller should see, ``_BUSY`` if another
        process holds the write lock, or None. Never raises: it runs as a loop callback, where an
        escaping exception would leave every caller waiting."""
        try:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                for turn in turns:
                    self._insert_turn(db, turn)
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return _BUSY
            self._note_failure(exc)
            return _unavailable(exc)
        except (sqlite3.Error, StoreUnavailable) as exc:
            return _unavailable(exc)
        return None

    @staticmethod
    def _insert_turn(db: sqlite3.Connection, turn: TurnWrite) -> None:
        if turn.conversation_tip:
            row = db.execute(_CURRENT_TIP, (turn.conversation_id, turn.owner)).fetchone()
            if row and row[0] != turn.parent_id:
                turn = dataclasses.replace(turn, parent_id=row[0])
        first = turn.items[0].item.id
        branch, end = first, 0
        if turn.parent_id:
            row = db.execute(
                "SELECT branch, before + cost FROM items WHERE id = ? AND owner = ?", (turn.parent_id, turn.owner)
            ).fetchone()
            if row:
                branch, end = row
                if db.execute("SELECT 1 FROM items WHERE branch = ? AND before = ?", (branch, end)).fetchone():
                    branch = first  # the parent has an answer already: this one forks
        db.executemany(_INSERT_ITEM, turn_rows(turn, branch, end))
        if turn.response is not None:
            db.execute(_INSERT_RECORD + " ON CONFLICT DO NOTHING", record_params(turn.response, 1))
        if turn.opens_record and db.execute(_OPEN_RECORD, (turn.conversation_id, turn.owner, turn.tip_after,
                                                            turn.created_at)).rowcount:  # fmt: skip
            return  # made with this turn: its tip is where the turn left it
        if not turn.keep_tip:
            db.execute(_MOVE_TIP, (turn.items[-1].item.id, turn.created_at, turn.conversation_id,
                                   bool(turn.conversation_tip), turn.parent_id))  # fmt: skip

    async def get_item(self, owner: str, item_id: str) -> StoredItem | None:
        rows = self._run(self._item, (item_id, owner))
        return item_from_row(rows[0]) if rows else None

    async def response_item(self, owner: str, response_id: str) -> StoredItem | None:
        rows = self._run(self._response_item, (response_id, owner))
        return item_from_row(rows[0]) if rows else None

    async def get_items(self, owner: str, item_ids: list[str]) -> list[StoredItem]:
        found: dict[str, StoredItem] = {}
        for start in range(0, len(item_ids), 500):
            chunk = item_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._run(f"SELECT {ITEM_COLUMNS} FROM items WHERE owner = ? AND id IN ({marks})",
                                 (owner, *chunk)):  # fmt: skip
                stored = item_from_row(row)
                found[stored.item.id] = stored
        return [found[i] for i in item_ids if i in found]

    async def history(self, owner: str, item_id: str, budget: int) -> list[HistoryRow]:
        return self._run(self._history, (item_id, owner, budget))

    async def path_ids(self, owner: str, item_id: str) -> list[str]:
        return [row[0] for row in self._run(self._path_ids, (item_id, owner))]

    async def conversation_items(
        self, owner: str, conversation_id: str, after_seq: int | None, limit: int, descending: bool
    ) -> list[StoredItem]:
        order, compare = ("DESC", "<") if descending else ("ASC", ">")
        bound = after_seq if after_seq is not None else (2**62 if descending else -1)
        rows = self._run(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE conversation_id = ? AND owner = ? AND NOT deleted "
            f"AND seq {compare} ? ORDER BY seq {order} LIMIT ?",
            (conversation_id, owner, bound, limit),
        )
        return [item_from_row(r) for r in rows]

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE items SET deleted = 1 WHERE id = ? AND owner = ? AND conversation_id = ? AND NOT deleted",
                (item_id, owner, conversation_id),
            )
            if cursor.rowcount:
                db.execute("UPDATE records SET gen = gen + 1, version = version + 1 "
                           "WHERE kind = 'conversation' AND id = ?", (conversation_id,))  # fmt: skip
                db.execute(_TIP_OFF_DELETED, (conversation_id, item_id))
            return bool(cursor.rowcount)

        return await self._write_one(work)

    # -- records ------------------------------------------------------------------------------------
    async def put_record(self, record: Record, expect_version: int | None) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            if expect_version is None:
                cursor = db.execute(_INSERT_RECORD + " ON CONFLICT DO NOTHING",
                                    record_params(record, record.version if record.version > 0 else 1))  # fmt: skip
            else:
                cursor = db.execute(
                    "UPDATE records SET owner = ?, body = ?, tip = ?, updated_at = ?, gen = ?, version = ? "
                    "WHERE kind = ? AND id = ? AND version = ?",
                    (record.owner, orjson.dumps(record.body).decode(), record.tip, record.updated_at, record.gen,
                     expect_version + 1, record.kind, record.id, expect_version),
                )  # fmt: skip
            return cursor.rowcount == 1

        return await self._write_one(work)

    async def get_record(self, kind: str, record_id: str) -> Record | None:
        rows = self._run(f"SELECT {RECORD_COLUMNS} FROM records WHERE kind = ? AND id = ?", (kind, record_id))
        return record_from_row(rows[0]) if rows else None

    async def delete_record(self, kind: str, record_id: str, expect_version: int | None = None) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute("DELETE FROM records WHERE kind = ? AND id = ? AND (? IS NULL OR version = ?)",
                                (kind, record_id, expect_version, expect_version))  # fmt: skip
            return cursor.rowcount == 1

        return await self._write_one(work)

    async def list_records(
        self, kind: str, owner: str, after_id: str | None, limit: int, descending: bool
    ) -> list[Record]:
        order, compare = ("DESC", "<") if descending else ("ASC", ">")
        where, params = "kind = ? AND owner = ?", [kind, owner]
        if after_id is not None:
            anchor = self._run("SELECT created_at FROM records WHERE kind = ? AND id = ?", (kind, after_id))
            if anchor:
                where += f" AND (created_at, id) {compare} (?, ?)"
                params += [anchor[0][0], after_id]
        rows = self._run(
            f"SELECT {RECORD_COLUMNS} FROM records WHERE {where} ORDER BY created_at {order}, id {order} LIMIT ?",
            (*params, limit),
        )
        return [record_from_row(r) for r in rows]

    async def purge(self, before: float) -> int:
        async def created(n: int) -> float | None:
            rows = self._run(PURGE_PROBE.format(p="?"), (n,))
            return float(rows[0][0]) if rows else None

        low, high = self._run(PURGE_RANGE)[0]
        cut = await purge_cut(created, int(low), int(high), before) if low is not None else -1

        def deleting(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], int]:
            return lambda db: int(db.execute(sql, params).rowcount)

        removed = 0
        start = int(low) if low is not None else 0
        while start <= cut:  # in batches, each its own short transaction
            end = min(start + PURGE_BATCH - 1, cut)
            removed += await self._write_one(deleting(PURGE_ITEMS.format(p="?"), (start, end, before)))
            start = end + 1
        return removed + await self._write_one(
            deleting(PURGE_RECORDS.format(p="?"), (before, time.time() - SHORT_LIVED_S))
        )
