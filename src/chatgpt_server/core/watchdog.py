"""A time limit on each of many short waits in one task, for a clock read per wait.

``asyncio.timeout`` around each wait makes and cancels a timer every time: a stream's events are many
short waits, and those timers cost ~10% of a streamed turn's CPU. Here one timer stays armed across
waits. A wait's limit is never earlier than the one before it (it is min(deadline, start + idle),
and starts only move on), so the armed timer can only fire early: it then re-arms itself for the
current wait's limit, and most waits touch no timer at all.
"""

from __future__ import annotations

import asyncio


class Watchdog:
    def __init__(self, deadline: float, idle_s: float):
        self._loop = asyncio.get_running_loop()
        self.deadline = deadline
        self.idle_s = idle_s
        self._task: asyncio.Task[object] | None = None  # the task waiting, while it waits
        self._limit = 0.0  # when the current wait must end
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False
        self.idle_hit = False  # whether the current wait's limit is its idle limit (not the deadline)

    def begin(self) -> None:
        """A wait of the current task starts now."""
        now = self._loop.time()
        self.idle_hit = now + self.idle_s < self.deadline
        self._limit = min(self.deadline, now + self.idle_s)
        self._task = asyncio.current_task()
        if self._timer is None:
            self._timer = self._loop.call_at(self._limit, self._check)

    def end(self) -> None:
        self._task = None

    def timed_out(self) -> bool:
        """Whether the cancellation the waiting task just met is ours (and only ours): if so it is
        taken back, and the caller raises its timeout error instead."""
        if not self._fired:
            return False
        self._fired = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    def expire(self) -> None:
        """End the current wait now (the turn is aborted)."""
        self._limit = self._loop.time()
        self._check()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is None or self._fired:  # nobody waits: the next wait arms a timer again
            return
        if self._loop.time() < self._limit:  # fired early: the current wait began after it was set
            self._timer = self._loop.call_at(self._limit, self._check)
            return
        self._fired = True
        task.cancel()
