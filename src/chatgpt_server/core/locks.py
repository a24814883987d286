"""Per-key queues: one holder at a time for each key, no memory kept for idle keys."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def held(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry[0].locked()

    def busy(self, key: str) -> bool:
        """Held, or waited for: taking it would mean queueing (a holder just gone may have handed it on)."""
        return key in self._entries

    async def acquire(self, key: str) -> Callable[[], None]:
        """Wait for ``key``; return the function that releases it (safe to call twice)."""
        lock, users = self._entries.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            await lock.acquire()
        except BaseException:
            self._leave(key, users)
            raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                lock.release()
                self._leave(key, users)

        return release

    def _leave(self, key: str, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            self._entries.pop(key, None)
