"""What every conversation store provides.

Two kinds of data:

- **Items**, the nodes of conversation trees. An item is written once, with the turn it belongs to,
  and never changes after (but for a tombstone when a client deletes it from a conversation). Every
  item records the keyed hash of the credential that created it (``owner``); a store never returns
  an item to another owner. Each item records its prompt cost (``cost``, counted with the tree's
  encoding ``enc``), so the history of a follow-up is cut at the token budget inside the store, in
  one round trip, without re-counting anything.
- **Records**: small JSON documents with an id, an owner, a ``tip`` (the last item of a response or
  a conversation), a deletion counter ``gen`` and a ``version`` for compare-and-set. Responses,
  conversations and stored accounts are records.

Backends raise ``errors.StoreUnavailable`` when the store cannot answer (within the store timeout).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..core.items import Item
from ..errors import StoreUnavailable

# A row of a history read: (id, kind, chat JSON, cost, parent id); kind is "deleted" for an item a
# client deleted (it still counts toward the budget, as its place in the running totals does).
# Tuples, not objects: a 128k-token history is thousands of rows, and building an object per row
# costs more than reading it.
HistoryRow = tuple[str, str, bytes, int, str | None]
SHORT_LIVED_S = 3600.0  # device sign-ins (15 minutes) and leases: kept an hour at most, retention or not
PURGE_BATCH = 5_000  # items per delete: a month of rows never holds a lock for long
MAX_WALK = 100_000  # no history walk visits more items than this, whatever the data


def settle(waiter: asyncio.Future[None], error: BaseException | None) -> None:
    if waiter.done():  # its caller gave up
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


class OnePerPass:
    """One ``check`` answers every caller that asked in the same pass of the event loop. It is sent
    in the next pass, after each of them asked, so the store answered for each; new conversations
    arrive together under load, and each would otherwise cost a round trip of its own."""

    __slots__ = ("_check", "_running", "_waiting")

    def __init__(self, check: Callable[[], Awaitable[Any]], running: set[asyncio.Future[Any]]) -> None:
        self._check = check
        self._running = running  # holds the check's task (an unheld task may be collected); close may wait
        self._waiting: list[asyncio.Future[None]] = []

    async def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[None] = loop.create_future()
        self._waiting.append(mine)
        if len(self._waiting) == 1:
            loop.call_soon(self._send)
        await mine

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._check())

        def told(task: asyncio.Future[Any]) -> None:
            error = StoreUnavailable(reason="the store is closing") if task.cancelled() else task.exception()
            for waiter in waiting:
                settle(waiter, error)

        task.add_done_callback(told)
        self._running.add(task)
        task.add_done_callback(self._running.discard)


@dataclass(slots=True)
class StoredItem:
    item: Item
    owner: str
    conversation_id: str
    parent_id: str | None
    enc: str
    cost: int
    origin: str
    response_id: str | None
    created_at: float
    seq: int = 0
    deleted: bool = False
    gen: int = 0  # the deletion counter of its conversation, when read by ``get_item``


@dataclass(slots=True)
class NewItem:
    item: Item
    chat: bytes
    cost: int


@dataclass(slots=True)
class Record:
    kind: str  # "response", "conversation", "account"
    id: str
    owner: str
    body: dict[str, Any]
    tip: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    gen: int = 0


LEASE_LOST = "the conversation's lock was another's when its turn was written"


@dataclass(slots=True)
class TurnWrite:
    """One turn: its items in order (the first answers ``parent_id``, each next one answers the one
    before), and the records that change with it. Written atomically, or not at all."""

    owner: str
    conversation_id: str
    parent_id: str | None
    enc: str
    origin: str
    created_at: float
    items: list[NewItem]
    response_id: str | None = None
    response: Record | None = None  # inserted with the turn
    # Set (to the conversation's id) for a turn asked through ``conversation=`` (or items added to
    # it): the turn is written after the conversation's tip as it is at the write, atomically, whatever
    # ``parent_id`` says (a turn through another door may have continued it meanwhile), and the tip
    # moves to its last item. Without it the tip moves only if it was the turn's parent.
    conversation_tip: str | None = None
    # The turn never moves its conversation's tip (a reply that failed before any output: the
    # conversation stays as it was, so the client's retry is not doubled in it).
    keep_tip: bool = False
    # The conversation's id is shown to the client (the original route): it gets its record with this
    # turn if it has none (tip: this turn's last item, or its parent with ``keep_tip``), so every door
    # lists it and moves its tip by the same rule from its first turn on.
    opens_record: bool = False
    # (lease record id, lease id): a write under a conversation's lease (with ``conversation_tip``) is made
    # only if the lease is still that one when it is made (network stores: a write sent before a partition
    # can land after it, when another instance may have taken the lease and answered); else the store
    # raises StoreUnavailable("conversation_lease_lost").
    lease: tuple[str, str] | None = None

    @property
    def tip_after(self) -> str | None:
        """Where the tip of a record made with this turn points."""
        return self.parent_id if self.keep_tip else self.items[-1].item.id


class Store(ABC):
    kind: str = "store"

    @abstractmethod
    async def open(self) -> None:
        """Connect, migrate the schema; raise StoreUnavailable (with a reason) if it cannot."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return if the store answers (and could take a turn's write), else raise StoreUnavailable."""

    async def writable(self) -> None:
        """Return if a turn's write could be made now, else raise StoreUnavailable. A network store that
        answered a read for the turn answers its write: nothing to do. SQLite reads while another
        process holds the write lock, so it checks the lock."""
        return None

    @abstractmethod
    async def shared_secret(self, candidate: bytes, name: str = "hmac_key") -> bytes:
        """Keep ``candidate`` as the instance-wide value ``name`` (a constant of ours) unless one is kept
        already; return the kept one."""

    # -- items ------------------------------------------------------------------------------------
    @abstractmethod
    async def add_turn(self, turn: TurnWrite) -> None:
        """Store the turn atomically and durably. Writing the same turn twice (a retry after a lost
        answer) is a success, not an error: item ids are ours and random, so a known id is ours.

        In the same write, the turn's conversation record (if it has one) gets the last item as its
        tip, and a new version, when ``conversation_tip`` is set or its tip was the turn's parent;
        never when ``keep_tip`` is set."""

    @abstractmethod
    async def get_item(self, owner: str, item_id: str) -> StoredItem | None:
        """The item, with its conversation's deletion counter in ``gen``; None if unknown to ``owner``."""

    async def response_item(self, owner: str, response_id: str) -> StoredItem | None:
        """The last item of ``owner``'s stored response (None if unknown to them), in one round trip
        where the store can (``previous_response_id`` on every Responses follow-up)."""
        record = await self.get_record("response", response_id)
        if record is None or record.owner != owner or not record.tip:
            return None
        return await self.get_item(owner, record.tip)

    @abstractmethod
    async def get_items(self, owner: str, item_ids: list[str]) -> list[StoredItem]:
        """Those of the items that exist for ``owner``, in the order asked."""

    @abstractmethod
    async def history(self, owner: str, item_id: str, budget: int) -> list[HistoryRow]:
        """The item and its ancestors, newest first, in one round trip.

        The named item always comes first (if it exists and belongs to ``owner``); ancestors follow
        while the running cost (the named item's included, deleted items' too) stays within ``budget``. An empty list
        means the item is unknown to this owner. Work is bounded by what is returned (and by
        ``MAX_WALK``), whatever the data.
        """

    @abstractmethod
    async def path_ids(self, owner: str, item_id: str) -> list[str]:
        """Ids of the item and all its ancestors (not deleted), newest first, bounded by ``MAX_WALK``."""

    @abstractmethod
    async def conversation_items(
        self, owner: str, conversation_id: str, after_seq: int | None, limit: int, descending: bool
    ) -> list[StoredItem]:
        """A conversation's items (not deleted) in the order they were added, paged by ``seq``."""

    @abstractmethod
    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        """Tombstone an item of a conversation and count the deletion in the conversation's ``gen``
        (and its version)."""

    # -- records ----------------------------------------------------------------------------------
    @abstractmethod
    async def put_record(self, record: Record, expect_version: int | None) -> bool:
        """Insert (``expect_version`` None: only if absent) or update (only if the stored version is
        ``expect_version``). The stored version becomes ``expect_version + 1`` (on insert the record's own
        ``version`` if positive, else 1: a record made again after a delete can be given versions its
        earlier life never had, so a stale compare-and-set cannot match it). Returns whether it was
        written."""

    @abstractmethod
    async def get_record(self, kind: str, record_id: str) -> Record | None: ...

    @abstractmethod
    async def delete_record(self, kind: str, record_id: str, expect_version: int | None = None) -> bool:
        """Delete a record (only if its version is ``expect_version``, when given); whether it went."""

    @abstractmethod
    async def list_records(
        self, kind: str, owner: str, after_id: str | None, limit: int, descending: bool
    ) -> list[Record]:
        """An owner's records of a kind by creation time (then id), paged after ``after_id``."""

    @abstractmethod
    async def purge(self, before: float) -> int:
        """Delete items, responses and conversations last written before ``before`` (epoch seconds),
        and device sign-ins and leases older than ``SHORT_LIVED_S``; return how many went. Accounts
        are never purged."""
