"""What every conversation store provides.

A conversation is a tree of messages linked by ``parent_id``. Every message records the keyed hash of
the credential that created it (``owner``); a store never returns a message to another owner.
Each message also records what it costs in a chat-completions prompt under both encodings, so the
history of a follow-up can be cut at the token budget inside the store, in one round trip, without
re-counting anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

ENCODINGS = ("cl100k_base", "o200k_base")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    parent_id: str | None
    conversation_id: str
    owner: str
    mode: str
    role: str
    text: str
    tokens_cl100k: int
    tokens_o200k: int
    incomplete: bool
    created_at: float

    def tokens(self, encoding: str) -> int:
        return self.tokens_o200k if encoding == "o200k_base" else self.tokens_cl100k


class DuplicateMessage(Exception):
    """A message id of the turn is already stored; nothing of the turn was written."""


class Store(ABC):
    """The store interface. Backends raise ``errors.StoreUnavailable`` when the store cannot answer."""

    kind: str = "store"

    @abstractmethod
    async def open(self) -> None:
        """Connect, migrate the schema; raise StoreUnavailable if the store cannot be reached."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Return if the store answers, else raise StoreUnavailable."""

    @abstractmethod
    async def shared_secret(self, candidate: bytes) -> bytes:
        """Keep ``candidate`` as the instance-wide secret unless one is kept already; return the kept one."""

    @abstractmethod
    async def add_turn(self, user: StoredMessage, reply: StoredMessage) -> None:
        """Store both messages atomically and durably, or neither (DuplicateMessage on a known id)."""

    @abstractmethod
    async def get(self, owner: str, message_id: str) -> StoredMessage | None: ...

    @abstractmethod
    async def chain(self, owner: str, message_id: str, encoding: str, budget: int) -> list[StoredMessage]:
        """The message and its ancestors, newest first, in one round trip.

        The named message always comes first (if it exists and belongs to ``owner``); ancestors follow
        while their running token total (under ``encoding``, the message itself included) stays within
        ``budget``. An empty list means the message is unknown to this owner.
        """

    @abstractmethod
    async def purge(self, before: float) -> int:
        """Delete messages created before ``before`` (epoch seconds); return how many went."""
