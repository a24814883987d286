"""The shared PostgreSQL and Redis servers, used politely: every schema and key a test run creates is
named with this run's prefix, and ``clean_up`` removes them all at the end of the run."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import redis

REDIS_PORT, POSTGRES_PORT = 6379, 5432
RUN = f"t{uuid.uuid4().hex[:8]}"  # this run's prefix: schemas and keys start with it


def store_url(kind: str, tmp_path: Path, port: int | None = None) -> str:
    """A new, empty store of ``kind`` for one test."""
    name = f"{RUN}_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    if kind == "redis":
        return f"redis://127.0.0.1:{port or REDIS_PORT}/0?prefix={name}:"
    asyncio.run(_create_schema(name))
    # A schema of its own: asyncpg passes unknown URL parameters on as server settings.
    return f"postgresql://127.0.0.1:{port or POSTGRES_PORT}/test?search_path={name}"


async def _create_schema(name: str) -> None:
    conn = await asyncpg.connect(f"postgresql://127.0.0.1:{POSTGRES_PORT}/test")
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()


def clean_up() -> tuple[int, int]:
    """Drop this run's schemas and delete its keys; (schemas, keys) removed."""
    schemas = asyncio.run(_drop_schemas())
    client = redis.Redis(port=REDIS_PORT)
    keys = 0
    batch = []
    for key in client.scan_iter(match=f"{RUN}*", count=1000):
        batch.append(key)
        if len(batch) == 500:
            keys += int(client.delete(*batch))
            batch = []
    if batch:
        keys += int(client.delete(*batch))
    client.close()
    return schemas, keys


async def _drop_schemas() -> int:
    conn = await asyncpg.connect(f"postgresql://127.0.0.1:{POSTGRES_PORT}/test")
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", RUN + "%")
        for row in rows:
            await conn.execute(f'DROP SCHEMA "{row[0]}" CASCADE')
        return len(rows)
    finally:
        await conn.close()
