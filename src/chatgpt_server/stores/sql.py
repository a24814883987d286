"""SQL shared by the SQLite and PostgreSQL stores: the schema migrations and the history query."""

from __future__ import annotations

from collections.abc import Callable

from .base import ENCODINGS

COLUMNS = "id, parent_id, conversation_id, owner, mode, role, text, tokens_cl100k, tokens_o200k, incomplete, created_at"

# Numbered migrations, applied in order when a store opens; applied versions are recorded in
# schema_migrations. Append, never edit: a deployed database has already run the old ones.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "messages and meta",
        [
            """CREATE TABLE messages (
                id TEXT PRIMARY KEY,
                parent_id TEXT,
                conversation_id TEXT NOT NULL,
                owner TEXT NOT NULL,
                mode TEXT NOT NULL,
                role TEXT NOT NULL,
                text TEXT NOT NULL,
                tokens_cl100k INTEGER NOT NULL,
                tokens_o200k INTEGER NOT NULL,
                incomplete BOOLEAN NOT NULL DEFAULT FALSE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX messages_created_at ON messages (created_at)",
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    ),
]

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


def chain_query(encoding: str, placeholder: Callable[[int], str]) -> str:
    """A recursive CTE that walks parent links and stops at the token budget.

    Parameters, by position: 1 message id, 2 owner, 3 budget.
    """
    if encoding not in ENCODINGS:
        raise ValueError(encoding)
    tokens = "tokens_cl100k" if encoding == "cl100k_base" else "tokens_o200k"
    p = placeholder
    return f"""
        WITH RECURSIVE chain AS (
            SELECT {COLUMNS}, 0 AS depth, {tokens} AS total
            FROM messages WHERE id = {p(1)} AND owner = {p(2)}
          UNION ALL
            SELECT m.id, m.parent_id, m.conversation_id, m.owner, m.mode, m.role, m.text,
                   m.tokens_cl100k, m.tokens_o200k, m.incomplete, m.created_at,
                   c.depth + 1, c.total + m.{tokens}
            FROM chain c JOIN messages m ON m.id = c.parent_id
            WHERE m.owner = {p(2)} AND c.total + m.{tokens} <= {p(3)}
        )
        SELECT {COLUMNS} FROM chain ORDER BY depth"""
