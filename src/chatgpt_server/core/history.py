"""Histories of recent conversation tips, kept in memory so a follow-up needs no history read.

The ancestors of an item never change, so what this process read or wrote for a tip stays true on
every instance, with two exceptions, both handled: a client deleting an item of a conversation (the
conversation's deletion counter ``gen``, read with the parent on every turn, must match the one
cached), and retention (entries live ``TTL_S``, far less than any retention period). Anything else
(an evicted, expired or foreign entry) is a miss, and the store is read.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter

from ..stores import HistoryRow

TTL_S = 600.0
MIN_ROWS = 16  # a shorter history is one small read: not worth memory
_ROW_OVERHEAD = 240  # bytes a row costs beyond its JSON: the tuple, its list slot, the id and parent strings
_ENTRY_OVERHEAD = 400  # the Path, the dict entry and its key


@dataclass(slots=True)
class Path:
    """An item's ancestors (oldest first, the item last): all of them when ``complete``, else every
    one within ``coverage`` tokens of the item."""

    owner: str
    gen: int
    rows: list[HistoryRow]
    coverage: int
    complete: bool
    size: int
    at: float

    def covers(self, budget: int) -> bool:
        return self.complete or self.coverage >= budget


def path_from_store(owner: str, gen: int, newest_first: list[HistoryRow], budget: int) -> Path:
    """What a store read returned, as a path: complete if it reached the root within ``budget``."""
    rows = newest_first[::-1]
    complete = not rows or rows[0][4] is None
    total = sum(map(_COST, rows))
    return Path(owner, gen, rows, max(budget, total), complete, _size(rows), time.monotonic())


# Rows are read with C-level helpers (map, itemgetter, accumulate): a 128k-token history is over a
# thousand rows, and a Python loop over them costs ~0.1 ms a pass.
_KIND, _CHAT, _COST = itemgetter(1), itemgetter(2), itemgetter(3)


def _size(rows: list[HistoryRow]) -> int:
    return sum(map(len, map(_CHAT, rows))) + _ROW_OVERHEAD * len(rows) + _ENTRY_OVERHEAD


def cut(rows: list[HistoryRow], budget: int) -> tuple[list[HistoryRow], bool]:
    """The newest rows (oldest first) whose costs fit ``budget``, and whether any row was left out.

    Deleted rows (kind "deleted") count toward the budget, as their place in the stored running
    totals does, but are left out of what is returned. A function call's output never starts a
    history without the call before it.
    """
    # Running totals from the newest row back: the rows that fit are the longest such run within budget.
    fits = bisect_right(list(accumulate(map(_COST, reversed(rows)))), budget)
    start = len(rows) - fits
    kept = rows[start:] if start else list(rows)
    if "deleted" in map(_KIND, kept):
        kept = [r for r in kept if r[1] != "deleted"]
    while kept and kept[0][1] == "function_call_output":
        kept.pop(0)
    return kept, start > 0


class HistoryCache:
    """LRU by bytes: entries keyed by item id."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Path] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, item_id: str, owner: str, gen: int, budget: int) -> Path | None:
        entry = self._entries.get(item_id)
        if (
            entry is None
            or entry.owner != owner
            or entry.gen != gen
            or not entry.covers(budget)
            or time.monotonic() - entry.at > TTL_S
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(item_id)
        self.hits += 1
        return entry

    def put(self, item_id: str, path: Path) -> None:
        if self.max_bytes <= 0 or len(path.rows) < MIN_ROWS or path.size > self.max_bytes // 4:
            return
        old = self._entries.pop(item_id, None)
        if old is not None:
            self.size -= old.size
        self._entries[item_id] = path
        self.size += path.size
        while self.size > self.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size

    def extend(self, base: list[HistoryRow], base_complete: bool, coverage: int, new: list[HistoryRow],
               owner: str, gen: int) -> Path:  # fmt: skip
        """The path of the newest of ``new``, which were just written after ``base``. The rows' JSON
        must be exactly sized (orjson's own results keep a 4 kB buffer each: copy them first)."""
        rows = base + new
        added = sum(r[3] for r in new)
        return Path(owner, gen, rows, coverage + added, base_complete, _size(rows), time.monotonic())
