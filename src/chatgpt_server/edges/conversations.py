"""OpenAI's Conversations API: ``/v1/conversations``, plus the listing OpenAI lacks.

A conversation is a record whose ``tip`` is its newest item; its items are those of the conversation
tree with its id, in the order they were added. Conversations the original route or the Responses API
started (without a record) can be read, listed and continued here too: the record is made the first
time one is written to. Deleting a conversation deletes the record (as OpenAI does, its items stay
for the responses that used them); deleting an item takes it out of the conversation and out of the
history of every later turn.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ..core.activity import current_log
from ..core.conversations import find
from ..core.items import Item, mint
from ..core.turns import outputs_answer_calls
from ..errors import BadRequest, Conflict, NotFound
from ..stores import Record, StoredItem
from .http import JSONBody, read_json
from .openai_items import invalid, item_json, parse_input
from .responses import _metadata
from .v1 import list_body, owner_of, page_of

if TYPE_CHECKING:
    from ..app import Services


def conversation_json(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "conversation",
        "created_at": int(record.created_at),
        "metadata": record.body.get("metadata") or {},
    }


def _known_only(body: dict[str, Any], *names: str) -> None:
    """OpenAI refuses a field it does not know (a misspelt one would otherwise be silently ignored)."""
    unknown = set(body) - set(names)
    if unknown:
        raise BadRequest("unknown_param", param=sorted(unknown)[0][:64])


MAX_ADDED = 20  # items a conversation is created with, or given at once, as OpenAI takes them


async def _conversation(services: Services, owner: str, conversation_id: str, *, make: bool = False) -> Record:
    return await find(services.store, owner, conversation_id, make=make)


async def _items_of(body: Any) -> list[Item]:
    raw = body.get("items") if isinstance(body, dict) else None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("items", "expected a list of items")
    if len(raw) > MAX_ADDED:  # OpenAI's words and code for it
        detail = (f"array too long. Expected an array with maximum length {MAX_ADDED}, but got an array with "
                  f"length {len(raw)} instead.")  # fmt: skip
        raise BadRequest("invalid_param", param="items", code="array_above_max_length", detail=detail)
    parsed = parse_input(raw, "items")
    if any(isinstance(entry, str) for entry in parsed):
        raise invalid("items", "item references are not accepted here")
    return [entry for entry in parsed if isinstance(entry, Item)]


async def create(request: Request, services: Services) -> Response:
    current_log().route = "conversations create"
    owner = await owner_of(request, services)
    body = await read_json(request, services.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    _known_only(body, "items", "metadata")
    metadata = _metadata(body.get("metadata"))
    items = await _items_of(body)
    outputs_answer_calls(items, set(), set())  # before the conversation exists: a refused create makes none
    now = time.time()
    record = Record("conversation", mint("conv_"), owner, {"metadata": metadata}, None, now, now)
    await services.store.put_record(record, None)
    if items:
        await services.turns.seed(owner, record.id, items)
    return JSONBody(conversation_json(record))


async def retrieve(request: Request, services: Services) -> Response:
    current_log().route = "conversations get"
    owner = await owner_of(request, services)
    return JSONBody(conversation_json(await _conversation(services, owner, request.path_params["id"])))


async def update(request: Request, services: Services) -> Response:
    current_log().route = "conversations update"
    owner = await owner_of(request, services)
    body = await read_json(request, services.settings.max_body_bytes)
    if not isinstance(body, dict) or "metadata" not in body:
        raise BadRequest("missing_param", param="metadata")
    _known_only(body, "metadata")
    metadata = _metadata(body["metadata"])
    for _ in range(5):
        record = await _conversation(services, owner, request.path_params["id"], make=True)
        changed = Record(record.kind, record.id, owner, {**record.body, "metadata": metadata}, record.tip,
                         record.created_at, time.time(), record.version, record.gen)  # fmt: skip
        if await services.store.put_record(changed, record.version):
            return JSONBody(conversation_json(changed))
    raise Conflict("conversation_changed", id=request.path_params["id"][:256])


async def delete(request: Request, services: Services) -> Response:
    """The record stays as a tombstone: the conversation's items (which stay, as OpenAI keeps them)
    must not bring it back."""
    current_log().route = "conversations delete"
    owner = await owner_of(request, services)
    for _ in range(5):
        record = await _conversation(services, owner, request.path_params["id"], make=True)
        gone = Record(record.kind, record.id, owner, {"deleted": True}, record.tip, record.created_at, time.time(),
                      record.version, record.gen)  # fmt: skip
        if await services.store.put_record(gone, record.version):
            return JSONBody({"id": record.id, "object": "conversation.deleted", "deleted": True})
    raise Conflict("conversation_changed", id=request.path_params["id"][:256])


async def list_all(request: Request, services: Services) -> Response:
    """The caller's conversations, newest first (``order=asc`` for oldest first), paged by ``after``."""
    current_log().route = "conversations list"
    owner = await owner_of(request, services)
    page = page_of(request)
    if page.after is not None:  # nothing after an id that is not one of the caller's conversations
        anchor = await services.store.get_record("conversation", page.after)
        if anchor is None or anchor.owner != owner:
            return JSONBody(list_body([], False))
    shown: list[dict[str, Any]] = []
    after, more = page.after, False
    while len(shown) <= page.limit:  # tombstones are skipped, so a page may take more than one read
        records = await services.store.list_records("conversation", owner, after, page.limit + 1, page.descending)
        shown += [conversation_json(r) for r in records if not r.body.get("deleted")]
        if len(records) <= page.limit:
            break
        after = records[-1].id
    more = len(shown) > page.limit
    return JSONBody(list_body(shown[: page.limit], more))


async def add_items(request: Request, services: Services) -> Response:
    current_log().route = "conversations items add"
    owner = await owner_of(request, services)
    body = await read_json(request, services.settings.max_body_bytes)
    if not isinstance(body, dict) or body.get("items") is None:
        raise BadRequest("missing_param", param="items")
    _known_only(body, "items")
    items = await _items_of(body)
    if not items:
        raise invalid("items", "expected at least one item")
    await services.turns.append(owner, request.path_params["id"], items)
    shown = [item_json(item) for item in items]
    return JSONBody(list_body(shown, False))


async def list_items(request: Request, services: Services) -> Response:
    current_log().route = "conversations items"
    owner = await owner_of(request, services)
    conversation_id = request.path_params["id"]
    record = await _conversation(services, owner, conversation_id)
    page = page_of(request)
    after_seq = None
    if page.after is not None:
        anchor = await services.store.get_item(owner, page.after)
        if anchor is None or anchor.conversation_id != conversation_id:  # nothing after an unknown id
            return JSONBody(list_body([], False))
        after_seq = anchor.seq
    # The conversation is the line that ends at its tip: a branch from an older turn (a
    # previous_response_id turn that left the conversation where it was) is reachable by its own id,
    # not listed here.
    line = set(await services.store.path_ids(owner, record.tip)) if record.tip else set()
    items: list[StoredItem] = []
    while len(items) <= page.limit:
        batch = await services.store.conversation_items(owner, conversation_id, after_seq, page.limit + 1,
                                                        page.descending)  # fmt: skip
        items += [s for s in batch if s.item.id in line]
        if len(batch) <= page.limit:
            break
        after_seq = batch[-1].seq
    shown = [item_json(s.item) for s in items[: page.limit]]
    return JSONBody(list_body(shown, len(items) > page.limit))


async def get_item(request: Request, services: Services) -> Response:
    current_log().route = "conversations item"
    owner = await owner_of(request, services)
    conversation_id, item_id = request.path_params["id"], request.path_params["item_id"]
    await _conversation(services, owner, conversation_id)
    found = await services.store.get_item(owner, item_id)
    if found is None or found.conversation_id != conversation_id or found.deleted:
        raise NotFound("item_not_found", id=item_id[:256])
    return JSONBody(item_json(found.item))


async def delete_item(request: Request, services: Services) -> Response:
    current_log().route = "conversations item delete"
    owner = await owner_of(request, services)
    conversation_id, item_id = request.path_params["id"], request.path_params["item_id"]
    record = await _conversation(services, owner, conversation_id, make=True)
    if not await services.store.delete_item(owner, conversation_id, item_id):
        raise NotFound("item_not_found", id=item_id[:256])
    return JSONBody(conversation_json(record))
