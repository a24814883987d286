"""One holder at a time for a key, across every worker and instance that shares the store.

Used where an upstream allows one request at a time per account (the legacy web backend answers a
second one with 429 "only one message at a time") and for a conversation answered through
``conversation=``. Waiters in one process queue on a lock first, so only one of them at a time asks
the store; the store's lease (a record written by compare-and-set) then orders the processes.

A lease names its expiry, ``lease_s`` ahead (30 s), and its holder renews it every third of that for
as long as it holds the key (at most the ``ttl_s`` it asked for): a process that died, or a give-back
the store missed, frees the key within ``lease_s``, not after the whole turn's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from ..errors import StoreUnavailable
from ..stores import Record, Store
from .locks import KeyedLocks

log = logging.getLogger("chatgpt_server")

POLL_S = 0.05
LEASE_S = 30.0
LEAVING_WAIT_S = 5.0  # the longest a turn waits for one of this process's holders that is stopping


class _Held:
    """A lease this process holds: the version it last wrote, its own id (a lease taken again later is
    another), when its holder's time is up, and until when the store has it as this holder's."""

    __slots__ = ("created_at", "deadline", "key", "lease_id", "lost", "stopped", "until", "version", "writing")

    def __init__(self, key: str, version: int, created_at: float, deadline: float, lease_id: str, until: float):
        self.key = key
        self.version = version
        self.created_at = created_at
        self.deadline = deadline
        self.lease_id = lease_id
        self.until = until  # the expiry last written: nobody may take the lease over before it
        self.lost = False  # another holder took it over (this one's renewals missed their time)
        self.stopped = False
        self.writing = False


class Release:
    """A key held. Called, it lets go (safe to call twice); the task it returns (None if already let
    go) ends once the store knows, for a caller whose next request must find the key free."""

    __slots__ = ("_held", "_let_go", "_renew")

    def __init__(self, held: _Held, let_go: Callable[[], asyncio.Task[None] | None],
                 renew: Callable[[_Held], Awaitable[None]] | None = None):  # fmt: skip
        self._held = held
        self._let_go = let_go
        self._renew = renew

    def __call__(self) -> asyncio.Task[None] | None:
        return self._let_go()

    @property
    def fence(self) -> tuple[str, str]:
        """(lease record id, lease id): a store write made under this key checks, in the write itself, that
        the lease is still this one (a write that reaches the store late, after another took the key over,
        is refused there)."""
        return self._held.key, self._held.lease_id

    def sure_for(self, seconds: float) -> bool:
        """Whether the key is still this holder's, and stays so for ``seconds`` whatever the store does
        meanwhile: a write that must not land after another holder took over (its renewals missed while
        the store was away) checks it first, for as long as the write may take."""
        return not self._held.lost and self._held.until - time.time() > seconds

    async def make_sure_for(self, seconds: float) -> bool:
        """``sure_for``, renewing the lease first if it is not (a renewal late on a busy loop, or missed
        while the store was away): False only if the renewal fails or another holder took the key."""
        if self.sure_for(seconds):
            return True
        if self._held.lost or self._held.stopped or self._renew is None:
            return False
        try:
            await self._renew(self._held)
        except StoreUnavailable:
            return False
        return self.sure_for(seconds)


class Leases:
    def __init__(self, store: Store, lease_s: float = LEASE_S):
        self.store = store
        self.lease_s = lease_s
        self.local = KeyedLocks()
        self.holder = secrets.token_hex(8)
        self._leaving: set[str] = set()

    def __len__(self) -> int:
        return len(self.local)

    async def acquire(self, key: str, ttl_s: float) -> Release:
        """Wait for ``key``; return the function that releases it (safe to call twice)."""
        release_local = await self.local.acquire(key)
        try:
            while True:  # the holder may be another process: polling the store is the only way to know
                held = await self._try_take(key, ttl_s)
                if held is not None:
                    break
                await asyncio.sleep(POLL_S)
        except BaseException:
            release_local()
            raise
        return self._releaser(held, release_local)

    def leaving(self, key: str) -> None:
        """This process's holder of ``key`` is stopping (its client left): it will let go within moments,
        so ``try_acquire`` waits for it instead of refusing. A client's retry after its timeout comes
        as the server learns it left, and must not find its own abandoned turn in the way."""
        if self.local.held(key):
            self._leaving.add(key)

    async def try_acquire(self, key: str, ttl_s: float) -> Release | None:
        """Take ``key`` if nobody holds it (or this process's holder is ``leaving``); None if somebody does."""
        if not self.local.busy(key):
            release_local = await self.local.acquire(key)  # free: taken without waiting
        elif key in self._leaving:
            self._leaving.discard(key)  # one turn waits for it (the retry): any other meets the lock as ever
            try:
                async with asyncio.timeout(LEAVING_WAIT_S):
                    release_local = await self.local.acquire(key)
            except TimeoutError:
                return None
        else:
            return None
        try:
            held = await self._try_take(key, ttl_s)
        except BaseException:
            release_local()
            raise
        if held is None:
            release_local()
            return None
        return self._releaser(held, release_local)

    def _releaser(self, held: _Held, release_local: Callable[[], None]) -> Release:
        loop = asyncio.get_running_loop()
        renewer = _keep(loop.create_task(self._renew(held)))
        released = False

        def release() -> asyncio.Task[None] | None:
            nonlocal released
            if released:
                return None
            released = True
            held.stopped = True  # a renewal being written ends first: its version is the one given back
            # The store's lease goes first, then this process's next waiter may ask for it.
            return _keep(loop.create_task(self._give_back(held, release_local, renewer)), _giving_back)

        return Release(held, release, self._renew_once)

    async def _try_take(self, key: str, ttl_s: float) -> _Held | None:
        """The lease now ours, or None if another holder's is in force."""
        now = time.time()
        deadline = now + ttl_s
        lease_id = secrets.token_hex(8)
        # Given back by version; the id tells this lease from a later one of the same holder.
        until = min(now + self.lease_s, deadline)
        body = {"holder": self.holder, "until": until, "lease": lease_id}
        # A new lease record starts at a random version: versions restart when a record is made again after
        # its give-back, and a holder cut off meanwhile must not renew (or give back) another's lease made
        # since, whose version would otherwise be the one it still holds.
        first = secrets.randbelow(1 << 30) + 1
        if await self.store.put_record(Record("lease", key, "", body, None, now, now, first), None):
            return _Held(key, first, now, deadline, lease_id, until)
        current = await self.store.get_record("lease", key)
        if current is None:  # given back meanwhile: one more try
            if await self.store.put_record(Record("lease", key, "", body, None, now, now, first), None):
                return _Held(key, first, now, deadline, lease_id, until)
            return None
        # Its holder died or overran its time; or it is this process's, although this process holds it
        # not (the caller holds the key's local lock, which a live lease of ours keeps): a write that
        # timed out here and landed later, or a give-back that failed. Either way it is taken over.
        orphan = current.body.get("holder") == self.holder
        if orphan or float(current.body.get("until", 0)) < now:
            taken = Record("lease", key, "", body, None, current.created_at, now, current.version)
            if await self.store.put_record(taken, current.version):
                return _Held(key, current.version + 1, current.created_at, deadline, lease_id, until)
        return None

    async def _renew(self, held: _Held) -> None:
        """Move the lease's expiry on while it is held, up to its holder's deadline. A renewal the store
        misses is tried again at the next."""
        while not held.stopped:
            await asyncio.sleep(self.lease_s / 3)
            if held.stopped or time.time() >= held.deadline:
                return  # given back, or its time is up: the lease runs out as asked
            held.writing = True
            try:
                await self._renew_once(held)
            except StoreUnavailable:
                continue
            finally:
                held.writing = False
            if held.lost:
                return

    async def _renew_once(self, held: _Held) -> None:
        """One renewal. One refused is checked: a write that timed out here may have landed (the lease is
        still this one: its version is adopted), else another holder took it (``lost``)."""
        now = time.time()
        until = min(now + self.lease_s, held.deadline)
        body = {"holder": self.holder, "until": until, "lease": held.lease_id}
        record = Record("lease", held.key, "", body, None, held.created_at, now, held.version)
        if await self.store.put_record(record, held.version):
            held.version += 1
            held.until = until
            return
        current = await self.store.get_record("lease", held.key)
        if current is None or current.body.get("lease") != held.lease_id:
            log.warning("the lease on %s was taken over while held (its renewals missed its time)", held.key)
            held.lost = True
            return
        held.version = current.version
        held.until = float(current.body.get("until", held.until))

    async def _give_back(self, held: _Held, release_local: Callable[[], None], renewer: asyncio.Task[None]) -> None:
        try:
            if held.writing:  # never cut a renewal short: a write abandoned here could land after the delete
                await asyncio.wait({renewer})
            else:
                renewer.cancel()
            # Only the version last written: a lease that expired and was taken over is the new holder's.
            if not await self.store.delete_record("lease", held.key, held.version):
                current = await self.store.get_record("lease", held.key)  # a renewal that timed out landed
                if current is not None and current.body.get("lease") == held.lease_id:
                    await self.store.delete_record("lease", held.key, current.version)
        except StoreUnavailable:
            pass  # the lease names its expiry, at most lease_s ahead: it frees itself
        finally:
            self._leaving.discard(held.key)
            release_local()


def _keep(task: asyncio.Task[None], into: set[asyncio.Task[None]] | None = None) -> asyncio.Task[None]:
    """A task nobody awaits, kept until it ends (the loop holds only weak references)."""
    kept = _background if into is None else into
    kept.add(task)
    task.add_done_callback(kept.discard)
    return task


_background: set[asyncio.Task[None]] = set()  # renewers
_giving_back: set[asyncio.Task[None]] = set()


async def given_back(timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) for the give-backs under way: before the store closes at shutdown."""
    if _giving_back:
        await asyncio.wait(set(_giving_back), timeout=timeout_s)
