"""One contract, every store: SQLite, Redis and PostgreSQL, against the real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
import redis

from chatgpt_server.core.items import Item
from chatgpt_server.core.leases import Leases
from chatgpt_server.errors import StoreUnavailable
from chatgpt_server.stores import NewItem, Record, Store, TurnWrite, open_store
from chatgpt_server.stores.base import MAX_WALK
from chatgpt_server.stores.redis import RedisStore

from .shared_stores import POSTGRES_PORT, REDIS_PORT, store_url
from .tcp_proxy import TCPProxy

T = TypeVar("T")
KINDS = ["sqlite", "redis", "postgresql"]


def run(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coro

    return asyncio.run(wrap())


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def with_store(url: str, body: Callable[[Store], Awaitable[T]], retention_days: float = 30, timeout: float = 2) -> T:
    async def go() -> T:
        store = open_store(url, retention_days, timeout)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return run(go())


def new(text: str, role: str = "user", cost: int = 10, kind: str = "message") -> NewItem:
    item = Item(f"i-{uuid.uuid4().hex[:10]}", kind, role, text, call_id="call_1" if kind != "message" else None,
                name="f" if kind == "function_call" else None)  # fmt: skip
    return NewItem(item, item.chat(), cost)


def turn(parent: str | None, *items: NewItem, owner: str = "owner-a", conversation: str = "conv-1",
         created: float | None = None, **extra: Any) -> TurnWrite:  # fmt: skip
    when = created if created is not None else time.time()
    return TurnWrite(owner=owner, conversation_id=conversation, parent_id=parent, enc="o200k_base", origin="1",
                     created_at=when, items=list(items), **extra)  # fmt: skip


async def chain(
    store: Store, turns: int, owner: str = "owner-a", cost: int = 10, parent: str | None = None
) -> list[str]:
    """A linear conversation of ``turns`` user/assistant pairs; all ids, oldest first."""
    ids: list[str] = []
    for i in range(turns):
        user, reply = new(f"question {i}", cost=cost), new(f"answer {i} ✓ 你好", "assistant", cost=cost)
        await store.add_turn(turn(parent, user, reply, owner=owner))
        ids += [user.item.id, reply.item.id]
        parent = reply.item.id
    return ids


def ids_of(rows: list[Any]) -> list[str]:
    return [r[0] for r in rows]


# -- items -----------------------------------------------------------------------------------------
def test_turn_round_trips_and_belongs_to_its_owner(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        user, reply = new("question ✓ 你好"), new("partial", "assistant")
        reply.item.status = "incomplete"
        reply.item.meta = {"web": ["c", "m"]}
        await store.add_turn(turn(None, user, reply))
        got = await store.get_item("owner-a", reply.item.id)
        assert got is not None
        shown = (got.item.text, got.item.role, got.item.status, got.item.meta)
        assert shown == ("partial", "assistant", "incomplete", {"web": ["c", "m"]})
        assert (got.parent_id, got.conversation_id, got.cost, got.origin) == (user.item.id, "conv-1", 10, "1")
        first = await store.get_item("owner-a", user.item.id)
        assert first is not None and first.item.text == "question ✓ 你好" and first.parent_id is None
        assert await store.get_item("owner-b", reply.item.id) is None
        assert await store.get_item("owner-a", "missing") is None

    with_store(store_url(kind, tmp_path), body)


def test_every_item_kind_round_trips(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        image = new("look", cost=800)
        picture = {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
        image.item.parts = [{"type": "input_text", "text": "look"}, picture]
        image = NewItem(image.item, image.item.chat(), 800)
        call = new('{"x": 1}', "assistant", kind="function_call")
        output = new("42", "tool", kind="function_call_output")
        await store.add_turn(turn(None, image, call, output))
        got = await store.get_items("owner-a", [output.item.id, call.item.id, image.item.id, "missing"])
        assert [g.item.id for g in got] == [output.item.id, call.item.id, image.item.id]
        assert got[1].item.kind == "function_call" and got[1].item.name == "f" and got[1].item.call_id == "call_1"
        assert got[0].item.kind == "function_call_output" and got[0].item.text == "42"
        assert got[2].item.parts is not None and got[2].item.parts[1]["image_url"] == "https://x/y.png"
        rows = await store.history("owner-a", output.item.id, 10_000)
        assert [r[1] for r in rows] == ["function_call_output", "function_call", "message"]
        assert orjson.loads(rows[2][2])["content"][1]["image_url"]["url"] == "https://x/y.png"

    with_store(store_url(kind, tmp_path), body)


def test_writing_the_same_turn_twice_is_one_turn(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        write = turn(None, new("q"), new("a", "assistant"))
        await store.add_turn(write)
        await store.add_turn(write)  # a retry after a lost answer
        items = await store.conversation_items("owner-a", "conv-1", None, 100, False)
        assert [i.item.id for i in items] == [n.item.id for n in write.items]

    with_store(store_url(kind, tmp_path), body)


def test_concurrent_turns_all_land(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        turns = [turn(None, new(f"q{i}"), new(f"a{i}", "assistant")) for i in range(50)]
        results = await asyncio.gather(*(store.add_turn(t) for t in turns), return_exceptions=True)
        assert results == [None] * 50
        for t in turns:
            assert (await store.get_item("owner-a", t.items[1].item.id)) is not None

    with_store(store_url(kind, tmp_path), body)


def test_history_is_newest_first_and_stops_at_the_budget(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = await chain(store, 10, cost=10)
        newest = ids[-1]
        everything = await store.history("owner-a", newest, 10_000)
        assert ids_of(everything) == ids[::-1]
        assert everything[0][4] == ids[-2] and everything[-1][4] is None  # parent ids; the root has none
        assert orjson.loads(everything[0][2]) == {"role": "assistant", "content": "answer 9 ✓ 你好"}
        assert ids_of(await store.history("owner-a", newest, 55)) == ids[::-1][:5]
        assert ids_of(await store.history("owner-a", newest, 50)) == ids[::-1][:5]
        assert ids_of(await store.history("owner-a", newest, 49)) == ids[::-1][:4]
        # The named item always comes back, even over the budget.
        assert ids_of(await store.history("owner-a", newest, 1)) == [newest]
        assert await store.history("owner-b", newest, 10_000) == []
        assert await store.history("owner-a", "missing", 10_000) == []
        middle = ids[9]  # history of an item in the middle: its ancestors only
        assert ids_of(await store.history("owner-a", middle, 10_000)) == ids[:10][::-1]

    with_store(store_url(kind, tmp_path), body)


def test_forks_keep_each_branch_its_own_history(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        trunk = await chain(store, 5)
        fork_at = trunk[3]  # answer 1: a second answer to it starts a branch
        branch_a = await chain(store, 3, parent=fork_at)
        branch_b = await chain(store, 2, parent=fork_at)
        deeper = await chain(store, 2, parent=branch_a[1])  # a fork of the fork
        trunk_more = await chain(store, 2, parent=trunk[-1])
        expect_a = trunk[:4] + branch_a
        assert ids_of(await store.history("owner-a", branch_a[-1], 10_000)) == expect_a[::-1]
        expect_b = trunk[:4] + branch_b
        assert ids_of(await store.history("owner-a", branch_b[-1], 10_000)) == expect_b[::-1]
        expect_deep = trunk[:4] + branch_a[:2] + deeper
        assert ids_of(await store.history("owner-a", deeper[-1], 10_000)) == expect_deep[::-1]
        assert ids_of(await store.history("owner-a", trunk_more[-1], 10_000)) == (trunk + trunk_more)[::-1]
        # The budget cut works across forks: 7 items of cost 10.
        assert ids_of(await store.history("owner-a", deeper[-1], 70)) == expect_deep[::-1][:7]
        assert await store.path_ids("owner-a", deeper[-1]) == expect_deep[::-1]

    with_store(store_url(kind, tmp_path), body)


def test_two_answers_written_at_once_to_one_item_both_land(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        trunk = await chain(store, 2)
        racers = [turn(trunk[-1], new(f"q{i}"), new(f"a{i}", "assistant")) for i in range(8)]
        assert await asyncio.gather(*(store.add_turn(t) for t in racers)) == [None] * 8
        for racer in racers:
            tip = racer.items[-1].item.id
            assert ids_of(await store.history("owner-a", tip, 10_000)) == [tip, racer.items[0].item.id, *trunk[::-1]]

    with_store(store_url(kind, tmp_path), body)


def test_answers_to_one_item_from_two_instances_at_once_all_land(kind: str, tmp_path: Path) -> None:
    """Two instances (two store objects), each writing a group of answers to the same item at once:
    the groups collide on the item's next place, and every answer still lands, on a branch of its own."""
    url = store_url(kind, tmp_path)

    async def body(store: Store) -> None:
        other = open_store(url, 30, 2)
        await other.open()
        try:
            tip = (await chain(store, 1))[-1]
            await other.get_item("owner-a", tip)  # both connected before the race
            for _ in range(8):
                ids = await chain(store, 1, parent=tip)
                tip = ids[-1]  # an item nobody answered yet
                racers = [turn(tip, new(f"q{i}"), new(f"a{i}", "assistant")) for i in range(12)]
                writes = [(store if i % 2 else other).add_turn(t) for i, t in enumerate(racers)]
                assert await asyncio.gather(*writes) == [None] * 12
                for racer in racers:
                    end = racer.items[-1].item.id
                    got = ids_of(await store.history("owner-a", end, 10_000))
                    assert got[:4] == [end, racer.items[0].item.id, ids[1], ids[0]]
        finally:
            await other.close()

    with_store(url, body)


def test_history_never_crosses_into_another_owner(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        theirs = await chain(store, 1, owner="owner-b")
        mine = await chain(store, 1, parent=theirs[-1])
        assert ids_of(await store.history("owner-a", mine[-1], 10_000)) == mine[::-1]

    with_store(store_url(kind, tmp_path), body)


def test_deep_history_in_one_call(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = await chain(store, 500, cost=1)
        rows = await store.history("owner-a", ids[-1], 10_000_000)
        assert len(rows) == 1000 and rows[-1][0] == ids[0]

    with_store(store_url(kind, tmp_path), body)


def test_deleted_items_count_but_are_marked(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {}, None, 1.0, 1.0), None)
        ids = await chain(store, 3)
        assert await store.delete_item("owner-a", "conv-1", ids[2])
        assert not await store.delete_item("owner-a", "conv-1", ids[2])  # once
        assert not await store.delete_item("owner-b", "conv-1", ids[3])
        rows = await store.history("owner-a", ids[-1], 10_000)
        assert [r[1] for r in rows] == ["message", "message", "message", "deleted", "message", "message"]
        assert ids_of(await store.history("owner-a", ids[-1], 40)) == ids[::-1][:4]  # the deleted one counts
        listed = await store.conversation_items("owner-a", "conv-1", None, 100, False)
        assert [i.item.id for i in listed] == ids[:2] + ids[3:]
        item = await store.get_item("owner-a", ids[-1])
        assert item is not None and item.gen == 1  # the conversation counts its deletions
        assert ids[2] not in await store.path_ids("owner-a", ids[-1])

    with_store(store_url(kind, tmp_path), body)


def test_conversation_items_page_both_ways(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        ids = await chain(store, 6)
        await chain(store, 2, owner="owner-b")
        first = await store.conversation_items("owner-a", "conv-1", None, 5, False)
        assert [i.item.id for i in first] == ids[:5]
        rest = await store.conversation_items("owner-a", "conv-1", first[-1].seq, 100, False)
        assert [i.item.id for i in rest] == ids[5:]
        newest = await store.conversation_items("owner-a", "conv-1", None, 3, True)
        assert [i.item.id for i in newest] == ids[::-1][:3]
        older = await store.conversation_items("owner-a", "conv-1", newest[-1].seq, 100, True)
        assert [i.item.id for i in older] == ids[::-1][3:]
        assert await store.conversation_items("owner-b", "conv-1", None, 100, False) != []
        assert await store.conversation_items("owner-a", "conv-none", None, 100, False) == []

    with_store(store_url(kind, tmp_path), body)


def test_a_corrupted_cycle_cannot_make_a_walk_endless(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    ids = with_store(url, lambda s: chain(s, 3))
    corrupt(kind, url, child=ids[0], parent=ids[-1])  # the root now claims the tip as its parent

    async def body(store: Store) -> None:
        started = time.monotonic()
        rows = await store.history("owner-a", ids[-1], 10_000_000)
        walked = await store.path_ids("owner-a", ids[-1])
        assert time.monotonic() - started < 5
        assert len(rows) <= MAX_WALK and len(walked) <= MAX_WALK
        assert ids_of(rows) == ids[::-1] and walked == ids[::-1]  # each item once, then the walk stops

    with_store(url, body)


def corrupt(kind: str, url: str, child: str, parent: str) -> None:
    """Make ``child`` claim ``parent``: what no code of ours writes, as a damaged store might hold."""
    if kind == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE items SET parent_id = ? WHERE id = ?", (parent, child))
    elif kind == "redis":
        prefix = url.split("prefix=")[1]
        redis.Redis(port=REDIS_PORT).hset(f"{prefix}i:{child}", "p", parent)
    else:
        schema = url.split("search_path=")[1]

        async def update() -> None:
            conn = await asyncpg.connect(f"postgresql://127.0.0.1:{POSTGRES_PORT}/test")
            await conn.execute(f"UPDATE {schema}.items SET parent_id = $1 WHERE id = $2", parent, child)  # noqa: S608
            await conn.close()

        run(update())


# -- records ---------------------------------------------------------------------------------------
def test_records_insert_once_and_compare_and_set(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        record = Record("account", "acct-1", "", {"email": "a@example.com"}, None, 10.0, 10.0)
        assert await store.put_record(record, None)
        assert not await store.put_record(record, None)  # only if absent
        got = await store.get_record("account", "acct-1")
        assert got is not None and got.version == 1 and got.body == {"email": "a@example.com"}
        changed = Record("account", "acct-1", "", {"email": "b@example.com"}, "tip", 10.0, 11.0, 1, 0)
        assert await store.put_record(changed, 1)
        assert not await store.put_record(changed, 1)  # the version moved on: a stale writer loses
        got = await store.get_record("account", "acct-1")
        assert got is not None and (got.version, got.body["email"], got.tip) == (2, "b@example.com", "tip")
        assert await store.get_record("response", "acct-1") is None  # kinds are apart
        assert await store.delete_record("account", "acct-1")
        assert not await store.delete_record("account", "acct-1")
        assert await store.get_record("account", "acct-1") is None

    with_store(store_url(kind, tmp_path), body)


def test_concurrent_compare_and_set_has_one_winner(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.put_record(Record("account", "a", "", {"n": 0}, None, 1.0, 1.0), None)
        racers = [Record("account", "a", "", {"n": i}, None, 1.0, 2.0) for i in range(20)]
        won = await asyncio.gather(*(store.put_record(r, 1) for r in racers))
        assert sum(won) == 1

    with_store(store_url(kind, tmp_path), body)


def test_records_list_by_owner_newest_first_in_pages(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        for i in range(7):
            await store.put_record(Record("conversation", f"c{i}", "owner-a", {}, None, 100.0 + i, 100.0 + i), None)
        await store.put_record(Record("conversation", "other", "owner-b", {}, None, 200.0, 200.0), None)
        page = await store.list_records("conversation", "owner-a", None, 3, True)
        assert [r.id for r in page] == ["c6", "c5", "c4"]
        page = await store.list_records("conversation", "owner-a", page[-1].id, 10, True)
        assert [r.id for r in page] == ["c3", "c2", "c1", "c0"]
        page = await store.list_records("conversation", "owner-a", "c4", 2, False)
        assert [r.id for r in page] == ["c5", "c6"]

    with_store(store_url(kind, tmp_path), body)


def test_a_turn_writes_its_response_and_moves_its_conversation(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {"metadata": {}}, None, 1.0, 1.0), None)
        user, reply = new("q"), new("a", "assistant")
        response = Record("response", "resp_1", "owner-a", {"status": "completed"}, reply.item.id, 5.0, 5.0)
        await store.add_turn(turn(None, user, reply, response=response, response_id="resp_1",
                                  conversation_tip="conv-1"))  # fmt: skip
        got = await store.get_record("response", "resp_1")
        assert got is not None and got.tip == reply.item.id and got.body == {"status": "completed"}
        conversation = await store.get_record("conversation", "conv-1")
        assert conversation is not None and conversation.tip == reply.item.id
        # The response's last item, as get_item gives it (with the conversation's deletion counter).
        assert await store.delete_item("owner-a", "conv-1", user.item.id)
        last = await store.response_item("owner-a", "resp_1")
        assert last is not None and last.item.id == reply.item.id and last.item.text == "a" and last.gen == 1
        assert last == await store.get_item("owner-a", reply.item.id)
        assert await store.response_item("owner-b", "resp_1") is None  # someone else's
        assert await store.response_item("owner-a", "resp_unknown") is None
        assert await store.response_item("owner-a", "resp_\x00") is None

    with_store(store_url(kind, tmp_path), body)


def test_the_conversation_tip_moves_only_from_the_tip_and_each_move_is_a_new_version(kind: str, tmp_path: Path) -> None:
    """A turn through another door moves the tip when it continues from it (not from an older
    item); every move, and every item deletion, changes the version, so a metadata update that read
    the record before cannot put the old tip back."""

    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {"metadata": {}}, None, 1.0, 1.0), None)
        await store.add_turn(turn(None, a := new("q1"), b := new("a1", "assistant"), conversation_tip="conv-1"))
        first = await store.get_record("conversation", "conv-1")
        assert first is not None and (first.tip, first.version) == (b.item.id, 2)
        await store.add_turn(turn(b.item.id, new("q2"), c := new("a2", "assistant")))  # from the tip
        moved = await store.get_record("conversation", "conv-1")
        assert moved is not None and (moved.tip, moved.version) == (c.item.id, 3)
        await store.add_turn(turn(a.item.id, new("fork"), new("fork a", "assistant")))  # from an older item
        kept = await store.get_record("conversation", "conv-1")
        assert kept is not None and (kept.tip, kept.version) == (c.item.id, 3)
        stale = Record("conversation", "conv-1", "owner-a", {"metadata": {"k": "v"}}, b.item.id, 1.0, 9.0, 2, 0)
        assert not await store.put_record(stale, 2)  # read before the move: refused
        assert await store.delete_item("owner-a", "conv-1", a.item.id)
        deleted = await store.get_record("conversation", "conv-1")
        assert deleted is not None and (deleted.gen, deleted.version) == (1, 4)
        assert not await store.put_record(stale, 3)

    with_store(store_url(kind, tmp_path), body)


def test_a_turn_written_under_a_lease_another_took_is_refused_in_the_write(network_kind: str, tmp_path: Path) -> None:
    """A network store checks, in the write itself, that the lease a conversation's turn was answered under
    is still that one: a write that reaches the store late (sent before a partition, landing after it) must
    not put the turn after another instance's, which took the lease meanwhile."""

    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {"metadata": {}}, None, 1.0, 1.0), None)
        lease = Record("lease", "conversation:conv-1", "", {"holder": "b", "until": 2e9, "lease": "theirs"}, None,
                       1.0, 1.0)  # fmt: skip
        assert await store.put_record(lease, None)
        late = turn(None, new("late"), new("late answer", "assistant"), conversation_tip="conv-1",
                    lease=("conversation:conv-1", "mine"))  # fmt: skip
        with pytest.raises(StoreUnavailable) as lost:
            await store.add_turn(late)
        assert lost.value.key == "conversation_lease_lost"
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip is None  # nothing written
        assert await store.get_item("owner-a", late.items[0].item.id) is None
        assert await store.delete_record("lease", "conversation:conv-1")
        with pytest.raises(StoreUnavailable):  # a lease given back is no one's: the write is refused too
            await store.add_turn(late)
        ours = dataclasses.replace(lease, body={**lease.body, "lease": "mine"})
        assert await store.put_record(ours, None)
        await store.add_turn(late)  # under its own lease: written
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip == late.items[-1].item.id

    with_store(store_url(network_kind, tmp_path), body)


def test_deleting_a_conversations_last_items_moves_its_tip_to_what_is_left(kind: str, tmp_path: Path) -> None:
    """The tip deleted (in any order of the last items): it moves to its nearest ancestor still there, so
    a turn from the last item a client sees continues the conversation (not a branch it never lists)."""

    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {"metadata": {}}, None, 1.0, 1.0), None)
        await store.add_turn(turn(None, new("one"), a := new("echo one", "assistant"), conversation_tip="conv-1"))
        await store.add_turn(turn(a.item.id, q := new("two"), b := new("echo two", "assistant"),
                                  conversation_tip="conv-1"))  # fmt: skip
        assert await store.delete_item("owner-a", "conv-1", q.item.id)  # not the tip: the tip stays
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip == b.item.id
        assert await store.delete_item("owner-a", "conv-1", b.item.id)  # the tip: up past the deleted q
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip == a.item.id
        await store.add_turn(turn(a.item.id, new("three"), c := new("echo three", "assistant")))  # from the tip
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip == c.item.id

    with_store(store_url(kind, tmp_path), body)


def test_a_turn_that_keeps_the_tip_is_stored_and_moves_nothing(kind: str, tmp_path: Path) -> None:
    """A reply that failed before any output is stored (its input, its response) without moving its
    conversation's tip, even when it continued from the tip."""

    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {"metadata": {}}, None, 1.0, 1.0), None)
        await store.add_turn(turn(None, new("q1"), b := new("a1", "assistant"), conversation_tip="conv-1"))
        response = Record("response", "resp-kept", "owner-a", {"status": "failed"}, None, 2.0, 2.0)
        lost = new("lost")
        await store.add_turn(turn(b.item.id, lost, keep_tip=True, response=response, response_id="resp-kept"))
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and (record.tip, record.version) == (b.item.id, 2)
        assert ids_of(await store.history("owner-a", lost.item.id, 10_000))[:2] == [lost.item.id, b.item.id]
        assert await store.get_record("response", "resp-kept") is not None

    with_store(store_url(kind, tmp_path), body)


def test_a_turn_that_opens_its_record_makes_one_listed_and_leaves_one_that_exists(kind: str, tmp_path: Path) -> None:
    """The original route's turns give their conversation a record if it has none (listed at once,
    tip where the turn left it); after that the tip moves by the rule every door follows: a turn
    from an older item is a branch, a turn that failed before any output moves nothing."""

    async def body(store: Store) -> None:
        assert await store.list_records("conversation", "owner-a", None, 10, True) == []
        first = turn(None, a := new("q1"), b := new("a1", "assistant"), opens_record=True, created=5.0)
        await store.add_turn(first)
        made = await store.get_record("conversation", "conv-1")
        assert made is not None and (made.owner, made.tip, made.version, made.body) == (
            "owner-a",
            b.item.id,
            1,
            {"metadata": {}},
        )
        assert made.created_at == made.updated_at == 5.0
        listed = await store.list_records("conversation", "owner-a", None, 10, True)
        assert [r.id for r in listed] == ["conv-1"]
        await store.add_turn(turn(b.item.id, new("branch A"), c := new("A", "assistant"), opens_record=True))
        await store.add_turn(turn(b.item.id, new("branch B"), new("B", "assistant"), opens_record=True))
        moved = await store.get_record("conversation", "conv-1")
        assert moved is not None and (moved.tip, moved.version) == (c.item.id, 2)  # B is a branch
        await store.add_turn(turn(c.item.id, new("failed before its words"), opens_record=True, keep_tip=True))
        kept = await store.get_record("conversation", "conv-1")
        assert kept is not None and (kept.tip, kept.version) == (c.item.id, 2)
        await store.add_turn(turn(None, new("lost"), conversation="conv-2", opens_record=True, keep_tip=True))
        empty = await store.get_record("conversation", "conv-2")
        assert empty is not None and empty.tip is None
        assert await store.get_record("conversation", "conv-3") is None
        await store.add_turn(turn(a.item.id, new("no record asked"), conversation="conv-3"))
        assert await store.get_record("conversation", "conv-3") is None

    with_store(store_url(kind, tmp_path), body)


def test_a_record_is_deleted_only_at_the_version_asked(kind: str, tmp_path: Path) -> None:
    async def body(store: Store) -> None:
        await store.put_record(Record("lease", "l1", "", {"holder": "a"}, None, 1.0, 1.0), None)
        await store.put_record(Record("lease", "l1", "", {"holder": "b"}, None, 1.0, 2.0, 1), 1)  # taken over
        assert not await store.delete_record("lease", "l1", 1)  # the first holder's version is gone
        assert await store.get_record("lease", "l1") is not None
        assert await store.delete_record("lease", "l1", 2)
        assert await store.get_record("lease", "l1") is None

    with_store(store_url(kind, tmp_path), body)


@pytest.mark.parametrize("sql_kind", ["sqlite", "postgresql"])  # Redis gives them a TTL of their own
def test_purge_removes_short_lived_records_whatever_the_retention(sql_kind: str, tmp_path: Path) -> None:
    old = time.time() - 2 * 3600

    async def body(store: Store) -> None:
        for kind_ in ("device", "lease"):
            await store.put_record(Record(kind_, "old", "", {}, None, old, old), None)
            await store.put_record(Record(kind_, "new", "", {}, None, time.time(), time.time()), None)
        await store.put_record(Record("conversation", "c", "o", {}, None, old, old), None)
        assert await store.purge(0.0) == 2  # retention off: conversations stay
        assert [await store.get_record(k, i) is None for k in ("device", "lease") for i in ("old", "new")] == [
            True, False, True, False
        ]  # fmt: skip
        assert await store.get_record("conversation", "c") is not None

    with_store(store_url(sql_kind, tmp_path), body)


def test_sqlite_writes_wait_for_another_process_holding_the_lock(tmp_path: Path) -> None:
    """A worker process holding the write lock for a moment: record writes wait for it (off the
    event loop) instead of failing."""
    import threading

    url = store_url("sqlite", tmp_path)
    with_store(url, lambda s: s.ping())
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    timer = threading.Timer(0.3, lambda: holder.execute("COMMIT"))

    async def body(store: Store) -> tuple[bool, bool, bool]:
        holder.execute("BEGIN IMMEDIATE")  # once the store is open: its writes meet the lock
        timer.start()
        put = await store.put_record(Record("conversation", "c", "o", {}, None, 1.0, 1.0), None)
        return (
            put,
            await store.delete_record("conversation", "c"),
            await store.put_record(Record("lease", "x", "", {}, None, 1.0, 1.0), None),
        )

    try:
        assert with_store(url, body) == (True, True, True)
    finally:
        if timer.ident is not None:
            timer.join()
        holder.close()


def test_a_conversation_write_goes_after_the_tip_as_it_is_at_the_write(kind: str, tmp_path: Path) -> None:
    """A turn (or added items) of a conversation is written after its tip as it is when written, even if
    another door moved the tip since the turn read it: both stay in the conversation's line."""

    async def body(store: Store) -> None:
        await store.put_record(Record("conversation", "conv-1", "owner-a", {}, None, 1.0, 1.0), None)
        a, b, c = new("a"), new("b"), new("c", "assistant")
        await store.add_turn(turn(None, a, conversation_tip="conv-1"))
        await store.add_turn(turn(a.item.id, b))  # another door, from the tip: the tip moves to b
        await store.add_turn(turn(a.item.id, c, conversation_tip="conv-1"))  # it read the tip when it was a
        record = await store.get_record("conversation", "conv-1")
        assert record is not None and record.tip == c.item.id
        assert ids_of(await store.history("owner-a", c.item.id, 10_000)) == [c.item.id, b.item.id, a.item.id]
        d = new("d")  # a stale parent that is not the owner's item of this conversation changes nothing
        await store.add_turn(turn(c.item.id, d, conversation_tip="conv-1"))
        assert ids_of(await store.history("owner-a", d.item.id, 10_000))[:2] == [d.item.id, c.item.id]

    with_store(store_url(kind, tmp_path), body)


def test_nul_characters_are_kept_or_stand_in_and_never_break_a_store(kind: str, tmp_path: Path) -> None:
    """A question or reply holding NUL (PostgreSQL text cannot) is stored, its prompt JSON exact; an id
    holding NUL (none of ours does) is simply not found, on every store."""

    async def body(store: Store) -> None:
        user, reply = new("before\x00after"), new("answer\x00", "assistant")
        await store.add_turn(turn(None, user, reply))
        got = await store.get_item("owner-a", reply.item.id)
        assert got is not None and got.item.text in ("answer\x00", "answer\ufffd")
        rows = await store.history("owner-a", reply.item.id, 10_000)
        assert sorted(orjson.loads(r[2])["content"] for r in rows) == ["answer\x00", "before\x00after"]
        bad = "x\x00y"
        assert await store.get_item("owner-a", bad) is None and await store.get_items("owner-a", [bad]) == []
        assert await store.history("owner-a", bad, 100) == [] and await store.path_ids("owner-a", bad) == []
        assert await store.conversation_items("owner-a", bad, None, 10, False) == []
        assert not await store.delete_item("owner-a", bad, bad)
        assert await store.get_record("conversation", bad) is None
        assert not await store.delete_record("conversation", bad)

    with_store(store_url(kind, tmp_path), body)


# -- the store itself --------------------------------------------------------------------------------
def test_shared_secret_is_kept_once(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)

    async def body(store: Store) -> tuple[bytes, bytes, bytes]:
        kept = await store.shared_secret(b"first"), await store.shared_secret(b"second")
        return (*kept, await store.shared_secret(b"mark" + kept[1], "owner_key_mark"))  # each name its own

    assert with_store(url, body) == (b"first", b"first", b"markfirst")
    assert with_store(url, body) == (b"first", b"first", b"markfirst")  # and across opens


def test_instances_starting_together_agree_on_one_shared_secret(kind: str, tmp_path: Path) -> None:
    """Several instances open a store that has no secret yet, at once: each proposes its own and all
    get the same one (PostgreSQL's insert-and-read once gave the losers nothing to read)."""
    for _ in range(4):
        url = store_url(kind, tmp_path)
        with_store(url, lambda s: s.ping())  # migrated, no secret yet

        async def together(url: str = url) -> list[bytes]:
            stores = [open_store(url, 30) for _ in range(6)]
            await asyncio.gather(*(s.open() for s in stores))
            try:
                return await asyncio.gather(*(s.shared_secret(bytes([i]) * 8) for i, s in enumerate(stores)))
            finally:
                await asyncio.gather(*(s.close() for s in stores))

        secrets = run(together())
        assert len(set(secrets)) == 1 and secrets[0] in {bytes([i]) * 8 for i in range(6)}


def test_reopening_keeps_data(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    ids = with_store(url, lambda s: chain(s, 2))
    assert ids_of(with_store(url, lambda s: s.history("owner-a", ids[-1], 10_000))) == ids[::-1]


def test_version_1_data_is_migrated(kind: str, tmp_path: Path) -> None:
    """Conversations written by the previous release (one row or key per message) stay readable and
    continuable, mode-2 web ids included."""
    url = store_url(kind, tmp_path)
    old = [  # id, parent, conversation, owner, mode, role, text, cl100k, o200k, incomplete, created
        ("u1", None, "c1", "owner-a", "1", "user", "hello", 5, 6, False, 100.0),
        ("r1", "u1", "c1", "owner-a", "1", "assistant", "hi there", 6, 7, False, 100.0),
        ("u2", "r1", "c1", "owner-a", "1", "user", "again", 5, 6, False, 101.0),
        ("r2", "u2", "c1", "owner-a", "1", "assistant", "yes", 5, 5, True, 101.0),
        ("w1", None, "webconv", "owner-a", "2", "user", "web q", 5, 6, False, 102.0),
        ("w2", "w1", "webconv", "owner-a", "2", "assistant", "web a", 5, 6, False, 102.0),
    ]
    write_v1(kind, url, old)

    async def body(store: Store) -> None:
        rows = await store.history("owner-a", "r2", 10_000)
        assert ids_of(rows) == ["r2", "u2", "r1", "u1"] and [r[3] for r in rows] == [5, 6, 7, 6]
        r2 = await store.get_item("owner-a", "r2")
        assert r2 is not None and r2.item.status == "incomplete" and r2.origin == "1"
        web = await store.get_item("owner-a", "w2")
        assert web is not None and web.origin == "web" and web.item.meta == {"web": ["webconv", "w2"]}
        more = await chain(store, 1, parent="r2")  # and the conversation goes on
        assert ids_of(await store.history("owner-a", more[-1], 10_000)) == [*more[::-1], "r2", "u2", "r1", "u1"]

    with_store(url, body)


def write_v1(kind: str, url: str, rows: list[tuple[Any, ...]]) -> None:
    """Data as the previous release left it (its version 1 layout, its version mark)."""
    if kind == "redis":
        prefix = url.split("prefix=")[1]
        client = redis.Redis(port=REDIS_PORT)
        client.set(prefix + "version", "1")
        for row in rows:
            client.set(f"{prefix}m:{row[0]}", orjson.dumps(list(row)))
        return
    create = (
        "CREATE TABLE messages (id TEXT PRIMARY KEY, parent_id TEXT, conversation_id TEXT NOT NULL, "
        "owner TEXT NOT NULL, mode TEXT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, "
        "tokens_cl100k INTEGER NOT NULL, tokens_o200k INTEGER NOT NULL, incomplete BOOLEAN NOT NULL DEFAULT FALSE, "
        "created_at DOUBLE PRECISION NOT NULL)"
    )
    migrations = ("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                  "applied_at DOUBLE PRECISION NOT NULL)")  # fmt: skip
    if kind == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for statement in (create, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", migrations):
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations VALUES (1, 'messages and meta', 0)")
            db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        return
    schema = url.split("search_path=")[1]

    async def go() -> None:
        conn = await asyncpg.connect(
            f"postgresql://127.0.0.1:{POSTGRES_PORT}/test", server_settings={"search_path": schema}
        )
        for statement in (create, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", migrations):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_migrations VALUES (1, 'messages and meta', 0)")
        await conn.executemany("INSERT INTO messages VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)", rows)
        await conn.close()

    run(go())


def test_retention_expires_old_items(kind: str, tmp_path: Path) -> None:
    url = store_url(kind, tmp_path)
    if kind == "redis":  # every key carries the retention as its TTL
        ids = with_store(url, lambda s: chain(s, 1), retention_days=1.5 / 86400)
        deadline = time.monotonic() + 10
        while with_store(url, lambda s: s.get_item("owner-a", ids[-1])) is not None:
            assert time.monotonic() < deadline, "the keys did not expire"
            time.sleep(0.2)
        assert with_store(url, lambda s: s.conversation_items("owner-a", "conv-1", None, 10, False)) == []
        return
    old = time.time() - 40 * 86400

    async def write(store: Store) -> list[str]:
        await store.add_turn(turn(None, a := new("old q"), b := new("old a", "assistant"), created=old))
        return [a.item.id, b.item.id, *(await chain(store, 1))]

    ids = with_store(url, write)
    assert with_store(url, lambda s: s.purge(time.time() - 30 * 86400)) == 2
    assert with_store(url, lambda s: s.get_item("owner-a", ids[1])) is None
    assert with_store(url, lambda s: s.get_item("owner-a", ids[-1])) is not None


def test_a_conversations_record_outlives_none_of_its_items(kind: str, tmp_path: Path) -> None:
    """Retention removes a conversation's record (a deleted one's tombstone too) only once none of its
    items is left: gone first, the conversation came back from its items, undeleted and without its
    metadata. Redis: the record's TTL follows its newest item's."""
    url = store_url(kind, tmp_path)
    old = time.time() - 40 * 86400
    # Deleted at its tip; a turn that branches from an older item (not the tip) is written after that.
    tombstone = Record("conversation", "conv-1", "owner-a", {"metadata": {}, "deleted": True}, "i-tip", old, old)
    if kind == "redis":

        async def tombstoned(store: Store) -> str:
            await store.put_record(tombstone, None)
            assert isinstance(store, RedisStore)
            return store.prefix + "r:conversation:conv-1"

        key = with_store(url, tombstoned, retention_days=30)
        client = redis.Redis(port=REDIS_PORT)
        client.pexpire(key, 5000)  # what is left of its life: its last write was long ago
        with_store(url, lambda s: s.add_turn(turn(None, new("after"), new("a", "assistant"))), retention_days=30)
        assert client.pttl(key) > 29 * 86400 * 1000  # as long as the item just written
        return

    async def body(store: Store) -> None:
        await store.put_record(tombstone, None)
        await store.put_record(Record("conversation", "conv-2", "owner-a", {"metadata": {}}, None, old, old), None)
        await store.add_turn(turn(None, new("old q"), new("old a", "assistant"), conversation="conv-2", created=old))
        await store.add_turn(turn(None, new("a branch after the deletion"), new("a", "assistant")))  # conv-1, now
        await store.purge(time.time() - 30 * 86400)
        kept = await store.get_record("conversation", "conv-1")
        assert kept is not None and kept.body.get("deleted") is True  # its item is still there
        assert await store.get_record("conversation", "conv-2") is None  # nothing of it is left

    with_store(url, body)


def test_a_store_that_goes_away_is_unavailable_then_recovers(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path
) -> None:
    proxy = store_proxy
    url = store_url(network_kind, tmp_path, port=proxy.port)

    async def body(store: Store) -> None:
        ids = await chain(store, 1)
        proxy.stop()
        for operation in (
            store.ping(),
            store.get_item("owner-a", ids[-1]),
            store.history("owner-a", ids[-1], 100),
            store.add_turn(turn(ids[-1], new("q"), new("a", "assistant"))),
            store.get_record("conversation", "x"),
        ):
            with pytest.raises(StoreUnavailable) as raised:
                await asyncio.wait_for(operation, 15)
            assert raised.value.reason  # the log can say why
        proxy.start()
        deadline = time.monotonic() + 10
        while True:  # the same store object recovers: no restart
            try:
                await store.ping()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert (await store.get_item("owner-a", ids[-1])) is not None
        await chain(store, 1, parent=ids[-1])

    with_store(url, body)


def test_a_store_that_hangs_costs_at_most_the_store_timeout(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path
) -> None:
    url = store_url(network_kind, tmp_path, port=store_proxy.port)

    async def body(store: Store) -> None:
        ids = await chain(store, 1)
        store_proxy.freeze()
        try:
            for operation in (store.get_item("owner-a", ids[-1]), store.add_turn(turn(ids[-1], new("q")))):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await operation
                assert time.monotonic() - started < 0.5 + 0.5  # the timeout, and a little
        finally:
            store_proxy.thaw()

    with_store(url, body, timeout=0.5)


def test_store_down_at_start_is_picked_up_later(network_kind: str, tmp_path: Path) -> None:
    from .shared_stores import POSTGRES_PORT as PG
    from .shared_stores import REDIS_PORT as RD

    proxy = TCPProxy(RD if network_kind == "redis" else PG)  # not started yet
    url = store_url(network_kind, tmp_path, port=proxy.port)

    async def body() -> Any:
        store = open_store(url, 30)
        with pytest.raises(StoreUnavailable):
            await store.open()
        proxy.start()
        try:
            await store.ping()
            ids = await chain(store, 1)
            return await store.get_item("owner-a", ids[-1])
        finally:
            await store.close()
            proxy.stop()

    assert run(body()) is not None


def test_sqlite_that_could_not_open_at_start_is_opened_by_a_later_request(tmp_path: Path) -> None:
    """The server keeps running when its store cannot be opened (requests get 503): an SQLite file
    whose folder could not be made is opened by a request once it can be, as a network store is."""
    blocker = tmp_path / "data"
    blocker.write_text("a file where the store's folder should be")
    url = f"sqlite:///{blocker / 'conversations.db'}"

    async def body() -> Any:
        store = open_store(url, 30)
        with pytest.raises(StoreUnavailable):
            await store.open()
        try:
            with pytest.raises(StoreUnavailable):
                await store.ping()
            blocker.unlink()
            deadline = time.monotonic() + 5
            while True:  # tried again at most once a second
                try:
                    await store.ping()
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "never opened"
                    await asyncio.sleep(0.05)
            ids = await chain(store, 1)
            return await store.get_item("owner-a", ids[-1])
        finally:
            await store.close()

    assert run(body()) is not None
    with pytest.raises(StoreUnavailable):  # closed stays closed
        run(closed_ping(url))


async def closed_ping(url: str) -> None:
    store = open_store(url, 30)
    await store.open()
    await store.close()
    await store.ping()


def test_sqlite_files_opened_by_several_processes_at_once_open_in_each(tmp_path: Path) -> None:
    """Workers starting together on a new file race to switch it to WAL and to migrate it, and SQLite
    refuses the loser at once in some of those moments: every process opens every file."""
    import subprocess
    import sys

    rounds = 20
    code = f"""
import asyncio, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from chatgpt_server.stores import open_store

async def main(start):
    for r in range({rounds}):
        time.sleep(max(0.0, start + r * 0.15 - time.time()))  # every process at once
        store = open_store(f"sqlite:///{tmp_path}/db-{{r}}.sqlite", 30)
        await store.open()
        await store.ping()
        await store.close()

asyncio.run(main(float(sys.argv[1])))
"""
    start = time.time() + 3  # after each process has imported the package
    openers = [subprocess.Popen([sys.executable, "-c", code, str(start)], stderr=subprocess.PIPE) for _ in range(4)]
    said = [(o.wait(120), o.stderr.read().decode()[-300:] if o.stderr else "") for o in openers]
    assert [code for code, _ in said] == [0] * 4, said


def test_sqlite_write_after_close_fails_instead_of_hanging(tmp_path: Path) -> None:
    async def body() -> None:
        store = open_store(store_url("sqlite", tmp_path), 30)
        await store.open()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.add_turn(turn(None, new("q"))), 2)

    run(body())


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    folder = tmp_path / "fresh" / "data"
    url = f"sqlite:///{folder / 'conversations.db'}"
    with_store(url, lambda s: chain(s, 1))
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.glob("conversations.db*"):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_sqlite_shared_by_processes_loses_no_write(tmp_path: Path) -> None:
    """Worker processes share one SQLite file: each waits for the other's write lock without failing."""
    import subprocess
    import sys

    url = store_url("sqlite", tmp_path)
    with_store(url, lambda s: s.ping())  # created and migrated once
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from tests.test_stores import chain
from chatgpt_server.stores import open_store

async def main():
    store = open_store({url!r}, 30)
    await store.open()
    await asyncio.gather(*(chain(store, 20, owner=sys.argv[1] + str(i)) for i in range(10)))
    await store.close()

asyncio.run(main())
"""
    writers = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("p1-", "p2-", "p3-")]
    assert [w.wait(120) for w in writers] == [0, 0, 0]

    async def count(store: Store) -> int:
        total = 0
        for name in ("p1-", "p2-", "p3-"):
            for i in range(10):
                total += len(await store.conversation_items(name + str(i), "conv-1", None, 1000, False))
        return total

    assert with_store(url, count) == 3 * 10 * 20 * 2


def test_network_stores_serve_more_callers_than_connections_and_survive_a_burst_of_timeouts(
    network_kind: str, store_proxy: TCPProxy, tmp_path: Path
) -> None:
    """Hundreds of operations at once (PostgreSQL queues them for its 16 connections; Redis pipelines
    them on one), then a burst that times out on a frozen store: once it thaws, every operation lands
    again (no connection is leaked or left mid-reply by the ones that timed out)."""
    url = store_url(network_kind, tmp_path, port=store_proxy.port)

    async def body(store: Store) -> None:
        roots = [new(f"q{i}") for i in range(300)]
        await asyncio.gather(*(store.add_turn(turn(None, r, owner=f"o{i}")) for i, r in enumerate(roots)))
        store_proxy.freeze()
        try:
            burst = await asyncio.gather(*(store.get_item(f"o{i}", r.item.id) for i, r in enumerate(roots[:40])),
                                         return_exceptions=True)  # fmt: skip
            assert all(isinstance(b, StoreUnavailable) for b in burst), burst
            # Callers who give up before the store timeout (a readiness probe's shorter limit)
            for i, r in enumerate(roots[:40]):
                with contextlib.suppress(TimeoutError, StoreUnavailable):
                    await asyncio.wait_for(store.get_item(f"o{i}", r.item.id), 0.05)
        finally:
            store_proxy.thaw()
        for _ in range(3):
            found = await asyncio.gather(*(store.get_item(f"o{i}", r.item.id) for i, r in enumerate(roots)))
            assert [f.item.id if f else None for f in found] == [r.item.id for r in roots]

    with_store(url, body, timeout=0.5)


def test_postgresql_ends_on_the_server_what_it_stopped_waiting_for(tmp_path: Path) -> None:
    """A turn write stuck behind another session's row lock times out for its caller, and the server
    ends it too: no backend of ours is left waiting on the lock, however many tries there were."""
    base = store_url("postgresql", tmp_path)
    app = f"{uuid.uuid4().hex[:12]}"
    url = f"{base}&application_name={app}"
    schema = base.rsplit("search_path=", 1)[1]

    async def body(store: Store) -> None:
        root = new("q")
        await store.put_record(Record("conversation", "conv-1", "owner-a", {}, None, 1.0, 1.0), None)
        await store.add_turn(turn(None, root, conversation_tip="conv-1"))
        admin = await asyncpg.connect(f"postgresql://127.0.0.1:{POSTGRES_PORT}/test")
        try:
            await admin.execute("BEGIN")
            await admin.execute(f"SELECT 1 FROM {schema}.records WHERE id = 'conv-1' FOR UPDATE")  # noqa: S608 (ours)
            await admin.execute(f"SELECT 1 FROM {schema}.items FOR UPDATE")  # noqa: S608 (ours)
            for _ in range(3):  # in a transaction of ours, and a statement of its own
                with pytest.raises(StoreUnavailable):
                    await store.add_turn(turn(root.item.id, new("q2"), conversation_tip="conv-1"))
                with pytest.raises(StoreUnavailable):
                    await store.delete_item("owner-a", "conv-1", root.item.id)
            deadline = time.monotonic() + 5
            while True:
                waiting = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    app,
                )
                if waiting == 0:
                    break
                assert time.monotonic() < deadline, f"{waiting} statements still waiting on the server"
                await asyncio.sleep(0.1)
        finally:
            await admin.execute("ROLLBACK")
            await admin.close()

    with_store(url, body, timeout=0.5)


def test_a_holder_cut_off_never_renews_or_gives_back_a_lease_made_since(kind: str, tmp_path: Path) -> None:
    """A holds a conversation and is cut off; meanwhile B takes it over and gives it back, and C makes a new
    lease (a record made again). A's renewal (or give-back) by the version it last wrote must not match C's
    record: lease versions start anywhere, so a record made again never repeats an earlier life's."""

    async def body(store: Store) -> None:
        first, later = Leases(store), Leases(store)
        held_a = await first.try_acquire("conversation:x", 60)
        assert held_a is not None
        assert await store.delete_record("lease", "conversation:x")  # taken over and given back meanwhile
        held_c = await later.try_acquire("conversation:x", 60)
        assert held_c is not None
        assert not await held_a.make_sure_for(60)  # not sure: A renews, and must find the lease not its own
        lease = await store.get_record("lease", "conversation:x")
        assert lease is not None and lease.body["holder"] == later.holder
        given_back = held_a()
        assert given_back is not None
        await given_back
        assert await store.get_record("lease", "conversation:x") is not None  # C's lease is still there
        assert await held_c.make_sure_for(1)
        done = held_c()
        assert done is not None
        await done
        inserted = Record("lease", "v", "", {}, None, 1.0, 1.0, 12345)  # the version a record is made with
        assert await store.put_record(inserted, None)
        got = await store.get_record("lease", "v")
        assert got is not None and got.version == 12345 and await store.put_record(inserted, 12345)

    with_store(store_url(kind, tmp_path), body)


def test_a_leaving_holder_is_waited_for_by_one_turn_and_no_other(tmp_path: Path) -> None:
    """A conversation whose holder is leaving (its client left) is handed to the one turn that asks
    meanwhile (the client's retry); another that asks in the moment between the hand-over and the retry
    taking it is refused at once, as any turn meeting a held conversation is, not queued behind it."""

    async def body(store: Store) -> None:
        leases = Leases(store)
        first = await leases.try_acquire("conversation:c", 60)
        assert first is not None
        leases.leaving("conversation:c")
        retry = asyncio.create_task(leases.try_acquire("conversation:c", 60))
        await asyncio.sleep(0)  # the retry now waits for the leaving holder
        assert not retry.done()
        assert await leases.try_acquire("conversation:c", 60) is None  # a third: refused, not a second waiter
        given_back = first()
        assert given_back is not None
        await given_back  # the lock is handed to the retry, which has not run yet
        started = time.monotonic()
        assert await asyncio.wait_for(leases.try_acquire("conversation:c", 60), 1) is None
        assert time.monotonic() - started < 0.5
        second = await asyncio.wait_for(retry, 5)
        assert second is not None
        done = second()
        assert done is not None
        await done

    with_store(store_url("sqlite", tmp_path), body)
