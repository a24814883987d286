"""One holder at a time for a key, across every worker and instance that shares the store.

Used where an upstream allows one request at a time per account (the legacy web backend answers a
second one with 429 "only one message at a time"). Waiters in one process queue on a lock first, so
only one of them at a time asks the store; the store's lease (a record written by compare-and-set)
then orders the processes. A lease names its expiry, so one left by a process that died frees itself.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from ..errors import StoreUnavailable
from ..stores import Record, Store
from .locks import KeyedLocks

POLL_S = 0.05


class Leases:
    def __init__(self, store: Store):
        self.store = store
        self.local = KeyedLocks()
        self.holder = secrets.token_hex(8)

    def __len__(self) -> int:
        return len(self.local)

    async def acquire(self, key: str, ttl_s: float) -> Callable[[], None]:
        """Wait for ``key``; return the function that releases it (safe to call twice)."""
        release_local = await self.local.acquire(key)
        ticket = secrets.token_hex(8)
        try:
            await self._take(key, ticket, ttl_s)
        except BaseException:
            release_local()
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                # The store's lease goes first, then this process's next waiter may ask for it.
                task = asyncio.get_running_loop().create_task(self._give_back(key, ticket, release_local))
                _background.add(task)
                task.add_done_callback(_background.discard)

        return release

    async def _take(self, key: str, ticket: str, ttl_s: float) -> None:
        while True:
            now = time.time()
            current = await self.store.get_record("lease", key)
            body = {"holder": self.holder, "ticket": ticket, "until": now + ttl_s}
            if current is None:
                if await self.store.put_record(Record("lease", key, "", body, None, now, now), None):
                    return
            elif float(current.body.get("until", 0)) < now:  # its holder died, or overran its time
                taken = Record("lease", key, "", body, None, current.created_at, now, current.version)
                if await self.store.put_record(taken, current.version):
                    return
            await asyncio.sleep(POLL_S)

    async def _give_back(self, key: str, ticket: str, release_local: Callable[[], None]) -> None:
        try:
            current = await self.store.get_record("lease", key)
            if current is not None and current.body.get("ticket") == ticket:
                await self.store.delete_record("lease", key)
        except StoreUnavailable:
            pass  # the lease names its expiry: it frees itself
        finally:
            release_local()


_background: set[asyncio.Task[None]] = set()
