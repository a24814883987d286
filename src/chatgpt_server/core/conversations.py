"""A conversation's record: its owner, metadata and tip (the item the next turn continues from).

A conversation begun on the original route gets its record with its first turn (its id is shown in
every reply). One begun with ``previous_response_id``, or on the original route before records were
made there, has items but no record until the Conversations API first touches it; it is found from
its items, its tip taken as its newest item.
"""

from __future__ import annotations

import time

from ..errors import Conflict, NotFound
from ..stores import Record, Store

MAX_ID = 256  # no id of ours is longer, and none holds a control character


def check_id(conversation_id: str) -> None:
    """404 at once for what cannot be a conversation id (before it reaches a store key or an index)."""
    if len(conversation_id) > MAX_ID or not conversation_id.isprintable():
        raise NotFound("conversation_not_found_here", id=conversation_id[:MAX_ID])


async def find(store: Store, owner: str, conversation_id: str, *, make: bool = False) -> Record:
    """The caller's conversation (404 if it is not theirs, or deleted); one that has only items is
    shown from them and, with ``make``, given a record."""
    check_id(conversation_id)
    record = await store.get_record("conversation", conversation_id)
    if record is not None:
        if record.owner != owner or record.body.get("deleted"):
            raise NotFound("conversation_not_found_here", id=conversation_id[:256])
        return record
    newest = await store.conversation_items(owner, conversation_id, None, 1, True)
    if not newest:
        raise NotFound("conversation_not_found_here", id=conversation_id[:256])
    oldest = await store.conversation_items(owner, conversation_id, None, 1, False)
    created = oldest[0].created_at if oldest else time.time()
    record = Record("conversation", conversation_id, owner, {"metadata": {}}, newest[0].item.id, created, time.time())
    if make and not await store.put_record(record, None):
        again = await store.get_record("conversation", conversation_id)
        if again is None or again.owner != owner:
            raise Conflict("conversation_changed", id=conversation_id[:256])
        return again
    return record
