"""Histories of recent conversation tips, kept in memory so a follow-up needs no history read.

The ancestors of an item never change, so what this process read or wrote for a tip stays true on
every instance, with two exceptions, both handled: a client deleting an item of a conversation (the
conversation's deletion counter ``gen``, read with the parent on every turn, must match the one
cached), and retention: a path whose oldest item is past the retention period (its age read from its
id) is a miss, so the store, which deletes such items (SQLite and PostgreSQL within the hour, Redis
at once), is what every instance reads from then on. Anything else (an evicted, expired or foreign
entry) is a miss too, and the store is read.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter

import orjson

from ..stores import HistoryRow
from .items import ASSISTANT_CHAT, minted_at

TTL_S = 600.0
MIN_ROWS = 16  # a shorter history is one small read: not worth memory
_ROW_OVERHEAD = 310  # bytes a row costs beyond its JSON: the tuple, its list slot, the id and parent strings,
# its two running sums
_ENTRY_OVERHEAD = 400  # the Path, the dict entry and its key


@dataclass(slots=True)
class Path:
    """An item's ancestors (oldest first, the item last): all of them when ``complete``, else every
    one within ``coverage`` tokens of the item.

    ``totals`` and ``sizes`` are running sums (one more entry than ``rows``; only their differences
    mean anything) of the rows' costs and JSON bytes: the budget cut is a binary search and a path
    grows by a turn without a pass over the thousands of rows a 128k-token history holds."""

    owner: str
    gen: int
    rows: list[HistoryRow]
    totals: list[int]
    sizes: list[int]
    coverage: int
    complete: bool
    plain: bool  # every row a message: nothing to leave out of a prompt, nothing to convert
    at: float

    @property
    def size(self) -> int:
        """What the path costs in memory, in bytes (the cache's measure)."""
        return self.sizes[-1] - self.sizes[0] + _ROW_OVERHEAD * len(self.rows) + _ENTRY_OVERHEAD

    def covers(self, budget: int) -> bool:
        return self.complete or self.coverage >= budget

    def fit(self, budget: int) -> int:
        """Where the newest rows whose costs fit ``budget`` start (0: every row fits)."""
        totals = self.totals
        return bisect_left(totals, totals[-1] - budget)

    def cost(self, start: int) -> int:
        return self.totals[-1] - self.totals[start]


def empty_path(owner: str) -> Path:
    return Path(owner, 0, [], [0], [0], 0, True, True, 0.0)


def path_from_store(owner: str, gen: int, newest_first: list[HistoryRow], budget: int) -> Path:
    """What a store read returned, as a path: complete if it reached the root within ``budget``."""
    rows = newest_first[::-1]
    complete = not rows or rows[0][4] is None
    totals = [0, *accumulate(map(_COST, rows))]
    sizes = [0, *accumulate(map(len, map(_CHAT, rows)))]
    return Path(owner, gen, rows, totals, sizes, max(budget, totals[-1]), complete, _plain(rows), time.monotonic())


# Rows are read with C-level helpers (map, itemgetter, accumulate): a 128k-token history is over a
# thousand rows, and a Python loop over them costs ~0.1 ms a pass.
_KIND, _CHAT, _COST = itemgetter(1), itemgetter(2), itemgetter(3)


def _plain(rows: list[HistoryRow]) -> bool:
    return all(map("message".__eq__, map(_KIND, rows)))


def visible(rows: list[HistoryRow]) -> list[HistoryRow]:
    """What of a window of rows a prompt holds: deleted rows (which count toward the budget, as their
    place in the stored running totals does) are left out, and so are a function call that never
    completed (stored without chat JSON), a call's output whose call is not before it in the window
    (cut off, deleted, incomplete): upstreams refuse an answer to no call; and a call whose output is
    not in the window (deleted) though more followed it: upstreams refuse a call left unanswered. Calls
    the window ends with (and what the model said with them) wait for this turn's outputs."""
    kept = [r for r in rows if r[1] != "deleted"] if "deleted" in map(_KIND, rows) else rows
    kinds = set(map(_KIND, kept))
    if "function_call" not in kinds and "function_call_output" not in kinds:
        return kept
    answered = answered_in(kept)
    waiting: set[str] = set()  # the calls the window ends with: only assistant words (or nothing) after them
    for row in reversed(rows):  # deleted rows included: a deleted output ends what may still be waiting
        if row[1] == "function_call" and row[2]:
            waiting.add(_call_id(row[2], "id"))
        elif row[1] != "function_call" and not (row[1] == "message" and row[2].startswith(ASSISTANT_CHAT)):
            break
    calls: set[str] = set()
    shown: list[HistoryRow] = []
    for row in kept:
        if row[1] == "function_call":
            call_id = _call_id(row[2], "id") if row[2] else None
            if call_id is None or (call_id not in answered and call_id not in waiting):
                continue
            calls.add(call_id)
        elif row[1] == "function_call_output" and _call_id(row[2], "tool_call_id") not in calls:
            continue
        shown.append(row)
    return shown


def calls_in(rows: list[HistoryRow]) -> set[str]:
    """The ids of the function calls a prompt's history holds (a call that never completed has none)."""
    return {_call_id(r[2], "id") for r in rows if r[1] == "function_call" and r[2]}


def answered_in(rows: list[HistoryRow]) -> set[str]:
    """The ids of the calls the function call outputs among ``rows`` answer."""
    return {_call_id(r[2], "tool_call_id") for r in rows if r[1] == "function_call_output"}


def _call_id(chat: bytes, key: str) -> str:
    """The call id in a stored call's or output's chat JSON ("" if it has none)."""
    try:
        found = orjson.loads(chat).get(key)
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return found if isinstance(found, str) else ""


def _grow(sums: list[int], start: int, values: Iterable[int]) -> list[int]:
    """Running sums from ``start`` on, followed by those of ``values`` (a turn's few new rows)."""
    grown = sums[start:]
    for value in values:
        grown.append(grown[-1] + value)
    return grown


@dataclass(slots=True)
class Window:
    """The part of a path a turn's prompt was built from, ``path.rows[start:]``, deleted rows included:
    the history of the turn's own items once they are stored."""

    path: Path
    start: int
    coverage: int
    complete: bool

    def __len__(self) -> int:
        return len(self.path.rows) - self.start

    def grown(self, new: list[HistoryRow]) -> Path:
        """The path of the newest of ``new``, which were just written after this window. The rows' JSON
        must be exactly sized (orjson's own results keep a 4 kB buffer each: copy them first)."""
        path, start = self.path, self.start
        totals = _grow(path.totals, start, map(_COST, new))
        sizes = _grow(path.sizes, start, map(len, map(_CHAT, new)))
        return Path(path.owner, path.gen, path.rows[start:] + new, totals, sizes,
                    self.coverage + sum(map(_COST, new)), self.complete, path.plain and _plain(new),
                    time.monotonic())  # fmt: skip


class HistoryCache:
    """LRU by bytes: entries keyed by item id."""

    def __init__(self, max_bytes: int, retention_s: float = 0.0):
        self.max_bytes = max_bytes
        self.retention_s = retention_s  # 0: items are kept forever
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
            or (self.retention_s and self._past_retention(entry))
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(item_id)
        self.hits += 1
        return entry

    def _past_retention(self, entry: Path) -> bool:
        born = minted_at(entry.rows[0][0]) if entry.rows else None
        return born is None or born < time.time() - self.retention_s

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
