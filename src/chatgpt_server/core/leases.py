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

# Lets go of a lease; the task it returns (None if already let go) ends once the store knows, for a
# caller whose next request must find the key free.
Release = Callable[[], "asyncio.Task[None] | None"]


class Leases:
    def __init__(self, store: Store):
        self.store = store
        self.local = KeyedLocks()
        self.holder = secrets.token_hex(8)

    def __len__(self) -> int:
        return len(self.local)

    async def acquire(self, key: str, ttl_s: float) -> Release:
        """Wait for ``key``; return the function that releases it (safe to call twice)."""
        release_local = await self.local.acquire(key)
        try:
            while True:  # the holder may be another process: polling the store is the only way to know
                version = await self._try_take(key, ttl_s)
                if version is not None:
                    break
                await asyncio.sleep(POLL_S)
        except BaseException:
            release_local()
            raise
        return self._releaser(key, version, release_local)

    async def try_acquire(self, key: str, ttl_s: float) -> Release | None:
        """Take ``key`` if nobody holds it; None if somebody does."""
        if self.local.held(key):
            return None
        release_local = await self.local.acquire(key)  # free: taken without waiting
        try:
            version = await self._try_take(key, ttl_s)
        except BaseException:
            release_local()
            raise
        if version is None:
            release_local()
            return None
        return self._releaser(key, version, release_local)

    def _releaser(self, key: str, version: int, release_local: Callable[[], None]) -> Release:
        released = False

        def release() -> asyncio.Task[None] | None:
            nonlocal released
            if released:
                return None
            released = True
            # The store's lease goes first, then this process's next waiter may ask for it.
            task = asyncio.get_running_loop().create_task(self._give_back(key, version, release_local))
            _background.add(task)
            task.add_done_callback(_background.discard)
            return task

        return release

    async def _try_take(self, key: str, ttl_s: float) -> int | None:
        """The version of the lease record now ours, or None if another holder's is in force."""
        now = time.time()
        body = {"holder": self.holder, "until": now + ttl_s}  # given back by version, not by who holds it
        if await self.store.put_record(Record("lease", key, "", body, None, now, now), None):
            return 1
        current = await self.store.get_record("lease", key)
        if current is None:  # given back meanwhile: one more try
            return 1 if await self.store.put_record(Record("lease", key, "", body, None, now, now), None) else None
        # Its holder died or overran its time; or it is this process's, although this process holds it
        # not (the caller holds the key's local lock, which a live lease of ours keeps): a write that
        # timed out here and landed later, or a give-back that failed. Either way it is taken over.
        orphan = current.body.get("holder") == self.holder
        if orphan or float(current.body.get("until", 0)) < now:
            taken = Record("lease", key, "", body, None, current.created_at, now, current.version)
            if await self.store.put_record(taken, current.version):
                return current.version + 1
        return None

    async def _give_back(self, key: str, version: int, release_local: Callable[[], None]) -> None:
        try:
            # Only the version we wrote: a lease that expired and was taken over is the new holder's.
            await self.store.delete_record("lease", key, version)
        except StoreUnavailable:
            pass  # the lease names its expiry: it frees itself
        finally:
            release_local()


_background: set[asyncio.Task[None]] = set()
