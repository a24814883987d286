"""SQL shared by the SQLite and PostgreSQL stores: schema migrations and the queries.

How a history is read without walking it row by row: every item records the running cost of its
ancestors (``before``) and a ``branch``. A turn that answers the newest item of a branch continues
that branch; one that answers an older item starts a new branch, named after its first item. Within
a branch ``before`` grows strictly (every item costs at least one token), so the ancestors of an
item that fit a budget are, in each branch on its path, one range of the ``(branch, before)``
index: the read costs what it returns, plus one step per fork on the path. Each step must move to a
smaller running cost, so even a damaged store (a cycle of parents) cannot make a walk go round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from .base import MAX_WALK

Placeholder = Callable[[int], str]

ITEM_COLUMNS = (
    "id, owner, conversation_id, parent_id, branch, before, cost, enc, kind, role, text, extra, chat, status, "
    "origin, response_id, created_at, deleted, seq"
)
RECORD_COLUMNS = "kind, id, owner, body, tip, created_at, updated_at, version, gen"


def migrations(dialect: str) -> list[tuple[int, str, list[str]]]:
    """Numbered migrations, applied in order when a store opens; applied versions are recorded in
    schema_migrations. Append, never edit: a deployed database has already run the old ones."""
    pg = dialect == "postgresql"
    # The rowid itself in SQLite (no AUTOINCREMENT: that is one more table write per row).
    seq = "seq BIGSERIAL PRIMARY KEY" if pg else "seq INTEGER PRIMARY KEY"
    blob = "BYTEA" if pg else "BLOB"
    return [
        (
            1,
            "messages and meta",
            [
                """CREATE TABLE messages (
                    id TEXT PRIMARY KEY, parent_id TEXT, conversation_id TEXT NOT NULL, owner TEXT NOT NULL,
                    mode TEXT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL,
                    tokens_cl100k INTEGER NOT NULL, tokens_o200k INTEGER NOT NULL,
                    incomplete BOOLEAN NOT NULL DEFAULT FALSE, created_at DOUBLE PRECISION NOT NULL
                )""",
                "CREATE INDEX messages_created_at ON messages (created_at)",
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            ],
        ),
        (
            2,
            "items in branches, records",
            [
                f"""CREATE TABLE items (
                    {seq},
                    id TEXT NOT NULL UNIQUE,
                    owner TEXT NOT NULL,
                    conversation_id TEXT NOT NULL,
                    parent_id TEXT,
                    branch TEXT NOT NULL,
                    before BIGINT NOT NULL,
                    cost INTEGER NOT NULL,
                    enc TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    role TEXT NOT NULL,
                    text TEXT NOT NULL,
                    extra TEXT,
                    chat {blob} NOT NULL,
                    status TEXT NOT NULL,
                    origin TEXT NOT NULL,
                    response_id TEXT,
                    created_at DOUBLE PRECISION NOT NULL,
                    deleted BOOLEAN NOT NULL DEFAULT FALSE
                )""",
                # One slot per running cost in a branch: the history index, and what makes two
                # concurrent answers to one item fork instead of sharing a branch.
                "CREATE UNIQUE INDEX items_branch_before ON items (branch, before)",
                # No index on created_at: items arrive in time order, so retention finds its cut on
                # seq by bisection (``PURGE_PROBE``), and a write updates one index fewer.
                "CREATE INDEX items_conversation ON items (conversation_id, seq)",
                """CREATE TABLE records (
                    kind TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL, body TEXT NOT NULL, tip TEXT,
                    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
                    version INTEGER NOT NULL, gen INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (kind, id)
                )""",
                "CREATE INDEX records_owner ON records (kind, owner, created_at, id)",
                "CREATE INDEX records_updated ON records (updated_at)",
            ],
        ),
    ]


PURGE_PROBE = "SELECT created_at FROM items WHERE seq >= {p} ORDER BY seq LIMIT 1"
PURGE_RANGE = "SELECT min(seq), max(seq) FROM items"
# {p} is the placeholder prefix: "?" (SQLite's ?1) or "$" (PostgreSQL's $1).
PURGE_ITEMS = "DELETE FROM items WHERE seq BETWEEN {p}1 AND {p}2 AND created_at < {p}3"
# A conversation's record (a deleted one's tombstone too) stays while any of its items does: gone first,
# the conversation would come back from its items, without its metadata, tip or deletion.
PURGE_RECORDS = (
    "DELETE FROM records WHERE (kind = 'response' AND updated_at < {p}1) "
    "OR (kind = 'conversation' AND updated_at < {p}1 "
    "AND NOT EXISTS (SELECT 1 FROM items WHERE items.conversation_id = records.id)) "
    "OR (kind IN ('device', 'lease') AND updated_at < {p}2)"
)


async def purge_cut(
    created_at_from: Callable[[int], Awaitable[float | None]], low: int, high: int, before: float
) -> int:
    """The last seq whose item was created before ``before``, found by bisection over seq (items are
    written in time order); ``low - 1`` if there is none. ``created_at_from(n)``: the creation time of
    the first item at or after seq n."""
    cut = low - 1
    while low <= high:
        middle = (low + high) // 2
        created = await created_at_from(middle)
        if created is not None and created < before:
            cut, low = middle, middle + 1
        else:
            high = middle - 1
    return cut


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)
V1_SELECT = (
    "SELECT id, parent_id, conversation_id, owner, mode, role, text, tokens_o200k, incomplete, created_at "
    "FROM messages ORDER BY created_at"
)
V1_INSERT_COLUMNS = (
    "id, owner, conversation_id, parent_id, branch, before, cost, enc, kind, role, text, extra, chat, status, "
    "origin, response_id, created_at"
)


def convert_v1(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Version 1 messages as version 2 items (in ``V1_INSERT_COLUMNS`` order), parents first.

    Mode-2 messages kept the web backend's ids, which its follow-ups still need: they go to the
    item's ``meta`` as well. Costs are kept under o200k_base, the encoding of the default model.
    """
    ends: dict[str, tuple[str, int]] = {}  # item id -> (branch, running cost including it)
    taken: set[tuple[str, int]] = set()
    pending = sorted(rows, key=lambda r: float(r[9]))
    out: list[tuple[Any, ...]] = []
    progress = True
    while pending and progress:  # parents first, whatever the timestamps say
        progress, later = False, []
        waiting = {r[0] for r in pending}
        for row in pending:
            mid, parent, conversation, owner, mode, role, text, cost, incomplete, created = row
            if parent is not None and parent not in ends and parent in waiting:
                later.append(row)
                continue
            waiting.discard(mid)
            progress = True
            branch, before = ends.get(parent, (mid, 0)) if parent else (mid, 0)
            if (branch, before) in taken:
                branch = mid
            taken.add((branch, before))
            cost = max(int(cost), 1)
            ends[mid] = (branch, before + cost)
            extra = None
            if mode == "2" and role == "assistant":
                extra = orjson.dumps({"meta": {"web": [conversation, mid]}}).decode()
            chat = orjson.dumps({"role": role, "content": text})
            status = "incomplete" if incomplete else "completed"
            origin = "web" if mode == "2" else "1"
            out.append((mid, owner, conversation, parent, branch, before, cost, "o200k_base", "message", role,
                        text, extra, chat, status, origin, None, float(created)))  # fmt: skip
        pending = later
    return out


def history_query(p: Placeholder, least: str) -> str:
    """Parameters: 1 item id, 2 owner, 3 budget. Rows: id, kind, chat, cost, parent, newest first."""
    return f"""
        WITH RECURSIVE
          tip(branch, upper, cutoff) AS (
            SELECT branch, before, {least}(before, before + cost - {p(3)})
            FROM items WHERE id = {p(1)} AND owner = {p(2)}
          ),
          path(branch, upper, n) AS (
            SELECT branch, upper, 0 FROM tip
            UNION ALL
            SELECT fork.branch, fork.before, path.n + 1
            FROM path
              JOIN items head ON head.id = path.branch
              JOIN items fork ON fork.id = head.parent_id
            WHERE fork.owner = {p(2)} AND fork.before >= (SELECT cutoff FROM tip) AND fork.before < path.upper
              AND path.n < {MAX_WALK}
          )
        SELECT i.id, CASE WHEN i.deleted THEN 'deleted' ELSE i.kind END, i.chat, i.cost, i.parent_id
        FROM path JOIN items i
          ON i.branch = path.branch AND i.before >= (SELECT cutoff FROM tip) AND i.before <= path.upper
        WHERE i.owner = {p(2)}
        ORDER BY i.before DESC
        LIMIT {MAX_WALK}"""


def path_ids_query(p: Placeholder) -> str:
    """Parameters: 1 item id, 2 owner. Rows: id of the item and every ancestor (deleted too), newest first."""
    return f"""
        WITH RECURSIVE
          path(branch, upper, n) AS (
            SELECT branch, before, 0 FROM items WHERE id = {p(1)} AND owner = {p(2)}
            UNION ALL
            SELECT fork.branch, fork.before, path.n + 1
            FROM path
              JOIN items head ON head.id = path.branch
              JOIN items fork ON fork.id = head.parent_id
            WHERE fork.owner = {p(2)} AND fork.before < path.upper AND path.n < {MAX_WALK}
          )
        SELECT i.id FROM path JOIN items i ON i.branch = path.branch AND i.before <= path.upper
        WHERE i.owner = {p(2)} AND NOT i.deleted
        ORDER BY i.before DESC
        LIMIT {MAX_WALK}"""


def response_item_query(p: Placeholder) -> str:
    """Parameters: 1 response id, 2 owner. One row: the response's last item (as ``item_query``)."""
    columns = ", ".join(f"i.{c.strip()}" for c in ITEM_COLUMNS.split(","))
    return f"""
        SELECT {columns}, COALESCE(r.gen, 0)
        FROM records resp JOIN items i ON i.id = resp.tip AND i.owner = {p(2)}
        LEFT JOIN records r ON r.kind = 'conversation' AND r.id = i.conversation_id
        WHERE resp.kind = 'response' AND resp.id = {p(1)}"""  # the owner is the item's (not in this
    # condition: with it, PostgreSQL chose the owner index and scanned every response of the owner)


def item_query(p: Placeholder) -> str:
    """Parameters: 1 item id, 2 owner. One row: the item's columns and its conversation's gen."""
    columns = ", ".join(f"i.{c.strip()}" for c in ITEM_COLUMNS.split(","))
    return f"""
        SELECT {columns}, COALESCE(r.gen, 0)
        FROM items i LEFT JOIN records r ON r.kind = 'conversation' AND r.id = i.conversation_id
        WHERE i.id = {p(1)} AND i.owner = {p(2)}"""


def tip_off_deleted(mark: str) -> str:
    """A conversation's tip, when it is the item just deleted, moved to its nearest ancestor still there
    (or none): else a turn from the last item a client sees would be a branch the conversation never lists.
    ``mark`` is the placeholder style: "?" (SQLite) or "$" (PostgreSQL); parameters: conversation, item."""
    conv, item = ("?1", "?2") if mark == "?" else ("$1", "$2")
    return f"""UPDATE records SET tip = (
  WITH RECURSIVE up(id, parent_id, deleted, depth) AS (
    SELECT id, parent_id, deleted, 0 FROM items WHERE id = {item}
    UNION ALL
    SELECT i.id, i.parent_id, i.deleted, up.depth + 1 FROM items i JOIN up ON i.id = up.parent_id
    WHERE up.deleted AND up.depth < {MAX_WALK})
  SELECT id FROM up WHERE NOT deleted ORDER BY depth LIMIT 1)
WHERE kind = 'conversation' AND id = {conv} AND tip = {item}"""
