"""The budget cut of a history, against its definition written as a plain loop, on random histories."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatgpt_server.core.history import cut, path_from_store
from chatgpt_server.stores import HistoryRow

KINDS = ["message", "deleted", "function_call", "function_call_output"]


def _rows(spec: list[tuple[str, int]]) -> list[HistoryRow]:
    chat = b'{"role":"user","content":"x"}'
    return [(f"i{n}", kind, chat, cost, f"i{n - 1}" if n else None) for n, (kind, cost) in enumerate(spec)]


rows_strategy = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 50)), max_size=60).map(_rows)


def reference(rows: list[HistoryRow], budget: int) -> tuple[list[HistoryRow], bool]:
    """The newest rows whose costs fit, deleted ones counted but left out, no leading tool output."""
    used, start = 0, len(rows)
    while start > 0 and used + rows[start - 1][3] <= budget:
        start -= 1
        used += rows[start][3]
    kept = [r for r in rows[start:] if r[1] != "deleted"]
    while kept and kept[0][1] == "function_call_output":
        kept.pop(0)
    return kept, start > 0


@settings(max_examples=500, deadline=None)
@given(rows=rows_strategy, budget=st.integers(0, 400))
def test_cut_keeps_exactly_the_newest_rows_that_fit(rows: list[HistoryRow], budget: int) -> None:
    kept, left_out = cut(rows, budget)
    assert (kept, left_out) == reference(rows, budget)
    kept.append(("extra", "message", b"", 0, None))  # the caller's own list: the input is untouched
    assert all(r[0] != "extra" for r in rows)


@settings(max_examples=200, deadline=None)
@given(rows=rows_strategy, budget=st.integers(0, 400))
def test_a_path_from_the_store_counts_what_it_holds(rows: list[HistoryRow], budget: int) -> None:
    path = path_from_store("owner", 0, rows[::-1], budget)
    assert path.rows == rows
    assert path.coverage == max(budget, sum(r[3] for r in rows))
    assert path.complete == (not rows or rows[0][4] is None)
    assert path.size >= sum(len(r[2]) for r in rows)
