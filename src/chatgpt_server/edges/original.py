"""The original's door: POST /api/v1/gpt/getInfo (type "1": one JSON reply; type "2": a stream).

It translates the contract's body into a turn for the core and the result back into the contract's
``data``: a chat message ``{role, id, parentMessageId, conversationId, text, detail}``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import ASGIApp

from ..core.activity import current_log
from ..core.items import Item, mint
from ..core.tokens import uses_max_completion_tokens
from ..core.turns import Budget, OpenTurn, TurnResult, TurnSpec
from ..errors import BadRequest, ServiceError, ValidationFailed
from ..stores import StoredItem
from ..upstreams.base import Target
from ..upstreams.http import shown_label
from .envelope import error_body, log_stream_failure, ok, success
from .http import read_json
from .messages import pick_language
from .original_request import ChatRequest, parse_chat
from .sse import EventStream, event

if TYPE_CHECKING:
    from ..accounts.service import Credential
    from ..app import Services

DEFAULT_SYSTEM_MESSAGE = (
    "You are ChatGPT, a large language model trained by OpenAI. Answer as concisely as possible.\n"
    "Knowledge cutoff: 2021-09-01\nCurrent date: {date}"
)
# The original library's sampling defaults, for the chat models that accept them.
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_p": 1.0, "presence_penalty": 1.0}
_MODE_OF_ORIGIN = {"1": "1", "2": "2", "web": "2", "v1": "1"}


@functools.lru_cache(maxsize=4)
def default_system_message(date: str) -> str:
    return DEFAULT_SYSTEM_MESSAGE.format(date=date)


def todays_system_message() -> str:
    """The default system message of today, UTC, as the original's library dated it (toISOString)."""
    return default_system_message(time.strftime("%Y-%m-%d", time.gmtime()))


def language_of(request: Request, default: str) -> str:
    return pick_language(request.headers.get("accept-language"), default)


def _compatible(mode: str, backend: str) -> Any:
    """Which stored conversations a request of this mode can continue."""
    accepted = {"1": ("1", "v1"), "codex": ("2", "v1"), "web": ("web",)}["1" if mode == "1" else backend]

    def check(parent: StoredItem) -> None:
        if parent.origin not in accepted:
            if mode == "2" and _MODE_OF_ORIGIN.get(parent.origin) == "2":
                raise BadRequest("parent_other_backend", id=parent.item.id, backend=backend)
            raise BadRequest("parent_wrong_mode", id=parent.item.id, mode=_MODE_OF_ORIGIN.get(parent.origin, "?"))
        if backend == "web" and mode == "2" and not isinstance(parent.item.meta.get("web"), list):
            # The web backend keeps the history: without its ids for this reply, it cannot go on.
            raise BadRequest("parent_web_ids_missing", id=parent.item.id)

    return check


async def spec_for(chat: ChatRequest, services: Services) -> tuple[TurnSpec, Credential | None]:
    """The turn, and for a stored ChatGPT account the credential to refresh if the backend refuses it."""
    settings = services.settings
    user = Item(mint("uuid"), "message", "user", chat.content)
    system = chat.system_message
    if system is None:
        system = todays_system_message()
    common: dict[str, Any] = {
        "inputs": [user], "parent": chat.parent_message_id, "stream": chat.stream,
        "timeout_s": chat.timeout_s, "idle_s": chat.idle_timeout_s,
        "reply_message": True,  # the reply's id is told, and continued from, even for tool calls only
    }  # fmt: skip
    if chat.mode == "1":
        params = dict(chat.completion_params)
        model = str(params.pop("model", None) or chat.model or settings.default_model)
        if not uses_max_completion_tokens(model):
            params = {**SAMPLING_DEFAULTS, **params}
        target = Target("chat", chat.base_url, chat.key, chat.organization)
        owner = await services.owners.of(chat.key)
        spec = TurnSpec(owner=owner, origin="1", target=target, model=model, instructions=system or None,
                        params=params, reply_prefix="chatcmpl-", compatible=_compatible("1", "chat"),
                        budget=_budget(chat, chat.max_model_tokens), **common)  # fmt: skip
        return spec, None
    model = chat.model or settings.default_chatgpt_model
    # The original's mode 2 counted no tokens: its 4000 was the API library's. A ChatGPT model's own
    # window bounds the history unless the client set one.
    window = chat.max_model_tokens if chat.model_tokens_given else services.models.window(model)
    if chat.response_tokens_given and chat.max_response_tokens >= window:  # the default is capped instead
        raise ValidationFailed([("response_tokens_over_window", {"window": window, "model": model[:256]})])
    common["budget"] = _budget(chat, window, from_window=not chat.model_tokens_given)
    backend = settings.chatgpt_backend
    if backend == "web":
        target = Target("web", chat.conversation_url, chat.key, headers=tuple(chat.headers.items()))
        owner = await services.owners.of(chat.key)
        spec = TurnSpec(owner=owner, origin="web", target=target, model=model, reply_prefix="uuid",
                        queue_key=owner, compatible=_compatible("2", "web"), **common)  # fmt: skip
        return spec, None
    account = await services.accounts.credential(chat.key)
    url = chat.conversation_url if chat.conversation_url != settings.chatgpt_url else settings.codex_url
    target = Target("codex", url, account.access_token, headers=tuple(chat.headers.items()),
                    account_id=account.account_id)  # fmt: skip
    spec = TurnSpec(owner=account.owner, origin="2", target=target, model=model, instructions=system or None,
                    reply_prefix="uuid", compatible=_compatible("2", "codex"), **common)  # fmt: skip
    return spec, account


def _budget(chat: ChatRequest, model_tokens: int, from_window: bool = False) -> Budget:
    """``from_window``: the budget is a model's context window (mode 2), where the default reply share (mode 1's,
    which the original's mode 2 never counted) takes no more than a quarter of a small one."""
    response_tokens = min(chat.max_response_tokens, model_tokens - 1)
    if from_window and not chat.response_tokens_given:
        response_tokens = min(response_tokens, max(1, model_tokens // 4))
    return Budget(model_tokens - response_tokens, True, None, model_tokens, response_tokens)


def _message(result: TurnResult) -> dict[str, Any]:
    """The completion's message, tool calls included (content null beside them when there is no
    text, as OpenAI writes it)."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    calls = [{"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
             for call in result.tool_calls]  # fmt: skip
    return {"role": "assistant", "content": result.text or None, "tool_calls": calls}


def reply_data(chat: ChatRequest, result: TurnResult, model: str) -> dict[str, Any]:
    """The ``data`` of the envelope, shaped as the original library's chat message."""
    reply = result.reply
    conversation_id = result.conversation_id
    web = result.outputs[0].meta.get("web") if result.outputs else None
    if isinstance(web, list) and web:
        conversation_id = shown_label(web[0], chat.key) or conversation_id
    data: dict[str, Any] = {
        "role": "assistant",
        "id": result.reply_id,
        "parentMessageId": result.inputs[-1].id,
        "conversationId": conversation_id,
        "text": result.text,
    }
    if chat.mode == "1":
        finish = shown_label(reply.finish_reason, chat.key) or ("stop" if not result.incomplete else None)
        data["detail"] = {
            "id": shown_label(reply.upstream_id, chat.key) or result.reply_id,
            "object": "chat.completion",
            "created": getattr(reply, "created", None) or int(result.created_at),
            "model": shown_label(reply.model, chat.key) or model,
            "choices": [{"index": 0, "message": _message(result), "finish_reason": finish}],
            "usage": result.usage,
        }
    elif reply.meta.get("rateLimits") is not None:
        data["detail"] = {"model": shown_label(reply.model, chat.key) or model, "usage": result.usage,
                          "rateLimits": reply.meta["rateLimits"]}  # fmt: skip
    if result.incomplete:
        data["incomplete"] = True
        data["incompleteReason"] = result.incomplete
    return data


def _secrets_in(body: Any) -> tuple[str, ...]:
    opts = body.get("opts") if isinstance(body, dict) else None
    key = opts.get("key") if isinstance(opts, dict) else None
    return (key,) if isinstance(key, str) else ()


async def get_info(request: Request, services: Services) -> ASGIApp:
    settings = services.settings
    body = await read_json(request, settings.max_body_bytes)
    log = current_log()
    log.secrets = (
        *log.secrets,
        *_secrets_in(body),
    )  # before the checks: a message about a field must not quote the key
    chat = parse_chat(body, settings)
    log.route = f"gpt mode{chat.mode} type{2 if chat.stream else 1}"
    spec, credential = await spec_for(chat, services)
    if not chat.stream:
        # A client that leaves stops the turn wherever it waits (RequestLog.client_left): a 499.
        result = await _whole(services, spec, credential)
        return ok(reply_data(chat, result, spec.model), status=201)
    turn = await services.accounts.open_turn(services.turns, spec, credential)
    language = language_of(request, settings.language)

    async def on_leave() -> None:
        if turn.text:  # else the client was told nothing (no event): nothing is stored
            try:
                await turn.finish(incomplete="client_left")
            except ServiceError as exc:
                log_stream_failure(exc, f"the partial reply was not stored: {exc.key}", "client left")
        else:
            await turn.close()

    produce = _events(turn, chat, spec.model, request.url.path, language)
    return EventStream(
        produce, settings.heartbeat_seconds, on_leave, stall_s=min(spec.idle_s, settings.idle_timeout_ms / 1000)
    )


async def _whole(services: Services, spec: TurnSpec, credential: Credential | None) -> TurnResult:
    turn = await services.accounts.open_turn(services.turns, spec, credential)
    try:
        async for _ in turn.events():
            pass
        return await turn.finish()
    finally:
        await turn.close()


async def _events(turn: OpenTurn, chat: ChatRequest, model: str, path: str, language: str) -> AsyncIterator[bytes]:
    log = current_log()
    parent_id = turn.spec.inputs[-1].id
    try:
        async for item in turn.events():
            if not item.text:
                continue
            progress: dict[str, Any] = {"delta": item.text}
            if not chat.delta_only:
                progress["text"] = turn.text
            progress["id"] = turn.reply_id
            progress["parentMessageId"] = parent_id
            progress["conversationId"] = _conversation_shown(turn)
            yield event("delta", progress)
        result = await turn.finish()
        log.outcome = "done"
        yield event("done", success(reply_data(chat, result, model)))
    except ServiceError as exc:
        log_stream_failure(exc)
        if turn.text:
            with contextlib.suppress(ServiceError):
                await turn.finish(incomplete="error")
        yield event("error", error_body(exc, path, language))
    finally:
        await turn.close()


def _conversation_shown(turn: OpenTurn) -> str:
    reply = turn.reply
    web = reply.meta.get("web") if reply is not None else None
    return (shown_label(str(web[0]), turn.spec.target.credential) if web else None) or turn.conversation_id
