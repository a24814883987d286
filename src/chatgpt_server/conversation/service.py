"""A turn of a conversation: from request to stored reply, for both modes.

Order of work for every turn: check the parent (or that the store answers) → build the prompt →
call the upstream → store the user message and the reply in one atomic write → answer. A reply is
returned only after it is stored, and the upstream is not called when the store cannot answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BadGateway, BadRequest, NotFound, StoreUnavailable
from ..settings import Settings
from ..stores import DuplicateMessage, Store, StoredMessage
from ..upstreams import chatgpt_web, openai
from ..upstreams.http import Upstream, host_of, transport_error
from .locks import KeyedLocks
from .models import ChatRequest, Reply
from .owners import Owners
from .tokens import REPLY_PRIMING, count, encoding_for, message_costs, uses_max_completion_tokens

DEFAULT_SYSTEM_MESSAGE = (
    "You are ChatGPT, a large language model trained by OpenAI. Answer as concisely as possible.\n"
    "Knowledge cutoff: 2021-09-01\nCurrent date: {date}"
)
STORE_FRESH_S = 1.0
T = TypeVar("T")
# The original library's sampling defaults, for the chat models that accept them.
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 1.0, "presence_penalty": 1.0}


@dataclass
class Turn:
    """Everything known about a turn before the upstream is called."""

    request: ChatRequest
    owner: str
    user_id: str
    parent_id: str | None
    conversation_id: str | None
    user_costs: tuple[int, int]
    body: dict[str, Any]
    prompt_tokens: int = 0
    endpoint: openai.Endpoint | None = None
    lock_key: str = ""


class ChatService:
    def __init__(self, settings: Settings, store: Store, upstream: Upstream, owners: Owners):
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.owners = owners
        self.accounts = KeyedLocks()  # mode 2: one reply at a time per account
        self.open_streams = 0  # upstream replies being read right now (for /healthz)
        self._store_answered_at = 0.0

    # -- preparing -------------------------------------------------------------------------------
    async def prepare(self, request: ChatRequest) -> Turn:
        owner = await self.owners.of(request.key)
        if request.mode == "1":
            return await self._prepare_api(request, owner)
        return await self._prepare_web(request, owner)

    async def _ensure_store(self) -> None:
        """A reply that cannot be stored must not be spent: before calling the upstream for a new
        conversation, make sure the store answers. Under load some store operation succeeds every few
        milliseconds, which is proof enough; after a failure, or a quiet second, ask it."""
        if time.monotonic() - self._store_answered_at > STORE_FRESH_S:
            await self._watch(self.store.ping())

    async def _watch(self, operation: Awaitable[T]) -> T:
        """Run a store operation, noting whether the store answered."""
        try:
            result = await operation
        except StoreUnavailable:
            self._store_answered_at = 0.0
            raise
        self._store_answered_at = time.monotonic()
        return result

    async def _parent(self, request: ChatRequest, owner: str) -> StoredMessage | None:
        if not request.is_follow:
            await self._ensure_store()
            return None
        assert request.parent_message_id
        parent = await self._watch(self.store.get(owner, request.parent_message_id))
        self._check_parent(request, parent)
        return parent

    @staticmethod
    def _check_parent(request: ChatRequest, parent: StoredMessage | None) -> None:
        if parent is None:
            raise NotFound("parent_not_found", id=request.parent_message_id)
        if parent.mode != request.mode:
            raise BadRequest("parent_wrong_mode", id=parent.id, mode=parent.mode)

    async def _prepare_api(self, request: ChatRequest, owner: str) -> Turn:
        params = request.completion_params
        model = str(params.get("model") or request.model or self.settings.default_model)
        encoding = encoding_for(model)
        system = request.system_message
        if system is None:
            system = DEFAULT_SYSTEM_MESSAGE.format(date=time.strftime("%Y-%m-%d"))
        texts = [request.content, system] if system else [request.content]
        costs = message_costs(texts)
        pick = 1 if encoding == "o200k_base" else 0
        fixed = REPLY_PRIMING + sum(c[pick] for c in costs)
        budget = request.max_model_tokens - request.max_response_tokens
        if fixed > budget:
            raise BadRequest("prompt_too_long", tokens=fixed, budget=budget)

        history: list[StoredMessage] = []
        conversation_id: str | None = None
        if request.is_follow:
            assert request.parent_message_id
            chain = await self._watch(self.store.chain(owner, request.parent_message_id, encoding, budget - fixed))
            self._check_parent(request, chain[0] if chain else None)
            conversation_id = chain[0].conversation_id
            used = 0
            for message in chain:  # newest first: keep the newest turns that fit
                cost = message.tokens(encoding)
                if fixed + used + cost > budget:
                    break
                used += cost
                history.append(message)
            history.reverse()
            fixed += used
        else:
            await self._ensure_store()

        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m.role, "content": m.text} for m in history]
        messages.append({"role": "user", "content": request.content})
        max_tokens = max(1, min(request.max_model_tokens - fixed, request.max_response_tokens))
        reasoning = uses_max_completion_tokens(model)
        body: dict[str, Any] = {"model": model, **({} if reasoning else SAMPLING_DEFAULTS)}
        body["max_completion_tokens" if reasoning else "max_tokens"] = max_tokens
        body.update(params)
        body["model"] = model
        body["messages"] = messages
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        user_id = str(uuid.uuid4())
        return Turn(
            request=request,
            owner=owner,
            user_id=user_id,
            parent_id=request.parent_message_id if request.is_follow else None,
            conversation_id=conversation_id or user_id,
            user_costs=costs[0],
            body=body,
            prompt_tokens=fixed,
            endpoint=openai.Endpoint(request.base_url, request.key, request.organization),
        )

    async def _prepare_web(self, request: ChatRequest, owner: str) -> Turn:
        parent = await self._parent(request, owner)
        user_id = chatgpt_web.new_id()
        body = chatgpt_web.conversation_body(
            request.content,
            user_id,
            parent.id if parent else chatgpt_web.new_id(),
            parent.conversation_id if parent else None,
            request.model or self.settings.default_chatgpt_model,
        )
        return Turn(
            request=request,
            owner=owner,
            user_id=user_id,
            parent_id=parent.id if parent else None,
            conversation_id=parent.conversation_id if parent else None,
            user_costs=message_costs([request.content])[0],
            body=body,
            lock_key=chatgpt_web.account_of(request.key) or owner,
        )

    # -- answering -------------------------------------------------------------------------------
    async def reply(self, request: ChatRequest) -> Reply:
        """One whole reply (type "1"), stored before it is returned."""
        turn = await self.prepare(request)
        if request.mode == "1":
            return await self._complete_api(turn)
        stream = await self.open_stream(turn)
        try:
            async with asyncio.timeout(request.timeout_s):
                async for _ in stream.deltas():
                    pass
        except TimeoutError as exc:
            await stream.close()
            raise transport_error(exc, host_of(request.conversation_url), request.timeout_s) from exc
        except BaseException:
            await stream.close()
            raise
        return await stream.finish(incomplete=not stream.complete)

    async def _complete_api(self, turn: Turn) -> Reply:
        assert turn.endpoint is not None
        completion = await openai.complete(self.upstream, turn.endpoint, turn.body, turn.request.timeout_s)
        text = completion["choices"][0]["message"]["content"]
        if not completion.get("usage"):
            completion["usage"] = self._estimated_usage(turn, text)
        reply_id = str(completion.get("id") or f"chatcmpl-{uuid.uuid4().hex}")
        assert turn.conversation_id
        await self.store_turn(turn, reply_id, turn.conversation_id, text, incomplete=False)
        return Reply(reply_id, turn.user_id, turn.conversation_id, text, completion)

    def _estimated_usage(self, turn: Turn, text: str) -> dict[str, Any]:
        completion_tokens = count(text, encoding_for(str(turn.body.get("model", ""))))
        return {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": turn.prompt_tokens + completion_tokens,
            "estimated": True,
        }

    async def open_stream(self, turn: Turn) -> ReplyStream:
        """Call the upstream and wait for its answer to start; failures up to here raise."""
        request = turn.request
        if request.mode == "1":
            assert turn.endpoint is not None
            source: openai.CompletionStream | chatgpt_web.WebStream = await openai.open_stream(
                self.upstream, turn.endpoint, turn.body, request.timeout_s, request.idle_timeout_s
            )
            self.open_streams += 1
            return ReplyStream(self, turn, source, release=None)
        lock = await self.accounts.acquire(turn.lock_key)
        try:
            source = await chatgpt_web.open_conversation(
                self.upstream,
                request.conversation_url,
                request.key,
                turn.body,
                request.headers,
                request.timeout_s,
                request.idle_timeout_s,
            )
        except BaseException:
            lock()
            raise
        self.open_streams += 1
        return ReplyStream(self, turn, source, release=lock)

    async def store_turn(self, turn: Turn, reply_id: str, conversation_id: str, text: str, incomplete: bool) -> None:
        now = time.time()
        reply_costs = message_costs([text])[0]
        request = turn.request
        user = StoredMessage(
            turn.user_id, turn.parent_id, conversation_id, turn.owner, request.mode, "user",
            request.content, *turn.user_costs, False, now,
        )  # fmt: skip
        reply = StoredMessage(
            reply_id, turn.user_id, conversation_id, turn.owner, request.mode, "assistant",
            text, *reply_costs, incomplete, now,
        )  # fmt: skip
        try:
            await self._watch(self.store.add_turn(user, reply))
        except DuplicateMessage as exc:
            host = turn.endpoint.host if turn.endpoint else host_of(request.conversation_url)
            raise BadGateway("duplicate_message_id", host=host, id=reply_id) from exc


@dataclass
class ReplyStream:
    """A reply being written upstream. Iterate ``deltas()``; then ``finish()`` stores the turn (once)
    and returns the reply; ``close()`` gives up without storing."""

    service: ChatService
    turn: Turn
    source: openai.CompletionStream | chatgpt_web.WebStream
    release: Callable[[], None] | None
    _finished: Reply | None = None
    _closed: bool = False

    @property
    def user_id(self) -> str:
        return self.turn.user_id

    @property
    def reply_id(self) -> str | None:
        source = self.source
        return source.id if isinstance(source, openai.CompletionStream) else source.parser.message_id

    @property
    def conversation_id(self) -> str | None:
        source = self.source
        if isinstance(source, openai.CompletionStream):
            return self.turn.conversation_id
        return source.parser.conversation_id or self.turn.conversation_id

    @property
    def complete(self) -> bool:
        return self.source.complete

    @property
    def text(self) -> str:
        """What arrived so far, as the upstream client assembled it."""
        return self.source.text

    def deltas(self) -> AsyncIterator[str]:
        return self.source.deltas()

    async def finish(self, incomplete: bool = False) -> Reply:
        """Store what arrived and return it as a reply. Called once the stream ended or was cut."""
        if self._finished is not None:
            return self._finished
        await self.close()
        text = self.text
        turn = self.turn
        if turn.request.mode == "1":
            reply_id = self.reply_id or f"chatcmpl-{uuid.uuid4().hex}"
            detail = self._api_detail(reply_id, text, incomplete)
        else:
            reply_id = self.reply_id or str(uuid.uuid4())
            detail = None
        conversation_id = self.conversation_id
        if not conversation_id:
            raise BadGateway(
                "upstream_bad_reply", host=host_of(turn.request.conversation_url), detail="no conversation_id"
            )
        await self.service.store_turn(turn, reply_id, conversation_id, text, incomplete)
        self._finished = Reply(reply_id, turn.user_id, conversation_id, text, detail, incomplete)
        return self._finished

    def _api_detail(self, reply_id: str, text: str, incomplete: bool) -> dict[str, Any]:
        source = self.source
        assert isinstance(source, openai.CompletionStream)
        finish_reason = source.finish_reason or ("stop" if not incomplete else None)
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": source.created or int(time.time()),
            "model": source.model or self.turn.body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": source.usage or self.service._estimated_usage(self.turn, text),
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.service.open_streams -= 1
        with contextlib.suppress(Exception):
            await self.source.aclose()
        if self.release is not None:
            self.release()
