"""Conversation stores; the scheme of ``CHATGPT_SERVER_STORE_URL`` picks one."""

from __future__ import annotations

from .base import DuplicateMessage, Store, StoredMessage


def open_store(url: str, retention_days: int) -> Store:
    """The store for ``url`` (not yet opened). Backends are imported only when chosen."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisStore

        return RedisStore(url, retention_days)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL scheme {scheme!r}")


__all__ = ["DuplicateMessage", "Store", "StoredMessage", "open_store"]
