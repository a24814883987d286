"""The budget cut of a history and the growth of a cached path, against their definitions written as
plain loops, on random histories."""

from __future__ import annotations

import time
import uuid

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_server.core.history import MIN_ROWS, HistoryCache, Path, Window, path_from_store, visible
from chatgpt_server.core.items import mint, minted_at
from chatgpt_server.stores import HistoryRow

KINDS = ["message", "deleted", "function_call", "function_call_output", "incomplete_call", "assistant"]


def _chat(n: int, kind: str, answers: int) -> bytes:
    if kind == "incomplete_call":  # a call that never completed is stored without chat JSON
        return b""
    if kind == "function_call":  # call n; an output answers the call ``answers`` rows before it
        return orjson.dumps({"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}})
    if kind == "function_call_output":
        return orjson.dumps({"role": "tool", "tool_call_id": f"c{n - answers}", "content": "x"})
    role = "assistant" if kind == "assistant" else "user"
    return orjson.dumps({"role": role, "content": "x" * (1 + n % 3)})


def _rows(spec: list[tuple[str, int, int]], first: int = 0) -> list[HistoryRow]:
    named = {"incomplete_call": "function_call", "assistant": "message"}
    return [(f"i{n}", named.get(kind, kind), _chat(n, kind, answers), cost,
             f"i{n - 1}" if n else None)
            for n, (kind, cost, answers) in enumerate(spec, first)]  # fmt: skip


specs = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 50), st.integers(1, 4)), max_size=60)
rows_strategy = specs.map(_rows)


def reference(rows: list[HistoryRow], budget: int) -> tuple[list[HistoryRow], bool, int]:
    """The newest rows whose costs fit, deleted ones and calls that never completed counted but left
    out, no tool output without its call before it, and no call without its output unless nothing but
    calls and assistant words follow it (its output may come with the turn); whether any row was left
    out; the cost of what is kept."""
    used, start = 0, len(rows)
    while start > 0 and used + rows[start - 1][3] <= budget:
        start -= 1
        used += rows[start][3]
    outputs = {orjson.loads(r[2])["tool_call_id"] for r in rows[start:] if r[1] == "function_call_output"}
    waiting: set[str] = set()
    for row in rows[start:][::-1]:
        if (row[1] == "message" and orjson.loads(row[2])["role"] != "assistant") or row[1] in (
            "deleted",
            "function_call_output",
        ):
            break
        if row[1] == "function_call" and row[2]:
            waiting.add(orjson.loads(row[2])["id"])
    kept: list[HistoryRow] = []
    for row in rows[start:]:
        if row[1] == "deleted" or (row[1] == "function_call" and not row[2]):
            continue
        if row[1] == "function_call" and orjson.loads(row[2])["id"] not in outputs | waiting:
            continue
        if row[1] == "function_call_output":
            answered = orjson.loads(row[2])["tool_call_id"]
            if not any(r[1] == "function_call" and orjson.loads(r[2])["id"] == answered for r in kept):
                continue
        kept.append(row)
    return kept, start > 0, sum(r[3] for r in kept)


def window(path: Path, budget: int) -> tuple[list[HistoryRow], bool, int]:
    """What a turn takes of ``path`` (as ``Turns._open`` does)."""
    start = path.fit(budget)
    kept = path.rows[start:]
    if path.plain:
        return kept, start > 0, path.cost(start)
    kept = visible(kept)
    return kept, start > 0, sum(r[3] for r in kept)


@settings(max_examples=500, deadline=None)
@given(rows=rows_strategy, budget=st.integers(0, 400))
def test_the_cut_keeps_exactly_the_newest_rows_that_fit(rows: list[HistoryRow], budget: int) -> None:
    path = path_from_store("owner", 0, rows[::-1], budget)
    assert window(path, budget) == reference(rows, budget)
    assert path.plain == all(r[1] == "message" for r in rows)


@settings(max_examples=200, deadline=None)
@given(rows=rows_strategy, budget=st.integers(0, 400))
def test_a_path_from_the_store_counts_what_it_holds(rows: list[HistoryRow], budget: int) -> None:
    path = path_from_store("owner", 0, rows[::-1], budget)
    assert path.rows == rows
    assert path.coverage == max(budget, sum(r[3] for r in rows))
    assert path.complete == (not rows or rows[0][4] is None)
    assert path.size >= sum(len(r[2]) for r in rows)


@settings(max_examples=300, deadline=None)
@given(old=specs, new=specs.filter(bool), budget=st.integers(0, 400), later=st.integers(0, 400))
def test_a_grown_path_is_the_path_of_its_rows(
    old: list[tuple[str, int, int]], new: list[tuple[str, int, int]], budget: int, later: int
) -> None:
    """A turn's path, grown from the window its prompt was cut from, cuts later budgets as a path
    read from the store with the same rows would, and counts the same bytes."""
    rows = _rows(old)
    path = path_from_store("owner", 3, rows[::-1], budget)
    start = path.fit(budget)
    added = _rows(new, len(rows))
    grown = Window(path, start, budget, start == 0).grown(added)
    expected = rows[start:] + added
    fresh = path_from_store("owner", 3, expected[::-1], 0)
    assert grown.rows == expected
    assert (grown.owner, grown.gen, grown.complete) == ("owner", 3, start == 0)
    assert grown.coverage == budget + sum(r[3] for r in added)
    assert grown.plain == (path.plain and fresh.plain)  # never plain unless it is; a window cut from a path
    # that was not may be (a deleted row fell out of it), and is still scanned
    assert grown.size == fresh.size
    assert window(grown, later) == window(fresh, later) == reference(expected, later)
    assert path.rows == rows  # the path it grew from is untouched (it may still be cached)


def _minted(prefix: str, stamp_ms: int) -> str:
    return f"{prefix}{stamp_ms:012x}{'ab' * 10}"


def test_a_path_whose_oldest_item_is_past_retention_is_read_from_the_store_again() -> None:
    """The store deletes items past the retention period; an instance that kept their path in memory
    (one a follow-up grows keeps being refreshed) must not send them on: it reads the store, as every
    other instance does. The age is read from the ids, which ``mint`` stamps."""
    now_ms = int(time.time() * 1000)
    day = 86_400_000
    for mint_id, expected in ((mint("msg_"), now_ms), (mint("uuid"), now_ms), (mint("chatcmpl-"), now_ms)):
        found = minted_at(mint_id)
        assert found is not None and abs(found * 1000 - expected) < 5_000, mint_id
    assert minted_at("u1") is None and minted_at("chatcmpl-7") is None and minted_at("x" * 40) is None
    assert minted_at(str(uuid.uuid4())) is None  # the original's ids, kept by the migration: not ours
    assert minted_at("other_" + "0" * 32) is None and minted_at(_minted("msg_", 2**47)) is None  # far future

    def path_of(first_id: str) -> Path:
        rows: list[HistoryRow] = [(first_id, "message", b'{"role":"user","content":"q"}', 5, None)]
        rows += [(f"i{n}", "message", b'{"role":"user","content":"q"}', 5, f"i{n - 1}" if n else first_id)
                 for n in range(MIN_ROWS)]  # fmt: skip
        return path_from_store("o", 0, rows[::-1], 10_000)

    cache = HistoryCache(1 << 20, retention_s=30 * 86_400)
    young, old = _minted("msg_", now_ms - 29 * day), _minted("msg_", now_ms - 31 * day)
    legacy = str(uuid.UUID("9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f"))  # a v4 UUID that reads as the year 7529
    for first, kept in ((young, True), (old, False), ("v1-id", False), (legacy, False)):
        cache.put(first, path_of(first))
        assert (cache.get(first, "o", 0, 100) is not None) is kept, first
    forever = HistoryCache(1 << 20)  # retention off: the age does not matter
    forever.put(old, path_of(old))
    assert forever.get(old, "o", 0, 100) is not None
