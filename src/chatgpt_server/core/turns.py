"""A turn of a conversation, whatever door it came through and whatever upstream answers it.

Order of work: find the parent (which is also the proof that the store answers for this turn; a new
conversation pings it) → its history, from memory or one store read, cut at the token budget →
open the upstream (within the turn's deadline) → read what it sends (within the deadline, the idle
limit and the size cap) → store the new items in one atomic write → only then answer. A reply is
returned only after it is stored, and the upstream is never called when the store cannot answer.

The core knows nothing of doors or wire formats: an edge hands it a ``TurnSpec`` (items and limits)
and reads back events and a ``TurnResult``; an upstream turns a ``Prompt`` into a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ..errors import BadRequest, ClientGone, GatewayTimeout, NotFound, ServiceError, ShuttingDown, StoreUnavailable
from ..stores import HistoryRow, NewItem, Record, Store, StoredItem, TurnWrite
from ..upstreams.base import Event, Prompt, Reply, Target, ToolCall, Upstream
from .activity import Activity, current_log
from .conversations import check_id, find
from .history import (
    MIN_ROWS,
    HistoryCache,
    Path,
    Window,
    answered_in,
    calls_in,
    empty_path,
    path_from_store,
    visible,
)
from .items import REFUSAL_PART, Item, mint
from .leases import LEASE_S, Leases, Release
from .tokens import REPLY_PRIMING, count, encoding_for, is_exact, message_cost
from .watchdog import Watchdog

_COST = itemgetter(3)  # a history row's cost (summed in C: a long history is thousands of rows)
ESTIMATE_MARGIN = 0.9  # budgets of models we count by estimate keep 10% in hand
APPEND_HOLD_S = 30.0  # the longest an append may hold its conversation (a lease a dead process left expires)


@dataclass(slots=True)
class Budget:
    """How the prompt is fitted: at most ``prompt_tokens``; older history is dropped to fit when
    ``truncate``, else a prompt that does not fit is refused. The output limit is ``max_output`` or,
    for the original route's rule, min(``model_tokens`` - prompt, ``response_tokens``)."""

    prompt_tokens: int
    truncate: bool = True
    max_output: int | None = None
    model_tokens: int | None = None
    response_tokens: int | None = None

    def output_for(self, prompt: int) -> int | None:
        if self.model_tokens is not None and self.response_tokens is not None:
            return max(1, min(self.model_tokens - prompt, self.response_tokens))
        return self.max_output


@dataclass(slots=True)
class TurnSpec:
    owner: str
    origin: str  # the door and mode: "1", "2" (original route), "web" (legacy web mode 2), "v1"
    target: Target
    model: str
    inputs: list[Item]
    budget: Budget
    parent: str | None = None  # an item id or a response id to continue from
    conversation: str | None = None  # a Conversations API conversation to append to
    instructions: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool = True
    timeout_s: float = 600.0
    idle_s: float = 120.0
    reply_prefix: str = "msg_"
    queue_key: str | None = None  # one turn at a time per key (an account that allows one reply at once)
    record: Callable[[TurnResult], Record] | None = None  # a record written with the turn (a response)
    compatible: Callable[[StoredItem], None] | None = None  # raises if the parent cannot be continued here
    # A message item under the reply's id even when the reply is only tool calls (the original route
    # tells that id to the client, who continues from it).
    reply_message: bool = False


@dataclass(slots=True)
class TurnResult:
    inputs: list[Item]
    outputs: list[Item]
    reply_id: str
    text: str
    tool_calls: list[ToolCall]
    usage: dict[str, Any]
    incomplete: str | None  # why the reply is incomplete ("interrupted", "max_reply_bytes", ...), or None
    conversation_id: str
    parent_id: str | None
    reply: Reply
    prompt_tokens: int
    created_at: float
    stored: bool


def _encode(items: list[Item]) -> list[bytes]:
    return [item.chat() for item in items]


def _answers_have_calls(inputs: list[Item], history: list[HistoryRow]) -> None:
    """Every function call output the turn sends answers a call its prompt holds, once: upstreams refuse
    one that does not (a call that never completed, cut mid-way, is held by no prompt) and a second one."""
    if any(item.kind == "function_call_output" for item in inputs):  # a call comes before its output
        outputs_answer_calls(inputs, calls_in(history), answered_in(history), "input")


CALL_LOOKBACK_FIRST = 16_000  # where an added output's call is looked for first: the last turns
CALL_LOOKBACK_TOKENS = 2_000_000  # and then as far back as any model's window goes


def outputs_answer_calls(
    items: list[Item], calls: set[str], answered: set[str], param: str = "items[{}].call_id"
) -> None:
    """Each function call output among ``items`` answers a call of ``calls`` (those the conversation holds)
    or of the items before it, and one not ``answered`` yet. Any other would be left out of every prompt,
    or break it (OpenAI refuses the next response instead): it is refused where it is given."""
    calls, answered = set(calls), set(answered)
    for i, item in enumerate(items):
        if item.kind == "function_call":
            calls.add(item.call_id or "")
        elif item.kind == "function_call_output":
            call_id = item.call_id or ""
            if call_id not in calls:
                raise BadRequest("no_call_to_answer", id=call_id, param=param.format(i))
            if call_id in answered:
                raise BadRequest("call_already_answered", id=call_id, param=param.format(i))
            answered.add(call_id)


def _calls_are_answered(inputs: list[Item], history: list[HistoryRow]) -> None:
    """The calls the history ends with (the model's last words) are each answered, in the history or by
    this turn's outputs, as OpenAI's Responses API requires: strict upstreams refuse a call left open."""
    if not history or history[-1][1] not in ("function_call", "function_call_output"):
        return
    trailing = []
    for row in reversed(history):
        if row[1] not in ("function_call", "function_call_output"):
            break
        trailing.append(row)
    answered = answered_in(trailing) | {item.call_id for item in inputs if item.kind == "function_call_output"}
    open_calls = sorted(calls_in(trailing) - answered)
    if open_calls:
        raise BadRequest("call_not_answered", id=open_calls[0], param="input")


def _stored_chat(item: Item) -> bytes:
    """An output's chat JSON as later prompts hold it; none (b"") for a function call that never
    completed (the stream was cut, or hit its length): its arguments may end mid-way, no output will
    answer it, and upstreams refuse a call left unanswered, so it would break every later turn."""
    if item.kind == "function_call" and item.status == "incomplete":
        return b""
    return item.chat()


@dataclass(slots=True)
class _Prepared:
    """A turn's prompt, worked out: what it answers, its history window and what it costs."""

    parent: StoredItem | None
    conversation_id: str
    encoding: str
    input_chats: list[bytes]
    history: list[HistoryRow]
    used: int
    base: Window


class Turns:
    """The conversation core: turns in, events and stored results out."""

    def __init__(self, store: Store, upstreams: dict[str, Upstream], cache: HistoryCache, activity: Activity,
                 lease_s: float = LEASE_S, write_s: float = 2.0):  # fmt: skip
        self.store = store
        self.write_s = write_s  # the longest a store write may take (the store's timeout)
        self.upstreams = upstreams
        self.cache = cache
        self.activity = activity
        self.queues = Leases(store, lease_s)

    # -- the store, timed for the access log --------------------------------------------------------
    async def _timed(self, operation: Any) -> Any:
        started = time.perf_counter()
        try:
            return await operation
        finally:
            current_log().store_ms += (time.perf_counter() - started) * 1000

    async def resolve(self, owner: str, reference: str) -> StoredItem | None:
        """An item id, or a response id (its last item), as the stored item it names."""
        if reference.startswith("resp_"):
            found: StoredItem | None = await self._timed(self.store.response_item(owner, reference))
        else:
            found = await self._timed(self.store.get_item(owner, reference))
        return found

    async def hold(self, conversation_id: str, ttl_s: float) -> Release:
        """One writer at a time for a conversation named by id, on every instance: a second turn
        meanwhile is refused, as OpenAI refuses it, rather than forking the conversation."""
        check_id(conversation_id)
        release: Release | None = await self._timed(self.queues.try_acquire(_held_key(conversation_id), ttl_s))
        if release is None:
            raise BadRequest("conversation_locked", id=conversation_id[:256], param="conversation")
        return release

    async def still_held(self, hold: Release | None, conversation_id: str | None) -> None:
        """Before a conversation's write: its lock must still be this turn's for as long as the write may
        take (renewed now if need be). One that lapsed (the store was away for its renewals) may have been
        taken by another turn meanwhile, whose reply this one's must not be written after as if it had
        seen it."""
        if hold is not None and not await self._timed(hold.make_sure_for(self.write_s)):
            raise StoreUnavailable("conversation_lease_lost", id=(conversation_id or "")[:256],
                                   reason="the conversation's lock lapsed before its turn was written")  # fmt: skip

    async def append(self, owner: str, conversation_id: str, items: list[Item]) -> None:
        """Add items a client wrote (no upstream involved) after the conversation's tip, moving the
        tip to the last of them."""
        release = await self.hold(conversation_id, APPEND_HOLD_S)
        failed = False
        try:
            record = await self._timed(find(self.store, owner, conversation_id, make=True))
            parent = await self.resolve(owner, record.tip) if record.tip else None
            if parent is None or not any(item.kind == "function_call_output" for item in items):
                outputs_answer_calls(items, set(), set())
            else:
                history = await self._calls_window(owner, parent.item.id, items)
                outputs_answer_calls(items, calls_in(history), answered_in(history))
            await self.still_held(release, conversation_id)
            await self._write_items(owner, conversation_id, parent, items, release.fence)
        except StoreUnavailable:
            failed = True
            raise
        finally:
            await let_go(release, wait=not failed)

    async def _calls_window(self, owner: str, tip: str, items: list[Item]) -> list[HistoryRow]:
        """The history behind ``tip`` that holds the calls ``items``' outputs answer: the last few turns
        mostly (an agent answers the calls just made), else as far back as any model's window reaches.
        An output comes after its call, so the window holding the call holds its answers too."""
        wanted = {item.call_id for item in items if item.kind == "function_call_output"}
        wanted -= {item.call_id for item in items if item.kind == "function_call"}
        history: list[HistoryRow] = await self._timed(self.store.history(owner, tip, CALL_LOOKBACK_FIRST))
        if not wanted <= calls_in(history):
            history = await self._timed(self.store.history(owner, tip, CALL_LOOKBACK_TOKENS))
        return history

    async def seed(self, owner: str, conversation_id: str, items: list[Item]) -> None:
        """The first items of a conversation just made: nobody else knows its id yet, so there is no
        writer to keep out and no tip to read."""
        await self._write_items(owner, conversation_id, None, items)

    async def _write_items(self, owner: str, conversation_id: str, parent: StoredItem | None,
                           items: list[Item], lease: tuple[str, str] | None = None) -> None:  # fmt: skip
        enc = parent.enc if parent is not None else "o200k_base"
        new = [NewItem(item, item.chat(), item.cost(enc)) for item in items]
        write = TurnWrite(owner=owner, conversation_id=conversation_id,
                          parent_id=parent.item.id if parent is not None else None, enc=enc, origin="v1",
                          created_at=time.time(), items=new, conversation_tip=conversation_id,
                          lease=lease)  # fmt: skip
        await self._timed(self.store.add_turn(write))

    # -- opening a turn ------------------------------------------------------------------------------
    async def open(self, spec: TurnSpec) -> OpenTurn:
        """Everything up to the upstream's first byte; failures up to here raise."""
        hold = await self.hold(spec.conversation, spec.timeout_s + 30) if spec.conversation is not None else None
        try:
            return await self._open(spec, hold)
        except BaseException as exc:
            # Before the error is told, so a retry does not meet the lock; not waited for when the
            # store is what failed (it would cost the caller the store timeout once more).
            await let_go(hold, wait=not isinstance(exc, StoreUnavailable))
            raise

    async def count(self, spec: TurnSpec) -> int:
        """The prompt tokens the turn would send (its history cut as it would be), nothing sent."""
        return (await self._prepare(spec)).used

    async def _prepare(self, spec: TurnSpec) -> _Prepared:
        parent, conversation_id = await self._parent(spec)
        encoding = parent.enc if parent is not None else encoding_for(spec.model)
        input_chats = _encode(spec.inputs)
        fixed = REPLY_PRIMING + sum(item.cost(encoding) for item in spec.inputs)
        if spec.instructions:
            fixed += message_cost(spec.instructions, encoding)
        budget = spec.budget.prompt_tokens
        if not is_exact(spec.model):
            budget = int(budget * ESTIMATE_MARGIN)
        if fixed > budget:
            raise BadRequest("prompt_too_long", tokens=fixed, budget=budget, code="context_length_exceeded")
        history: list[HistoryRow] = []
        base = Window(empty_path(spec.owner), 0, 0, True)
        used = fixed
        if parent is not None and spec.target.upstream != "web":  # the web backend keeps its own history
            room = budget - fixed
            source = await self._history(spec.owner, parent, room)
            start = source.fit(room)
            window = source.rows[start:]
            left_out = start > 0 or not source.complete  # older items exist, beyond what fits
            if not start and left_out and not spec.budget.truncate:
                # Everything read fits: the read stopped either at the budget or at an ancestor
                # retention already removed. Only the first is a reason to refuse.
                left_out = await self._older_exists(spec.owner, source.rows)
            if left_out and not spec.budget.truncate:
                total = max(fixed + source.cost(0), budget + 1)  # a floor when not all was read
                raise BadRequest("context_length_exceeded", tokens=total, budget=budget, code="context_length_exceeded")
            if source.plain:  # nothing to leave out: the window's cost is known without a pass over it
                history, used = window, fixed + source.cost(start)
            else:
                history = visible(window)
                used = fixed + sum(map(_COST, history))
            base = Window(source, start, room, not left_out)
        if spec.target.upstream != "web":
            _answers_have_calls(spec.inputs, history)
            if spec.origin == "v1":
                _calls_are_answered(spec.inputs, history)
        return _Prepared(parent, conversation_id, encoding, input_chats, history, used, base)

    async def _open(self, spec: TurnSpec, hold: Release | None) -> OpenTurn:
        ready = await self._prepare(spec)
        # No input, and no history to be the question (none, or all of it deleted); the web backend
        # keeps its own history, so a parent is enough there.
        if not spec.inputs and (ready.parent is None or (spec.target.upstream != "web" and not ready.history)):
            raise BadRequest("invalid_param", param="input", detail="no items to answer")
        parent, base = ready.parent, ready.base
        prompt = Prompt(
            model=spec.model,
            instructions=spec.instructions,
            history=ready.history,
            plain=base.path.plain,
            inputs=spec.inputs,
            input_chats=ready.input_chats,
            params=spec.params,
            max_output_tokens=spec.budget.output_for(ready.used),
            tools=spec.tools,
            tool_choice=spec.tool_choice,
            parallel_tool_calls=spec.parallel_tool_calls,
            stream=spec.stream,
            session_id=ready.conversation_id,
            web_parent=_web_ids(parent),
        )
        turn = OpenTurn(self, spec, prompt, parent, ready.conversation_id, ready.encoding, ready.used, base,
                        ready.input_chats)  # fmt: skip
        turn.hold = hold
        try:
            await turn.start()
        except BaseException:
            turn.hold = None  # ``open`` lets go of it: a late abort must not mark a later holder as leaving
            raise
        return turn

    async def _parent(self, spec: TurnSpec) -> tuple[StoredItem | None, str]:
        """The item this turn answers (None for a new conversation) and the conversation's id."""
        reference = spec.parent
        conversation_id = spec.conversation
        if spec.conversation is not None:
            record = await self._timed(find(self.store, spec.owner, spec.conversation, make=True))
            reference = record.tip
        if reference is None:
            await self._timed(self.store.ping())  # the store must answer before anything is spent
            return None, conversation_id or mint("conv_")
        parent = await self.resolve(spec.owner, reference)
        await self._timed(self.store.writable())  # the read answered; SQLite may still refuse the write
        if parent is not None and parent.deleted and spec.conversation is None and not reference.startswith("resp_"):
            parent = None  # an item deleted is gone for every door; a response is while its record stays
        if parent is None:
            if spec.conversation is not None:  # the tip went (retention): start the conversation over
                return None, spec.conversation
            raise NotFound("parent_not_found", id=reference)
        if spec.compatible is not None:
            spec.compatible(parent)
        return parent, conversation_id or parent.conversation_id

    async def _older_exists(self, owner: str, rows: list[HistoryRow]) -> bool:
        older = rows[0][4] if rows else None
        return older is not None and await self._timed(self.store.get_item(owner, older)) is not None

    async def _history(self, owner: str, parent: StoredItem, budget: int) -> Path:
        key = parent.item.id
        found = self.cache.get(key, owner, parent.gen, budget)
        if found is not None:
            return found
        rows = await self._timed(self.store.history(owner, key, budget))
        if not rows:
            raise NotFound("parent_not_found", id=key)
        path = path_from_store(owner, parent.gen, rows, budget)
        self.cache.put(key, path)
        return path


def _web_ids(parent: StoredItem | None) -> tuple[str, str] | None:
    web = parent.item.meta.get("web") if parent is not None else None
    if isinstance(web, list) and len(web) == 2 and all(isinstance(v, str) for v in web):
        return web[0], web[1]
    return None


class OpenTurn:
    """A turn whose upstream is answering. Iterate ``events()``; then ``finish()`` stores the turn
    (once) and returns the result; ``close()`` gives up without storing."""

    def __init__(self, turns: Turns, spec: TurnSpec, prompt: Prompt, parent: StoredItem | None,
                 conversation_id: str, encoding: str, prompt_tokens: int, base: Window,
                 input_chats: list[bytes]):  # fmt: skip
        self.turns = turns
        self.spec = spec
        self.prompt = prompt
        self.parent = parent
        self.conversation_id = conversation_id
        self.encoding = encoding
        self.prompt_tokens = prompt_tokens
        self.base = base
        self.input_chats = input_chats
        self.reply_id = mint(spec.reply_prefix)
        self.created_at = time.time()
        self.reply: Reply | None = None
        self._release: Release | None = None
        # The conversation's, for a turn asked by conversation id: let go once the turn is stored.
        self.hold: Release | None = None
        self._result: TurnResult | None = None
        self._store_failed: StoreUnavailable | None = None  # the store failed this turn's write
        self._closed = False
        self._timeout: asyncio.Timeout | None = None  # while the upstream is being opened
        self._watch: Watchdog | None = None  # while its events are read
        self._aborted: ServiceError | None = None
        self._deadline = 0.0
        self._idle_hit = False
        self._started = 0.0
        # Output items in the order they first appeared: ("message", -1) or ("tool", its index), and
        # the ids tool calls' items get (minted when they appear, so a stream can show them).
        self._order: list[tuple[str, int]] = []
        # The tool call (its index) the last event added to: the one a reply that stops short may have cut
        # mid-way (calls arrive one after another; an earlier one ended when the next began). -1: none.
        self.open_call = -1
        self._tool_items: dict[int, str] = {}
        self._message_seen = False

    @property
    def text(self) -> str:
        return self.reply.text if self.reply is not None else ""

    @property
    def host(self) -> str:
        return self.spec.target.host

    async def start(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + spec.timeout_s
        self.turns.activity.turns.add(self)
        log = current_log()
        log.upstream = self.host
        log.turn = self
        if log.gone:  # the client left while this turn was being prepared
            self.abort(ClientGone("client_left"))
        self._started = time.perf_counter()
        try:
            async with asyncio.timeout_at(self._deadline) as self._timeout:
                if spec.queue_key is not None:
                    self._release = await self.turns.queues.acquire(spec.queue_key, spec.timeout_s + 30)
                self._check_abort()
                upstream = self.turns.upstreams[spec.target.upstream]
                self.reply = await upstream.open(self.prompt, spec.target)
        except TimeoutError as exc:
            self._gave_up()
            raise self._timed_out() from exc
        except BaseException:
            self._gave_up()
            raise
        finally:
            self._timeout = None
        self.turns.activity.open_streams += 1

    def _gave_up(self) -> None:
        """The upstream never answered: the wait still counts as the upstream's time in the log."""
        self._closed = True
        current_log().upstream_ms += (time.perf_counter() - self._started) * 1000
        self._forget()

    def _check_abort(self) -> None:
        if self._aborted is not None:
            raise self._aborted

    def _timed_out(self) -> ServiceError:
        if self._aborted is not None:
            return self._aborted
        if self.spec.queue_key is not None and self._release is None:  # never got past the account's queue
            return GatewayTimeout("account_busy_timeout", host=self.host, seconds=round(self.spec.timeout_s, 3))
        if self._idle_hit:
            return GatewayTimeout("upstream_idle_timeout", host=self.host, seconds=round(self.spec.idle_s, 3))
        return GatewayTimeout("upstream_timeout", host=self.host, seconds=round(self.spec.timeout_s, 3))

    def abort(self, error: ServiceError | None = None) -> None:
        """Stop this turn now (the server is shutting down): what it is waiting for raises ``error``."""
        self._aborted = error or ShuttingDown()
        self.leaving()
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(asyncio.get_running_loop().time())
        if self._watch is not None:
            self._watch.expire()

    def leaving(self) -> None:
        """Its client left: a turn asking for this conversation meanwhile waits for this one to let go
        (what arrived stored first) instead of meeting it as conversation_locked."""
        if self.hold is not None and self.spec.conversation is not None:
            self.turns.queues.leaving(_held_key(self.spec.conversation))

    async def events(self) -> AsyncIterator[Event]:
        """What the upstream sends, within the turn's deadline and idle limit."""
        assert self.reply is not None
        source = self.reply.events().__aiter__()
        # None when it all arrived already: nothing to wait for.
        watch = None if self.reply.instant else Watchdog(self._deadline, self.spec.idle_s)
        self._watch = watch
        try:
            while True:
                self._check_abort()
                if watch is not None:
                    watch.begin()
                try:
                    event = await anext(source)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError as exc:
                    if watch is not None and watch.timed_out():
                        self._idle_hit = watch.idle_hit
                        raise self._timed_out() from exc
                    raise
                finally:
                    if watch is not None:
                        watch.end()
                if event.text:
                    self.open_call = -1  # text after a call: the call had ended
                    if not self._message_seen:
                        self._message_seen = True
                        self._order.append(("message", -1))
                elif event.tool_index >= 0:
                    self.open_call = event.tool_index
                    known = self._tool_items.get(event.tool_index)
                    if known is None:
                        known = self._tool_items[event.tool_index] = mint("fc_")
                        self._order.append(("tool", event.tool_index))
                    event.item_id = known
                yield event
        finally:
            self._watch = None
            if watch is not None:
                watch.close()

    async def finish(self, incomplete: str | None = None) -> TurnResult:
        """Store what arrived (once) and return it. Called when the reply ended or was cut."""
        if self._result is not None:
            return self._result
        if self._store_failed is not None:  # once per turn: another try would cost the store timeout again
            raise self._store_failed
        reply = self.reply
        assert reply is not None
        activity = self.turns.activity
        activity.storing += 1
        try:
            await self.close(settle=False)
            try:
                return await self._finish(reply, incomplete)
            finally:
                await self.close()
        finally:
            activity.storing -= 1
            activity.changed()

    async def _finish(self, reply: Reply, incomplete: str | None) -> TurnResult:
        if incomplete is None and getattr(reply, "truncated", False):
            incomplete = "max_reply_bytes"
        if incomplete is None and not reply.complete:
            incomplete = "interrupted"
        if incomplete is None and reply.finish_reason == "length":
            incomplete = "max_output_tokens"
        if incomplete is None and reply.finish_reason == "content_filter":  # the upstream withheld the rest
            incomplete = "content_filter"
        spec = self.spec
        status = "incomplete" if incomplete else "completed"
        text = reply.text
        calls = {call.index: call for call in reply.tool_calls}
        order = list(self._order)
        # A reply that failed (or whose client left) before its first word or call is stored without output:
        # its id was told (a Responses stream's first event), so it is kept as failed or cancelled, and no
        # empty answer joins the history (the tip stays: a retry of the same input is not doubled there).
        failed_bare = incomplete in ("error", "client_left") and not text and not calls
        if ("message", -1) not in order and (text or not calls or spec.reply_message) and not failed_bare:
            order.append(("message", -1))
        placed = set(order)  # a set: a reply may carry very many calls, and a list scan per call is quadratic
        order += [("tool", index) for index in calls if ("tool", index) not in placed]
        outputs: list[Item] = []
        for kind, index in order:
            if kind == "message":
                parts = [dict(REFUSAL_PART)] if reply.refusal else None
                outputs.append(Item(self.reply_id, "message", "assistant", text, parts, status=status,
                                    meta=dict(reply.meta)))  # fmt: skip
            elif index in calls:
                call = calls[index]
                item_id = self._tool_items.get(index) or mint("fc_")
                cut = incomplete is not None and index == self.open_call
                outputs.append(Item(item_id, "function_call", "assistant", call.arguments, call_id=call.call_id,
                                    name=call.name, status="incomplete" if cut else "completed"))  # fmt: skip
        calls_list = list(calls.values())
        usage = dict(reply.usage) if reply.usage else {}
        if "prompt_tokens" not in usage or "completion_tokens" not in usage:  # none, or half of it
            usage = {**self._estimated_usage(text, calls_list), **usage, "estimated": True}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        result = TurnResult(
            inputs=spec.inputs, outputs=outputs, reply_id=self.reply_id, text=text, tool_calls=calls_list, usage=usage,
            incomplete=incomplete, conversation_id=self.conversation_id,
            parent_id=self.parent.item.id if self.parent else None, reply=reply, prompt_tokens=self.prompt_tokens,
            created_at=self.created_at, stored=spec.store,
        )  # fmt: skip
        if spec.store:
            try:
                await self._store(result)
            except StoreUnavailable as exc:
                self._store_failed = exc
                raise
        self._result = result
        return result

    def _estimated_usage(self, text: str, calls: list[ToolCall]) -> dict[str, Any]:
        completion = count(text, self.encoding) + sum(count(c.arguments, self.encoding) for c in calls)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "estimated": True,
        }

    async def _store(self, result: TurnResult) -> None:
        spec = self.spec
        items = [*result.inputs, *result.outputs]
        chats = [*self.input_chats, *map(_stored_chat, result.outputs)]
        new = [NewItem(item, chat, item.cost(self.encoding)) for item, chat in zip(items, chats, strict=True)]
        write = TurnWrite(
            owner=spec.owner, conversation_id=self.conversation_id, parent_id=result.parent_id, enc=self.encoding,
            origin=spec.origin, created_at=self.created_at, items=new,
            response_id=None, conversation_tip=spec.conversation if result.outputs else None,
            keep_tip=not result.outputs,
            # The original route shows every reply's conversationId (the legacy web backend shows its
            # own); a first turn that failed before its words was told no conversation.
            opens_record=spec.origin in ("1", "2") and (bool(result.outputs) or result.parent_id is not None),
        )  # fmt: skip
        if spec.record is not None:
            record = spec.record(result)
            write.response, write.response_id = record, record.id
        await self.turns.still_held(self.hold, spec.conversation)
        if self.hold is not None and write.conversation_tip:
            write.lease = self.hold.fence
        if not new:  # no input (the history was the question) and no word came: the response alone is kept
            if write.response is not None:
                await self.turns._timed(self.turns.store.put_record(write.response, None))
            return
        await self.turns._timed(self.turns.store.add_turn(write))
        base = self.base
        # A conversation's turn goes after its tip as the store finds it (another door may have moved it
        # meanwhile): the path read before is not certain to be its history, so it is not kept.
        if spec.conversation is not None or len(base) + len(new) < MIN_ROWS:
            return  # too short to keep in memory
        rows: list[HistoryRow] = []
        parent = result.parent_id
        for n in new:
            # bytes(memoryview(...)): an exact-size copy; orjson's result holds a 4 kB buffer.
            rows.append((n.item.id, n.item.kind, bytes(memoryview(n.chat)), n.cost, parent))
            parent = n.item.id
        self.turns.cache.put(items[-1].id, base.grown(rows))

    async def close(self, settle: bool = True) -> None:
        """Let go of the upstream and the account queue (safe to call twice) and, when ``settle``,
        of the conversation: not before what arrived is stored, or the next turn would miss it."""
        if not self._closed:
            self._closed = True
            current_log().upstream_ms += (time.perf_counter() - self._started) * 1000
            if self.reply is not None:
                self.turns.activity.open_streams -= 1
            self._forget()
            if self.reply is not None:
                with contextlib.suppress(Exception):
                    await self.reply.aclose()
        if settle:
            hold, self.hold = self.hold, None
            await let_go(hold, wait=self._store_failed is None)

    def _forget(self) -> None:
        """Let go of the account queue; the conversation is let go of by ``close`` or ``Turns.open``."""
        self.turns.activity.turns.discard(self)
        self.turns.activity.changed()
        if self._release is not None:
            self._release()
            self._release = None


def _held_key(conversation_id: str) -> str:
    return "conversation:" + conversation_id


async def let_go(release: Release | None, wait: bool = True) -> None:
    """Release a lease and, with ``wait``, wait until the store knows (so a client's next request finds
    it free). Without: a store that just failed would cost the caller its timeout again; a give-back the
    store misses leaves a lease that expires within its lease time, or that this process takes over as
    its own at once (see ``Leases``)."""
    task = release() if release is not None else None
    if task is not None and wait:
        await asyncio.shield(task)  # cancelled meanwhile, it still goes back
