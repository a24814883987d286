"""Conversations in Redis, shared by every instance that names the same server.

One key per message (``<prefix>m:<id>``, a compact JSON array) with the retention as its TTL.
A turn is written by one Lua script (both keys or neither); the history of a follow-up is read by
another that walks the parent links server-side and stops at the token budget: one round trip
whatever the depth. Scripts touch keys they do not declare, so use a single Redis server (or a
primary with replicas), not Redis Cluster. For durability run Redis with ``appendonly yes``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailable
from .base import DuplicateMessage, Store, StoredMessage

DATA_VERSION = "1"
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS: user key, reply key. ARGV: user JSON, reply JSON, ttl ms (0 = keep).
_ADD_TURN = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""

# ARGV: key prefix, message id, owner, index of the token count, budget.
# Array fields: 1 id, 2 parent, 3 conversation, 4 owner, 5 mode, 6 role, 7 text, 8 cl100k, 9 o200k, ...
_CHAIN = """
local prefix, id, owner = ARGV[1], ARGV[2], ARGV[3]
local column, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, total = {}, 0
while id do
  local raw = redis.call('GET', prefix .. id)
  if not raw then break end
  local m = cjson.decode(raw)
  if m[4] ~= owner then break end
  if #out > 0 and total + m[column] > budget then break end
  total = total + m[column]
  out[#out + 1] = raw
  id = m[2]
  if id == cjson.null then id = nil end
end
return out
"""


def _encode(m: StoredMessage) -> bytes:
    fields = [m.id, m.parent_id, m.conversation_id, m.owner, m.mode, m.role, m.text]
    return orjson.dumps([*fields, m.tokens_cl100k, m.tokens_o200k, m.incomplete, m.created_at])


def _decode(raw: bytes) -> StoredMessage:
    return StoredMessage(*orjson.loads(raw))


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, retention_days: int):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.prefix = query.pop("prefix", "chatgpt-server:")
        clean = parts._replace(query=urlencode(query)).geturl()
        self.client: aioredis.Redis = aioredis.from_url(
            clean, socket_timeout=5, socket_connect_timeout=2, health_check_interval=15
        )
        self.ttl_ms = retention_days * 86_400_000
        self._add_turn = self.client.register_script(_ADD_TURN)
        self._chain = self.client.register_script(_CHAIN)
        self._versioned = False

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}m:{message_id}"

    async def open(self) -> None:
        await self._check_version()

    async def _check_version(self) -> None:
        if self._versioned:
            return
        try:
            await self.client.set(self.prefix + "version", DATA_VERSION, nx=True)
            found = await self.client.get(self.prefix + "version")
        except _DOWN as exc:
            raise StoreUnavailable() from exc
        version = found.decode() if isinstance(found, bytes) else found
        if version is not None and version != DATA_VERSION:
            raise RuntimeError(f"Redis data version {version} is not {DATA_VERSION}")
        self._versioned = True

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except _DOWN as exc:
            raise StoreUnavailable() from exc

    async def ping(self) -> None:
        await self._call(self.client.ping())
        await self._check_version()

    async def shared_secret(self, candidate: bytes) -> bytes:
        key = self.prefix + "hmac_key"
        await self._call(self.client.set(key, candidate.hex(), nx=True))
        found = await self._call(self.client.get(key))
        return bytes.fromhex(found.decode())

    async def add_turn(self, user: StoredMessage, reply: StoredMessage) -> None:
        await self._check_version()
        written = await self._call(
            self._add_turn(
                keys=[self._key(user.id), self._key(reply.id)],
                args=[_encode(user), _encode(reply), self.ttl_ms],
            )
        )
        if not written:
            raise DuplicateMessage(f"{user.id} or {reply.id}")

    async def get(self, owner: str, message_id: str) -> StoredMessage | None:
        raw = await self._call(self.client.get(self._key(message_id)))
        if raw is None:
            return None
        message = _decode(raw)
        return message if message.owner == owner else None

    async def chain(self, owner: str, message_id: str, encoding: str, budget: int) -> list[StoredMessage]:
        column = 9 if encoding == "o200k_base" else 8
        rows = await self._call(self._chain(args=[self.prefix + "m:", message_id, owner, column, budget]))
        return [_decode(raw) for raw in rows]

    async def purge(self, before: float) -> int:
        return 0  # every key carries the retention as its TTL: Redis expires them itself
