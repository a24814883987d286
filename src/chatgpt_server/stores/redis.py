"""Conversations in Redis, shared by every instance that names the same server.

Layout (``<p>`` is the key prefix):

- ``<p>i:<id>``: one hash per item (owner ``o``, conversation ``c``, parent ``p``, cost ``n``, deleted
  ``d``, kind ``k``, chat JSON ``h``, and the rest of the row ``x``), with the retention as its TTL;
- ``<p>c:<conversation>``: a sorted set of the conversation's item ids by sequence number;
- ``<p>r:<kind>:<id>``: one hash per record, and ``<p>rx:<kind>:<owner>`` its owner's index.

A turn is written by one Lua script (every key or none); the history of a follow-up is read by
another that walks parent links server-side, reading only the fields it needs (no JSON decoding),
and stops at the token budget: one round trip, work proportional to what it returns, never more
than ``MAX_WALK`` steps whatever the data. Scripts touch keys they do not declare, so use a single
Redis server (or a primary with replicas), not Redis Cluster. For durability run Redis with
``appendonly yes``. A connection found dead (Redis restarted) is reconnected and the command
retried once; every script is idempotent, so that is safe. The client is ``resp.Resp``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from ..core.items import Item
from ..errors import StoreUnavailable
from ..settings import mask_url
from .base import LEASE_LOST, MAX_WALK, SHORT_LIVED_S, HistoryRow, OnePerPass, Record, Store, StoredItem, TurnWrite
from .resp import Resp, RespError, Script

T = TypeVar("T")
DATA_VERSION = "2"

# ARGV: prefix, owner, conversation, parent ('' none), enc, origin, created, response id ('' none), ttl ms,
# item count, response body ('' none), conversation tip ('' none, '-' the tip stays), the tip of a record
# made with the turn ('' none made, '-' a null tip), then 8 fields per item: id, kind, role, text, extra,
# chat, cost, status; then the lease the write is made under ('' none) and its id. Returns 1, or 2 if that
# lease is no longer the one (nothing written).
_ADD_TURN = Script("""
local p, owner, conv, parent = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local enc, origin, created, rid, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local n, body, tipconv, opens = tonumber(ARGV[10]), ARGV[11], ARGV[12], ARGV[13]
if redis.call('EXISTS', p .. 'i:' .. ARGV[14]) == 1 then return 1 end
local fence = ARGV[14 + n * 8] or ''
if fence ~= '' then  -- a write sent before a partition may land after another instance took the lease
  local held = redis.call('HGET', p .. 'r:lease:' .. fence, 'b')
  if not held or cjson.decode(held).lease ~= ARGV[15 + n * 8] then return 2 end
end
local ckey2 = p .. 'r:conversation:' .. conv
if tipconv ~= '' and tipconv ~= '-' then  -- after the conversation's tip as it is now, if the caller's item
  local now = redis.call('HGET', ckey2, 't')
  if now and now ~= '' and now ~= parent then
    local f = redis.call('HMGET', p .. 'i:' .. now, 'o', 'c')
    if f[1] == owner and f[2] == conv then parent = now end
  end
end
local first_parent = parent
local seq = redis.call('INCRBY', p .. 'seq', n) - n
local ckey = p .. 'c:' .. conv
for i = 0, n - 1 do
  local b = 14 + i * 8
  local id = ARGV[b]
  local key = p .. 'i:' .. id
  seq = seq + 1
  redis.call('HSET', key, 'o', owner, 'c', conv, 'p', parent, 'n', ARGV[b + 6], 'd', '0', 'k', ARGV[b + 1],
    'h', ARGV[b + 5], 'x', cjson.encode({ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 7], enc, origin, rid,
    tonumber(created), seq}))
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  redis.call('ZADD', ckey, seq, id)
  parent = id
end
if ttl > 0 then
  redis.call('PEXPIRE', ckey, ttl)
  -- the conversation's record (a deleted one's tombstone too) lives as long as its newest item
  if redis.call('EXISTS', ckey2) == 1 then redis.call('PEXPIRE', ckey2, ttl) end
end
if rid ~= '' and body ~= '' then
  local rkey = p .. 'r:response:' .. rid
  if redis.call('EXISTS', rkey) == 0 then
    redis.call('HSET', rkey, 'o', owner, 'b', body, 't', parent, 'ca', created, 'ua', created, 'v', 1, 'g', 0)
    if ttl > 0 then redis.call('PEXPIRE', rkey, ttl) end
  end
end
if opens ~= '' and redis.call('EXISTS', ckey2) == 0 then  -- made with this turn, its tip where the turn left it
  if opens == '-' then opens = '' end
  redis.call('HSET', ckey2, 'o', owner, 'b', '{"metadata":{}}', 't', opens, 'ca', created, 'ua', created,
    'v', 1, 'g', 0)
  redis.call('ZADD', p .. 'rx:conversation:' .. owner, created, conv)
  if ttl > 0 then redis.call('PEXPIRE', ckey2, ttl) end
  return 1
end
local tip = redis.call('HGET', ckey2, 't')
if tip and tipconv ~= '-' and (tipconv ~= '' or tip == first_parent) then
  redis.call('HSET', ckey2, 't', parent, 'ua', created)
  redis.call('HINCRBY', ckey2, 'v', 1)  -- its TTL was renewed with the items above
end
return 1
""")

# ARGV: prefix, item id, owner, budget, max steps. Returns id, kind ('deleted' for a tombstone), chat, cost,
# parent ('' for a root) for each item, newest first.
_HISTORY = Script("""
local p, id, owner = ARGV[1], ARGV[2], ARGV[3]
local budget, steps = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, total, first, seen = {}, 0, true, {}
while id and id ~= '' and steps > 0 and not seen[id] do
  steps = steps - 1
  seen[id] = true
  local f = redis.call('HMGET', p .. 'i:' .. id, 'o', 'p', 'n', 'd', 'k', 'h')
  if f[1] ~= owner then break end
  local cost = tonumber(f[3])
  if not first and total + cost > budget then break end
  first = false
  total = total + cost
  out[#out + 1] = id
  if f[4] == '0' then out[#out + 1] = f[5] else out[#out + 1] = 'deleted' end
  out[#out + 1] = f[6]
  out[#out + 1] = cost
  out[#out + 1] = f[2]
  id = f[2]
end
return out
""")

# ARGV: prefix, item id, owner. An item's fields but its chat JSON (o c p n d k x), and its conversation's
# deletion counter; nil unless the item is the owner's. One round trip where two were.
_GET_ITEM = Script("""
local f = redis.call('HMGET', ARGV[1] .. 'i:' .. ARGV[2], 'o', 'c', 'p', 'n', 'd', 'k', 'x')
if f[1] ~= ARGV[3] or not f[7] then return nil end
f[8] = redis.call('HGET', ARGV[1] .. 'r:conversation:' .. f[2], 'g') or '0'
return f
""")

# ARGV: prefix, response id, owner. As _GET_ITEM, for the last item of the owner's response.
_RESPONSE_ITEM = Script("""
local r = redis.call('HMGET', ARGV[1] .. 'r:response:' .. ARGV[2], 'o', 't')
if r[1] ~= ARGV[3] or not r[2] or r[2] == '' then return nil end
local f = redis.call('HMGET', ARGV[1] .. 'i:' .. r[2], 'o', 'c', 'p', 'n', 'd', 'k', 'x')
if f[1] ~= ARGV[3] or not f[7] then return nil end
f[8] = redis.call('HGET', ARGV[1] .. 'r:conversation:' .. f[2], 'g') or '0'
f[9] = r[2]
return f
""")

# ARGV: prefix, item id, owner, max steps. Returns the ids of the item and its ancestors (not deleted).
_PATH = Script("""
local p, id, owner, steps = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out, seen = {}, {}
while id and id ~= '' and steps > 0 and not seen[id] do
  steps = steps - 1
  seen[id] = true
  local f = redis.call('HMGET', p .. 'i:' .. id, 'o', 'p', 'd')
  if f[1] ~= owner then break end
  if f[3] == '0' then out[#out + 1] = id end
  id = f[2]
end
return out
""")

# ARGV: prefix, kind, id, owner, body, tip, created, updated, gen, expected version ('' insert), ttl ms,
# version on insert (below 1: 1)
_PUT_RECORD = Script("""
local key = ARGV[1] .. 'r:' .. ARGV[2] .. ':' .. ARGV[3]
local expect, ttl = ARGV[10], tonumber(ARGV[11])
local version
if expect == '' then
  if redis.call('EXISTS', key) == 1 then return 0 end
  version = tonumber(ARGV[12]) or 1
  if version < 1 then version = 1 end
  redis.call('HSET', key, 'ca', ARGV[7])
  if ARGV[2] == 'conversation' or ARGV[2] == 'account' then  -- the kinds that are ever listed
    redis.call('ZADD', ARGV[1] .. 'rx:' .. ARGV[2] .. ':' .. ARGV[4], ARGV[7], ARGV[3])
  end
else
  if redis.call('HGET', key, 'v') ~= expect then return 0 end
  version = tonumber(expect) + 1
end
redis.call('HSET', key, 'o', ARGV[4], 'b', ARGV[5], 't', ARGV[6], 'ua', ARGV[8], 'g', ARGV[9], 'v', version)
if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
return 1
""")

# ARGV: prefix, owner, conversation, item id, max steps (up from a deleted tip)
_DELETE_ITEM = Script("""
local key = ARGV[1] .. 'i:' .. ARGV[4]
local f = redis.call('HMGET', key, 'o', 'c', 'd')
if f[1] ~= ARGV[2] or f[2] ~= ARGV[3] or f[3] ~= '0' then return 0 end
redis.call('HSET', key, 'd', '1')
local ckey = ARGV[1] .. 'r:conversation:' .. ARGV[3]
if redis.call('EXISTS', ckey) == 1 then
  redis.call('HINCRBY', ckey, 'g', 1)
  redis.call('HINCRBY', ckey, 'v', 1)
  if redis.call('HGET', ckey, 't') == ARGV[4] then  -- the tip deleted: its nearest ancestor still there
    local at, steps = redis.call('HGET', key, 'p'), 0
    while at and at ~= '' and steps < tonumber(ARGV[5]) do
      local gone = redis.call('HGET', ARGV[1] .. 'i:' .. at, 'd')
      if gone ~= '1' then
        if not gone then at = '' end  -- an ancestor no longer stored: no tip
        break
      end
      at, steps = redis.call('HGET', ARGV[1] .. 'i:' .. at, 'p'), steps + 1
    end
    redis.call('HSET', ckey, 't', at or '')
  end
end
return 1
""")

# ARGV: prefix, kind, id, expected version ('' any)
_DELETE_RECORD = Script("""
local key = ARGV[1] .. 'r:' .. ARGV[2] .. ':' .. ARGV[3]
local f = redis.call('HMGET', key, 'o', 'v')
if not f[1] then return 0 end
if ARGV[4] ~= '' and f[2] ~= ARGV[4] then return 0 end
redis.call('ZREM', ARGV[1] .. 'rx:' .. ARGV[2] .. ':' .. f[1], ARGV[3])
return redis.call('DEL', key)
""")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _item(item_id: str, fields: list[Any], gen: int = 0) -> StoredItem | None:
    owner, conversation, parent, cost, deleted, kind, _chat, rest = fields
    if owner is None or rest is None:
        return None
    role, text, extra, status, enc, origin, response_id, created, seq = orjson.loads(rest)
    item = Item.from_row(item_id, _text(kind), role, text, orjson.loads(extra) if extra else None, status)
    return StoredItem(item, _text(owner), _text(conversation), _text(parent) or None, enc, int(cost), origin,
                      response_id or None, float(created), int(seq), _text(deleted) == "1", gen)  # fmt: skip


_ITEM_FIELDS = ("o", "c", "p", "n", "d", "k", "h", "x")


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, retention_days: float, timeout_s: float = 2.0):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.prefix = query.pop("prefix", "chatgpt-server:")
        clean = parts._replace(query=urlencode(query)).geturl()
        self.url = url
        self.timeout_s = timeout_s
        if query:
            raise ValueError(f"unknown option(s) in the Redis URL: {', '.join(sorted(query))} (only prefix)")
        self.client = Resp(clean, timeout_s, min(timeout_s, 2.0))
        self.ttl_ms = int(retention_days * 86_400_000)
        self._versioned = False
        self._pinging: set[asyncio.Future[Any]] = set()
        self._ping = OnePerPass(self._ping_now, self._pinging)

    def _key(self, item_id: str) -> str:
        return f"{self.prefix}i:{item_id}"

    async def open(self) -> None:
        await self._check_version()

    async def _check_version(self) -> None:
        if self._versioned:
            return
        await self._call(self.client.call("SET", self.prefix + "version", DATA_VERSION, "NX"))
        found = await self._call(self.client.call("GET", self.prefix + "version"))
        version = _text(found) if found is not None else None
        if version == "1":
            await self._migrate_v1()
        elif version != DATA_VERSION:
            raise StoreUnavailable(reason=f"Redis data version {version} is not {DATA_VERSION}")
        self._versioned = True

    async def _migrate_v1(self) -> None:
        """Version 1 kept one JSON array per message under ``<p>m:<id>``: rewrite them as items."""
        from .sql import convert_v1

        rows = []
        for key in await self._scan(f"{self.prefix}m:*"):
            raw = await self._call(self.client.call("GET", key))
            if raw:
                mid, parent, conv, owner, mode, role, text, _cl, o200k, incomplete, created = orjson.loads(raw)
                rows.append((mid, parent, conv, owner, mode, role, text, o200k, incomplete, created))
        for row in convert_v1(rows):
            (mid, owner, conv, parent, _b, _before, cost, enc, kind, role, text, extra, chat, status, origin, _r,
             created) = row  # fmt: skip
            item = NewItemArgs(mid, kind, role, text, extra or "", chat, cost, status)
            await self._script(
                _ADD_TURN,
                [
                    self.prefix,
                    owner,
                    conv,
                    parent or "",
                    enc,
                    origin,
                    created,
                    "",
                    self.ttl_ms,
                    1,
                    "",
                    "",
                    "",
                    *item.args(),
                    "",
                    "",
                ],
            )
            await self._call(self.client.call("DEL", f"{self.prefix}m:{mid}"))
        await self._call(self.client.call("SET", self.prefix + "version", DATA_VERSION))

    async def _scan(self, pattern: str) -> list[bytes]:
        keys: list[bytes] = []
        cursor: bytes | int = 0
        while True:
            cursor, found = await self._call(self.client.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000))
            keys += found
            if cursor in (b"0", 0):
                return keys

    async def _script(self, script: Script, args: list[Any]) -> Any:
        return await self._call(self.client.run(script, args))

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            return await operation  # the client times every command out itself
        except (RespError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(reason=self._describe(exc)) from exc

    def _describe(self, exc: BaseException) -> str:
        """Why, for the log: the error class, its message and, for a socket error, its plain name
        ("Connection refused"), credentials masked."""
        text = str(exc) or type(exc).__name__
        found = re.search(r"Errno (\d+)|Error (\d+)", text)
        number = int(found.group(1) or found.group(2)) if found else 0
        if 0 < number < 200 and os.strerror(number) not in text:
            text += f" [{os.strerror(number)}]"
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return f"{type(exc).__name__}: {text} ({mask_url(self.url)})"

    async def ping(self) -> None:
        """One ``PING`` answers every check asked in the same pass of the event loop."""
        await self._ping()

    async def _ping_now(self) -> None:
        await self._call(self.client.call("PING"))
        await self._check_version()

    async def shared_secret(self, candidate: bytes, name: str = "hmac_key") -> bytes:
        key = self.prefix + name
        await self._call(self.client.call("SET", key, candidate.hex(), "NX"))
        found = await self._call(self.client.call("GET", key))
        return bytes.fromhex(_text(found))

    # -- items --------------------------------------------------------------------------------------
    async def add_turn(self, turn: TurnWrite) -> None:
        await self._check_version()
        response = turn.response
        args: list[Any] = [
            self.prefix, turn.owner, turn.conversation_id, turn.parent_id or "", turn.enc, turn.origin,
            turn.created_at, turn.response_id or "", self.ttl_ms, len(turn.items),
            orjson.dumps(response.body) if response else "", "-" if turn.keep_tip else turn.conversation_tip or "",
            (turn.tip_after or "-") if turn.opens_record else "",
        ]  # fmt: skip
        for new in turn.items:
            item = new.item
            extra = item.extra()
            args += NewItemArgs(item.id, item.kind, item.role, item.text,
                                orjson.dumps(extra).decode() if extra else "", new.chat, new.cost,
                                item.status).args()  # fmt: skip
        args += turn.lease or ("", "")
        if await self._script(_ADD_TURN, args) == 2:
            raise StoreUnavailable("conversation_lease_lost", id=turn.conversation_id[:256],
                                   reason=LEASE_LOST)  # fmt: skip

    async def get_item(self, owner: str, item_id: str) -> StoredItem | None:
        found = await self._script(_GET_ITEM, [self.prefix, item_id, owner])
        if not found:
            return None
        owner_, conversation, parent, cost, deleted, kind, rest, gen = found
        return _item(item_id, [owner_, conversation, parent, cost, deleted, kind, None, rest], int(gen))

    async def response_item(self, owner: str, response_id: str) -> StoredItem | None:
        found = await self._script(_RESPONSE_ITEM, [self.prefix, response_id, owner])
        if not found:
            return None
        owner_, conversation, parent, cost, deleted, kind, rest, gen, item_id = found
        return _item(_text(item_id), [owner_, conversation, parent, cost, deleted, kind, None, rest], int(gen))

    async def get_items(self, owner: str, item_ids: list[str]) -> list[StoredItem]:
        if not item_ids:
            return []
        results = await self._call(self.client.many([("HMGET", self._key(i), *_ITEM_FIELDS) for i in item_ids]))
        found = [_item(i, f) for i, f in zip(item_ids, results, strict=True)]
        return [s for s in found if s is not None and s.owner == owner]

    async def history(self, owner: str, item_id: str, budget: int) -> list[HistoryRow]:
        flat = await self._script(_HISTORY, [self.prefix, item_id, owner, budget, MAX_WALK])
        return [
            (_text(flat[i]), _text(flat[i + 1]), flat[i + 2], int(flat[i + 3]), _text(flat[i + 4]) or None)
            for i in range(0, len(flat), 5)
        ]

    async def path_ids(self, owner: str, item_id: str) -> list[str]:
        return [_text(i) for i in await self._script(_PATH, [self.prefix, item_id, owner, MAX_WALK])]

    async def conversation_items(
        self, owner: str, conversation_id: str, after_seq: int | None, limit: int, descending: bool
    ) -> list[StoredItem]:
        key = f"{self.prefix}c:{conversation_id}"
        out: list[StoredItem] = []
        bound = after_seq
        while len(out) < limit:
            want = limit - len(out)
            if descending:
                top = f"({bound}" if bound is not None else "+inf"
                ids = await self._call(self.client.call("ZREVRANGEBYSCORE", key, top, "-inf", "LIMIT", 0, want))
            else:
                low = f"({bound}" if bound is not None else "-inf"
                ids = await self._call(self.client.call("ZRANGEBYSCORE", key, low, "+inf", "LIMIT", 0, want))
            if not ids:
                break
            wanted = [_text(i) for i in ids]
            found = await self.get_items(owner, wanted)
            for stored in found:
                if stored.conversation_id == conversation_id and not stored.deleted:
                    out.append(stored)
            if len(found) < len(wanted):  # items retention expired: their ids leave the index too
                await self._forget_expired(key, set(wanted) - {f.item.id for f in found})
            last = await self._call(self.client.call("ZSCORE", key, ids[-1]))
            if last is None:
                break
            bound = int(float(last))
        return out[:limit]

    async def _forget_expired(self, key: str, ids: set[str]) -> None:
        """Drop from a conversation's index the items whose keys expired: two round trips in all."""
        listed = sorted(ids)
        alive = await self._call(self.client.many([("EXISTS", self._key(i)) for i in listed]))
        gone = [item_id for item_id, there in zip(listed, alive, strict=True) if not there]
        if gone:
            await self._call(self.client.call("ZREM", key, *gone))

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        return bool(await self._script(_DELETE_ITEM, [self.prefix, owner, conversation_id, item_id, MAX_WALK]))

    # -- records ------------------------------------------------------------------------------------
    def _ttl(self, kind: str) -> int:
        if kind in ("device", "lease"):
            return int(SHORT_LIVED_S * 1000)  # short-lived by nature: an hour bounds what a lost one costs
        return 0 if kind == "account" else self.ttl_ms

    async def put_record(self, record: Record, expect_version: int | None) -> bool:
        args: list[Any] = [
            self.prefix, record.kind, record.id, record.owner, orjson.dumps(record.body), record.tip or "",
            record.created_at, record.updated_at, record.gen, "" if expect_version is None else expect_version,
            self._ttl(record.kind), record.version,
        ]  # fmt: skip
        return bool(await self._script(_PUT_RECORD, args))

    async def get_record(self, kind: str, record_id: str) -> Record | None:
        fields = await self._call(
            self.client.call("HMGET", f"{self.prefix}r:{kind}:{record_id}", "o", "b", "t", "ca", "ua", "v", "g")
        )
        owner, body, tip, created, updated, version, gen = fields
        if owner is None or body is None:
            return None
        return Record(kind, record_id, _text(owner), orjson.loads(body), _text(tip) or None if tip else None,
                      float(created or 0), float(updated or 0), int(version or 0), int(gen or 0))  # fmt: skip

    async def delete_record(self, kind: str, record_id: str, expect_version: int | None = None) -> bool:
        expected = "" if expect_version is None else str(expect_version)
        return bool(await self._script(_DELETE_RECORD, [self.prefix, kind, record_id, expected]))

    async def list_records(
        self, kind: str, owner: str, after_id: str | None, limit: int, descending: bool
    ) -> list[Record]:
        index = f"{self.prefix}rx:{kind}:{owner}"
        start = 0
        if after_id is not None:
            rank = await self._call(self.client.call("ZREVRANK" if descending else "ZRANK", index, after_id))
            start = int(rank) + 1 if isinstance(rank, int) else 0
        ranged = "ZREVRANGE" if descending else "ZRANGE"
        out: list[Record] = []
        while len(out) < limit:
            ids = await self._call(self.client.call(ranged, index, start, start + limit - len(out) - 1))
            if not ids:
                break
            start += len(ids)
            for record_id in ids:
                record = await self.get_record(kind, _text(record_id))
                if record is None:  # expired: drop it from the index too
                    await self._call(self.client.call("ZREM", index, record_id))
                    start -= 1
                elif record.owner == owner:
                    out.append(record)
        return out[:limit]

    async def purge(self, before: float) -> int:
        return 0  # every key carries the retention as its TTL: Redis expires them itself


class NewItemArgs:
    """The eight script arguments of one item."""

    __slots__ = ("chat", "cost", "extra", "id", "kind", "role", "status", "text")

    def __init__(self, id: str, kind: str, role: str, text: str, extra: str, chat: bytes, cost: int, status: str):
        self.id, self.kind, self.role, self.text, self.extra = id, kind, role, text, extra
        self.chat, self.cost, self.status = chat, cost, status

    def args(self) -> list[Any]:
        return [self.id, self.kind, self.role, self.text, self.extra, self.chat, self.cost, self.status]
