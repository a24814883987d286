"""Conversation stores; the scheme of ``CHATGPT_SERVER_STORE_URL`` picks one."""

from __future__ import annotations

from .base import HistoryRow, NewItem, Record, Store, StoredItem, TurnWrite


def open_store(url: str, retention_days: float, timeout_s: float = 2.0) -> Store:
    """The store for ``url`` (not yet opened). Backends are imported only when chosen."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, timeout_s)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore(url, retention_days, timeout_s)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, timeout_s)
    raise ValueError(f"unsupported store URL scheme {scheme!r}")


__all__ = ["HistoryRow", "NewItem", "Record", "Store", "StoredItem", "TurnWrite", "open_store"]
