"""OpenAI's Responses API over any upstream: ``/v1/responses``.

A response is a turn: its input items and output items join the conversation tree (the same tree the
original route writes), the response object is kept as a record written with the turn, and
``previous_response_id`` (a response id, or any item id, such as a reply id from the original route)
continues from it. ``instructions`` apply to one response only: they are never stored as items. A
streamed response follows OpenAI's event sequence, and ``response.completed`` is sent only after the
turn is stored, so a follow-up sent the instant it arrives finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ..core.activity import current_log
from ..core.conversations import find
from ..core.items import Item, mint
from ..core.tokens import uses_max_completion_tokens
from ..core.turns import Budget, OpenTurn, TurnResult, TurnSpec
from ..errors import BadRequest, NotFound, ServiceError
from ..stores import Record, StoredItem
from ..upstreams.base import is_count
from .envelope import log_stream_failure, openai_error_body
from .http import JSONBody, read_json
from .openai_items import copy_of, invalid, item_json, output_text, parse_input, refusal_part
from .sse import EventStream, event
from .v1 import Caller, api_key, caller_for, list_body, model_name, open_turn, owner_of, page_of

if TYPE_CHECKING:
    from ..app import Services

KNOWN = {
    "model", "input", "instructions", "previous_response_id", "conversation", "store", "stream", "truncation",
    "max_output_tokens", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "metadata", "user",
    "safety_identifier", "text", "reasoning", "include", "stream_options", "prompt_cache_key", "service_tier",
    "background", "top_logprobs", "max_tool_calls",
}  # fmt: skip
MAX_METADATA = 16
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")  # reasoning efforts passed on
SUMMARIES = ("auto", "concise", "detailed")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
# OpenAI's rule for a function's name, and the dots and colons other upstreams take (MCP-style names).
TOOL_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
T = TypeVar("T")
# The turn's reasons for an incomplete reply that OpenAI has words for (a reply cut at the gateway's size
# cap is one cut at a length); the others are told as cancelled (the client left) or failed.
INCOMPLETE_REASONS = {"max_output_tokens": "max_output_tokens", "content_filter": "content_filter",
                      "max_reply_bytes": "max_output_tokens"}  # fmt: skip
MIN_OUTPUT_TOKENS = 16  # OpenAI refuses less (400 integer_below_min_value)
AUTO_RESERVE = 4096  # output room kept by truncation "auto" when max_output_tokens is not given


@dataclass(slots=True)
class Ask:
    """A validated POST /v1/responses body."""

    model: str
    items: list[Item | str]
    instructions: str | None = None
    previous: str | None = None
    conversation: str | None = None
    store: bool = True
    stream: bool = False
    truncation: str = "disabled"
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = None  # echoed; a chat-completions upstream has no such limit
    text_format: dict[str, Any] | None = None
    verbosity: str | None = None
    effort: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    given_ids: list[str] = field(default_factory=list)  # ids input items carry (items passed back whole)


_JSON_KINDS = {str: "a string", bool: "a boolean", int: "an integer", float: "a decimal", list: "an array",
               dict: "an object", type(None): "null"}  # fmt: skip


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    """A number in [low, high], refused in OpenAI's words and codes (clients branch on them)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = _JSON_KINDS.get(type(value), "a value")
        raise BadRequest("invalid_param", param=name, code="invalid_type",
                         detail=f"expected a decimal, but got {kind} instead.")  # fmt: skip
    if value > high:
        detail = f"decimal above maximum value. Expected a value <= {high:g}, but got {value:g} instead."
        raise BadRequest("invalid_param", param=name, code="decimal_above_max_value", detail=detail)
    if value < low:
        detail = f"decimal below minimum value. Expected a value >= {low:g}, but got {value:g} instead."
        raise BadRequest("invalid_param", param=name, code="decimal_below_min_value", detail=detail)
    return float(value)


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 128:
        raise invalid("tools", "expected a list of at most 128 tools")
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise invalid(where + ".type", f"only function tools are supported, not {str(kind)[:40]!r}")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise invalid(where + ".name", "expected 1 to 64 letters, digits, underscores, dashes, dots or colons")
        if tool.get("strict") is not None and not isinstance(tool["strict"], bool):
            raise invalid(where + ".strict", "expected true or false")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(where + ".parameters", "expected a JSON schema object")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid(where + ".description", "expected a string")
        clean: dict[str, Any] = {"type": "function", "name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                clean[key] = tool[key]
        tools.append(clean)
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> Any:
    if value is None:
        return "auto"
    if value == "required" and not tools:
        raise invalid("tool_choice", "required needs tools: this request has none")
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        if not any(t["name"] == value["name"] for t in tools):
            raise invalid("tool_choice.name", "names no tool of this request")
        return {"type": "function", "name": value["name"]}
    if isinstance(value, dict) and value.get("type") == "allowed_tools":
        return _allowed_tools(value, tools)
    raise invalid("tool_choice", "expected auto, none, required, a function or allowed_tools")


def _allowed_tools(value: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The model may use only these of the request's tools (``mode`` required: must use one)."""
    mode, named = value.get("mode"), value.get("tools")
    if mode not in ("auto", "required"):
        raise invalid("tool_choice.mode", "expected auto or required")
    if not isinstance(named, list) or not named or len(named) > len(tools):
        raise invalid("tool_choice.tools", "expected a list of this request's function tools, each once")
    known = {t["name"] for t in tools}
    names: list[str] = []
    for i, tool in enumerate(named):
        name = tool.get("name") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(name, str):
            raise invalid(f"tool_choice.tools[{i}]", "expected a function tool: {type: function, name}")
        if name not in known:
            raise invalid(f"tool_choice.tools[{i}].name", "names no tool of this request")
        if name in names:
            raise invalid(f"tool_choice.tools[{i}].name", "names a tool twice")
        names.append(name)
    return {"type": "allowed_tools", "mode": mode, "tools": [{"type": "function", "name": n} for n in names]}


def _metadata(value: Any) -> dict[str, str]:
    """Up to 16 string pairs, refused in OpenAI's words, codes and per-key params (clients branch on them)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a value")
        raise BadRequest("invalid_param", param="metadata", code="invalid_type",
                         detail=f"expected an object, but got {kind} instead.")  # fmt: skip
    if len(value) > MAX_METADATA:
        detail = (f"too many properties. Expected an object with at most {MAX_METADATA} properties, "
                  f"but got an object with {len(value)} properties instead.")  # fmt: skip
        raise BadRequest("invalid_param", param="metadata", code="object_above_max_properties", detail=detail)
    for key, text in value.items():
        if len(key) > 64:
            detail = f"key too long. Expected keys of at most 64 characters, but got a key of {len(key)} instead."
            raise BadRequest("invalid_param", param="metadata", code="string_above_max_length", detail=detail)
        param = f"metadata.{key}"
        if not isinstance(text, str):
            kind = _JSON_KINDS.get(type(text), "a value")
            raise BadRequest("invalid_param", param=param, code="invalid_type",
                             detail=f"expected a string, but got {kind} instead.")  # fmt: skip
        if len(text) > 512:
            detail = ("string too long. Expected a string with maximum length 512, "
                      f"but got a string with length {len(text)} instead.")  # fmt: skip
            raise BadRequest("invalid_param", param=param, code="string_above_max_length", detail=detail)
    return dict(value)


def _reference(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise invalid(name, "expected an id")
    return value


LOGPROBS = "message.output_text.logprobs"
INCLUDABLE = ("file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
              "message.input_image.image_url", "computer_call_output.output.image_url",
              "code_interpreter_call.outputs", "reasoning.encrypted_content", LOGPROBS)  # fmt: skip


def _no_logprobs(body: dict[str, Any]) -> None:
    """Other ``include`` extras name items this gateway never produces (so there is nothing to add);
    logprobs would change the answer, and the upstream's are not carried: refused, not dropped."""
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(v, str) and len(v) <= 128 for v in include):
            raise invalid("include", "expected a list of strings")
        for i, value in enumerate(include):
            if value not in INCLUDABLE:  # OpenAI's words and code for it
                supported = ", ".join(f"'{v}'" for v in INCLUDABLE[:-1]) + f", and '{INCLUDABLE[-1]}'"
                detail = f"Invalid value: {value[:64]!r}. Supported values are: {supported}."
                raise BadRequest("invalid_param", param=f"include[{i}]", code="invalid_value", detail=detail)
        if LOGPROBS in include:
            raise invalid("include", "logprobs are not available")
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or top != 0):
        raise invalid("top_logprobs", "logprobs are not available")


def parse_ask(body: Any) -> Ask:
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    for name in body:
        if name not in KNOWN:
            raise BadRequest("unknown_param", param=str(name)[:64])
    model = model_name(body)
    given = body.get("input")
    if given is None:  # optional when there is a history to answer (the conversation's items, say)
        if body.get("previous_response_id") is None and body.get("conversation") is None:
            raise BadRequest("missing_param", param="input")
        given = []
    if body.get("background") is not None and body["background"] is not False:
        raise invalid("background", "background mode is not supported")
    _no_logprobs(body)
    ask = Ask(model=model, items=parse_input(given), given_ids=_given_ids(given))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("instructions", "expected a string")
    ask.instructions = instructions or None
    ask.previous = _reference(body.get("previous_response_id"), "previous_response_id")
    ask.conversation = _reference(body.get("conversation"), "conversation")
    if ask.previous and ask.conversation:
        raise BadRequest("previous_and_conversation", param="conversation")
    for name in ("store", "stream", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise invalid(name, "expected true or false")
    ask.store = body.get("store") is not False
    ask.stream = body.get("stream") is True
    if ask.conversation and not ask.store:
        raise invalid("store", "a response in a conversation is stored")
    truncation = body.get("truncation")
    truncation = "disabled" if truncation is None else truncation
    if truncation not in ("auto", "disabled"):
        raise invalid("truncation", "expected auto or disabled")
    ask.truncation = truncation
    ask.max_output_tokens = _output_limit(body.get("max_output_tokens"))
    ask.temperature = _number(body, "temperature", 0, 2)
    ask.top_p = _number(body, "top_p", 0, 1)
    ask.tools = _tools(body.get("tools"))
    ask.tool_choice = _tool_choice(body.get("tool_choice"), ask.tools)
    ask.parallel_tool_calls = body.get("parallel_tool_calls") is not False
    ask.metadata = _metadata(body.get("metadata"))
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise invalid(name, "expected a string of at most 256 characters")
    ask.user, ask.safety_identifier = body.get("user"), body.get("safety_identifier")
    ask.text_format = _text_format(body.get("text"))
    ask.verbosity = body["text"].get("verbosity") if isinstance(body.get("text"), dict) else None
    ask.effort = _effort(body.get("reasoning"))
    _accepted_unused(body)
    ask.max_tool_calls = body.get("max_tool_calls")
    ask.prompt_cache_key, ask.service_tier = body.get("prompt_cache_key"), body.get("service_tier")
    return ask


def _output_limit(limit: Any) -> int | None:
    if isinstance(limit, float) and limit.is_integer() and abs(limit) <= 1_000_000:  # 5.0 is an integer in JSON
        limit = int(limit)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not limit <= 1_000_000):
        raise invalid("max_output_tokens", "expected an integer from 16 to 1000000")
    if limit is not None and limit < MIN_OUTPUT_TOKENS:  # OpenAI's words and code for it
        detail = f"integer below minimum value. Expected a value >= 16, but got {limit} instead."
        raise BadRequest("invalid_param", param="max_output_tokens", code="integer_below_min_value", detail=detail)
    return limit


def _effort(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("reasoning", "expected an object")
    effort, summary = value.get("effort"), value.get("summary")
    if effort is not None and effort not in EFFORTS:
        raise invalid("reasoning.effort", "expected one of " + ", ".join(EFFORTS))
    if summary is not None and summary not in SUMMARIES:
        raise invalid("reasoning.summary", "expected one of " + ", ".join(SUMMARIES))
    return effort if isinstance(effort, str) else None


def _accepted_unused(body: dict[str, Any]) -> None:
    """Fields taken for compatibility and not acted on: still only in the shapes OpenAI takes."""
    calls = body.get("max_tool_calls")
    if isinstance(calls, float) and calls.is_integer():  # 5.0 is an integer in JSON
        body["max_tool_calls"] = calls = int(calls)
    if calls is not None and (isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= 1_000_000):
        raise invalid("max_tool_calls", "expected a positive integer (at most 1000000)")
    key = body.get("prompt_cache_key")
    if key is not None and (not isinstance(key, str) or len(key) > 1024):
        raise invalid("prompt_cache_key", "expected a string of at most 1024 characters")
    tier = body.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        raise invalid("service_tier", "expected one of " + ", ".join(SERVICE_TIERS))
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or any(not isinstance(v, bool) for v in options.values())
                                or set(options) - {"include_obfuscation"}):  # fmt: skip
        raise invalid("stream_options", "expected an object with include_obfuscation: true or false")


def _text_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("text", "expected an object")
    for name in value:
        if name not in ("format", "verbosity"):
            raise BadRequest("unknown_param", param="text." + str(name)[:64])
    if value.get("verbosity") not in (None, "low", "medium", "high"):
        raise invalid("text.verbosity", "expected low, medium or high")
    fmt = value.get("format")
    if isinstance(fmt, dict) and fmt.get("type") in ("text", "json_object"):
        for given in fmt:
            if given != "type":
                raise BadRequest("unknown_param", param="text.format." + str(given)[:64])
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": _json_schema(fmt)}
    raise invalid("text.format", "expected text, json_object or json_schema")


_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _json_schema(fmt: dict[str, Any]) -> dict[str, Any]:
    """A json_schema format in Chat Completions' words, every field OpenAI takes checked as it checks them."""
    for given in fmt:
        if given not in ("type", "name", "schema", "description", "strict"):
            raise BadRequest("unknown_param", param="text.format." + str(given)[:64])
    name = fmt.get("name")
    if name is None:
        raise BadRequest("missing_param", param="text.format.name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise invalid("text.format.name", "expected 1 to 64 letters, digits, underscores or dashes")
    if fmt.get("schema") is None:
        raise BadRequest("missing_param", param="text.format.schema")
    if not isinstance(fmt["schema"], dict):
        raise invalid("text.format.schema", "expected an object")
    schema: dict[str, Any] = {"name": name, "schema": fmt["schema"]}
    description = fmt.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise invalid("text.format.description", "expected a string")
        schema["description"] = description
    strict = fmt.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise invalid("text.format.strict", "expected a boolean")
        schema["strict"] = strict
    return schema


# -- the response object ---------------------------------------------------------------------------
def usage_json(usage: dict[str, Any]) -> dict[str, Any]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens"),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _detail(usage, "completion_tokens_details", "reasoning_tokens")},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    """A count from the upstream's usage details, if it gave one that is a count."""
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if is_count(value) else 0


@dataclass(slots=True)
class Draft:
    """What the response object says besides its output: fixed when the request is read."""

    id: str
    ask: Ask
    created_at: int
    _final: tuple[TurnResult, dict[str, Any]] | None = None
    # The error a failed stream was told: what arrived is stored as that failed response, as it was told.
    failure: dict[str, Any] | None = None

    def shell(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
              error: dict[str, Any] | None = None, incomplete: str | None = None,
              completed_at: int | None = None) -> dict[str, Any]:  # fmt: skip
        ask = self.ask
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": completed_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": ask.instructions,
            "max_output_tokens": ask.max_output_tokens,
            "max_tool_calls": ask.max_tool_calls,
            "model": ask.model,
            "output": output,
            "parallel_tool_calls": ask.parallel_tool_calls,
            "previous_response_id": ask.previous,
            "conversation": {"id": ask.conversation} if ask.conversation else None,
            "reasoning": {"effort": ask.effort, "summary": None},
            "store": ask.store,
            "temperature": ask.temperature,
            "text": {"format": _format_json(ask.text_format), "verbosity": ask.verbosity or "medium"},
            "prompt_cache_key": ask.prompt_cache_key,
            "service_tier": ask.service_tier,
            "tool_choice": ask.tool_choice,
            "tools": ask.tools,
            "top_p": ask.top_p,
            "truncation": ask.truncation,
            "usage": usage_json(usage) if usage is not None else None,
            "user": ask.user,
            "safety_identifier": ask.safety_identifier,
            "metadata": ask.metadata,
        }

    def final(self, result: TurnResult) -> dict[str, Any]:
        """The response object of ``result``: built once, for the stored record and the client both."""
        if self._final is not None and self._final[0] is result:
            return self._final[1]
        body = self._build(result)
        self._final = (result, body)
        return body

    def _build(self, result: TurnResult) -> dict[str, Any]:
        """The turn's outcome in OpenAI's words: its statuses, and only its reasons for incomplete."""
        output = [item_json(item) for item in result.outputs]
        why = result.incomplete
        if why is None:
            return self.shell("completed", output, result.usage, completed_at=int(time.time()))
        if why in INCOMPLETE_REASONS:
            return self.shell("incomplete", output, result.usage, incomplete=INCOMPLETE_REASONS[why])
        if why == "client_left":  # the client stopped it: what had arrived is kept
            return self.shell("cancelled", output, result.usage)
        failure = (
            self.failure
            if self.failure is not None and why == "error"
            else {"code": "server_error", "message": "the upstream's reply stopped before its end", "type": why}
        )
        return self.shell("failed", output, result.usage, error=failure)


def _format_json(fmt: dict[str, Any] | None) -> dict[str, Any]:
    if fmt is None:
        return {"type": "text"}
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", **fmt["json_schema"]}
    return {"type": fmt["type"]}


# -- POST /v1/responses ----------------------------------------------------------------------------
async def create(request: Request, services: Services) -> ASGIApp:
    log = current_log()
    api_key(request)  # who asks comes before what is asked
    ask = parse_ask(await read_json(request, services.settings.max_body_bytes))
    log.route = "responses stream" if ask.stream else "responses"
    caller = await caller_for(request, services, ask.model)
    inputs = await _resolve_references(services, caller.owner, ask.items, ask)
    if not inputs and ask.previous is None and ask.conversation is None:
        raise invalid("input", "no items to answer")
    draft = Draft(mint("resp_"), ask, int(time.time()))
    spec = _spec(services, ask, caller, inputs, draft)
    turn = await _in_openai_words(open_turn(services, spec, caller), ask)
    if not ask.stream:
        try:
            async for _ in turn.events():
                pass
            result = await turn.finish()
        finally:
            await turn.close()
        return JSONBody(draft.final(result))

    async def on_leave() -> None:
        try:
            await turn.finish(incomplete="client_left")
        except ServiceError as exc:
            log_stream_failure(exc, f"the partial response was not stored: {exc.key}", "client left")

    return EventStream(_stream(turn, draft), services.settings.heartbeat_seconds, on_leave, stall_s=turn.spec.idle_s)


async def _in_openai_words(work: Awaitable[T], ask: Ask) -> T:
    """``work``, with the core's refusals of a prompt as OpenAI words them for this door (status, code)."""
    try:
        return await work
    except BadRequest as exc:
        if exc.key == "prompt_too_long":
            raise BadRequest("input_too_long", **{**exc.params, "code": "context_length_exceeded"}) from exc
        raise
    except NotFound as exc:
        if exc.key == "parent_not_found" and ask.previous:
            raise BadRequest("previous_response_not_found", id=ask.previous[:256], param="previous_response_id",
                             code="previous_response_not_found") from exc  # fmt: skip
        if exc.key == "conversation_not_found_here" and ask.conversation:
            raise NotFound(exc.key, **{**exc.params, "param": "conversation"}) from exc
        raise


# -- POST /v1/responses/input_tokens ----------------------------------------------------------------
async def count_input_tokens(request: Request, services: Services) -> Response:
    """What create would send, counted here and not sent: its history (previous_response_id or
    conversation), cut as create would cut it, its instructions and input. The SDK's
    ``responses.input_tokens.count``; model and input are optional, as there."""
    current_log().route = "responses input_tokens"
    key = api_key(request)
    body = await read_json(request, services.settings.max_body_bytes)
    if isinstance(body, dict):  # personality: a Codex prompt style this gateway has no prompt for
        body = {"model": services.settings.default_model, "input": [], **body, "stream": False}
        body.pop("personality", None)
    ask = parse_ask(body)
    if key.count(".") == 2:  # an account token: no backend judges it here, so it is judged as on every such route
        await services.accounts.identify_owner(key)
    caller = await caller_for(request, services, ask.model)
    inputs = await _resolve_references(services, caller.owner, ask.items, ask)
    spec = _spec(services, ask, caller, inputs, Draft(mint("resp_"), ask, int(time.time())))
    tokens = await _in_openai_words(services.turns.count(spec), ask)
    return JSONBody({"object": "response.input_tokens", "input_tokens": tokens})


def _given_ids(value: Any) -> list[str]:
    """The ids of input items given whole with their own id (a response's output passed back, as the
    SDK's ``input=previous.output + [...]`` does); item references are counted apart."""
    if not isinstance(value, list):
        return []
    return [item["id"] for item in value if isinstance(item, dict) and isinstance(item.get("id"), str)
            and item.get("type", "message" if "role" in item else "item_reference") != "item_reference"]  # fmt: skip


async def _resolve_references(services: Services, owner: str, items: list[Item | str], ask: Ask) -> list[Item]:
    references = [entry for entry in items if isinstance(entry, str)]
    if references or ask.given_ids:
        await _no_duplicates(services, owner, references + ask.given_ids, ask)
    out: list[Item] = []
    for entry in items:
        if isinstance(entry, Item):
            out.append(entry)
            continue
        found = await services.turns.resolve(owner, entry)
        if found is None or found.deleted:  # a deleted item is gone for every door
            raise NotFound("item_not_found", id=entry)
        out.append(copy_of(found.item))
    return out


async def _no_duplicates(services: Services, owner: str, references: list[str], ask: Ask) -> None:
    """An item may be in a prompt once: named twice (referenced, or passed back whole with its id), or
    named while the history it continues (``previous_response_id``, ``conversation``) holds it, is
    OpenAI's 400, not a prompt that says it twice."""
    seen: set[str] = set()
    for reference in references:
        if reference in seen:
            raise BadRequest("duplicate_item", id=reference[:256], param="input")
        seen.add(reference)
    anchor: str | None = None
    if ask.previous is not None:
        parent = await services.turns.resolve(owner, ask.previous)
        anchor = parent.item.id if parent is not None else None
    elif ask.conversation is not None:
        with contextlib.suppress(NotFound):  # the turn itself says so, in its words
            anchor = (await find(services.store, owner, ask.conversation)).tip
    if anchor is None:
        return
    history = set(await services.store.path_ids(owner, anchor))
    for reference in references:
        if reference in history:
            raise BadRequest("duplicate_item", id=reference[:256], param="input")


def _spec(services: Services, ask: Ask, caller: Caller, inputs: list[Item], draft: Draft) -> TurnSpec:
    window = services.models.window(ask.model)
    reserve = ask.max_output_tokens or 0
    if ask.truncation == "auto" and not ask.max_output_tokens:
        reserve = min(AUTO_RESERVE, window // 8)
    params: dict[str, Any] = {}
    if caller.target.upstream == "chat":
        if ask.temperature is not None:
            params["temperature"] = ask.temperature
        if ask.top_p is not None:
            params["top_p"] = ask.top_p
        if ask.user:
            params["user"] = ask.user
        if ask.safety_identifier:
            params["safety_identifier"] = ask.safety_identifier
        if ask.text_format is not None:
            params["response_format"] = ask.text_format
        if ask.effort and uses_max_completion_tokens(ask.model):
            params["reasoning_effort"] = ask.effort
        # Chat Completions takes these under the same names (text.verbosity as verbosity): passed on
        # only when the client set them, so an upstream that does not know them never sees them.
        for name, value in (("prompt_cache_key", ask.prompt_cache_key), ("service_tier", ask.service_tier),
                            ("verbosity", ask.verbosity)):  # fmt: skip
            if value is not None:
                params[name] = value
    elif caller.target.upstream == "codex":
        refused = (("temperature", ask.temperature), ("top_p", ask.top_p), ("max_output_tokens", ask.max_output_tokens))
        for name, number in refused:
            if number is not None:  # the backend's own answer to them (upstreams.md), before anything is sent
                raise BadRequest("invalid_param", param=name, code="unsupported_parameter",
                                 detail=f"not supported with ChatGPT account models ({ask.model[:64]})")  # fmt: skip
        if ask.text_format is not None:  # the backend takes Responses' own text.format, as codex sends it
            params["text"] = {"format": _format_json(ask.text_format)}
        if ask.effort is not None:  # the backend takes Responses' own reasoning object, as codex sends it
            params["reasoning"] = {"effort": ask.effort}
    settings = services.settings
    return TurnSpec(
        owner=caller.owner, origin="v1", target=caller.target, model=ask.model, inputs=inputs,
        budget=Budget(max(1, window - reserve), ask.truncation == "auto", ask.max_output_tokens),
        parent=ask.previous, conversation=ask.conversation, instructions=ask.instructions, params=params,
        tools=ask.tools or None, tool_choice=ask.tool_choice if ask.tools else None,
        parallel_tool_calls=ask.parallel_tool_calls if ask.tools else None, stream=ask.stream, store=ask.store,
        timeout_s=settings.timeout_ms / 1000, idle_s=settings.idle_timeout_ms / 1000, reply_prefix="msg_",
        record=(lambda result: _record(draft, result, caller.owner)) if ask.store else None,
        compatible=_compatible,
    )  # fmt: skip


def _compatible(parent: StoredItem) -> None:
    if parent.origin == "web":
        raise BadRequest("parent_web_only", id=parent.item.id)


def _record(draft: Draft, result: TurnResult, owner: str) -> Record:
    first_output = result.outputs[0].id if result.outputs else None
    body = {**draft.final(result), "_first_output": first_output}  # a copy: the client's has no such field
    last = result.outputs[-1].id if result.outputs else result.inputs[-1].id if result.inputs else result.parent_id
    return Record("response", draft.id, owner, body, last, result.created_at, result.created_at)


# -- the event stream ------------------------------------------------------------------------------
class Sequencer:
    """OpenAI's stream events, numbered in order."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return event(kind, data)


def _announce(emit: Sequencer, index: int, item: dict[str, Any]) -> list[bytes]:
    """An item that began while an earlier one was open, told once that one is done (OpenAI streams
    one item at a time, and clients keep one open item): added, then its content as one delta."""
    if item["type"] == "message":
        added = {"id": item["id"], "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        out = [emit("response.output_item.added", output_index=index, item=added)]
        if not item["content"]:
            return out
        part = item["content"][0]
        refused = part["type"] == "refusal"
        out.append(emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                        part=refusal_part("") if refused else output_text("")))  # fmt: skip
        text = part["refusal"] if refused else part["text"]
        if text and refused:
            out.append(emit("response.refusal.delta", item_id=item["id"], output_index=index, content_index=0,
                            delta=text))  # fmt: skip
        elif text:
            out.append(emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                            delta=text, logprobs=[]))  # fmt: skip
        return out
    out = [emit("response.output_item.added", output_index=index, item={**item, "status": "in_progress",
                                                                         "arguments": ""})]  # fmt: skip
    if item["arguments"]:
        out.append(emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=item["arguments"]))  # fmt: skip
    return out


def _closing(emit: Sequencer, index: int, item: dict[str, Any]) -> list[bytes]:
    """The events that end an item: its content's, then ``output_item.done`` with the item as kept."""
    out = []
    if item["type"] == "message" and item["content"]:
        part = item["content"][0]
        if part["type"] == "refusal":
            out.append(emit("response.refusal.done", item_id=item["id"], output_index=index, content_index=0,
                            refusal=part["refusal"]))  # fmt: skip
        else:
            out.append(emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=part["text"], logprobs=[]))  # fmt: skip
        out.append(emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=part))  # fmt: skip
    elif item["type"] == "function_call":
        out.append(emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"]))  # fmt: skip
    out.append(emit("response.output_item.done", output_index=index, item=item))
    return out


async def _stream(turn: OpenTurn, draft: Draft) -> AsyncIterator[bytes]:
    """The turn as OpenAI's events. The first output item streams as it comes; one that begins after it
    (a call after the text, parallel calls) is told whole once the first is done: a chat-completions
    upstream never says when an item ends, and may go back to an earlier one."""
    log = current_log()
    emit = Sequencer()
    # Events ready at the same moment leave as one chunk: one send and one write, not one per event.
    started = draft.shell("in_progress", [])
    yield emit("response.created", response=started) + emit("response.in_progress", response=started)
    message_index: int | None = None
    calls: dict[int, tuple[int, dict[str, Any]]] = {}  # upstream tool index -> (output index, item)
    arguments: dict[int, list[str]] = {}  # output index -> argument pieces (joined once, not per piece)
    item: dict[str, Any]
    order: list[dict[str, Any]] = []  # items as added, in output order
    message_id = turn.reply_id
    refused = False  # the message is the model's refusal: refusal events and part, not output_text
    settle = True
    try:
        async for piece in turn.events():
            ready: list[bytes] = []
            if piece.text:
                if message_index is None:
                    message_index = len(order)
                    item = {"id": message_id, "type": "message", "status": "in_progress", "role": "assistant",
                            "content": []}  # fmt: skip
                    order.append(item)
                    refused = turn.reply is not None and turn.reply.refusal
                    if message_index == 0:
                        ready.append(emit("response.output_item.added", output_index=0, item=item))
                        part = refusal_part("") if refused else output_text("")
                        ready.append(emit("response.content_part.added", item_id=message_id, output_index=0,
                                          content_index=0, part=part))  # fmt: skip
                if message_index == 0:  # else told once the first item is done
                    kind = "response.refusal.delta" if refused else "response.output_text.delta"
                    extra: dict[str, Any] = {} if refused else {"logprobs": []}
                    ready.append(emit(kind, item_id=message_id, output_index=0, content_index=0, delta=piece.text,
                                      **extra))  # fmt: skip
            elif piece.tool_index >= 0:
                known = calls.get(piece.tool_index)
                if known is None:
                    index = len(order)
                    item = {"id": piece.item_id, "type": "function_call", "status": "in_progress",
                            "call_id": piece.tool_id, "name": piece.tool_name, "arguments": ""}  # fmt: skip
                    order.append(item)
                    calls[piece.tool_index] = known = (index, item)
                    if index == 0:
                        ready.append(emit("response.output_item.added", output_index=0, item=dict(item)))
                if piece.arguments:
                    arguments.setdefault(known[0], []).append(piece.arguments)
                    if known[0] == 0:
                        ready.append(emit("response.function_call_arguments.delta", item_id=known[1]["id"],
                                          output_index=0, delta=piece.arguments))  # fmt: skip
            if ready:
                yield b"".join(ready)
        result = await turn.finish()
    except (asyncio.CancelledError, GeneratorExit):
        settle = False  # the client left: on_leave stores what arrived, then lets the conversation go
        raise
    except ServiceError as exc:
        log_stream_failure(exc)
        error = openai_error_body(exc)["error"]
        # A response's error code is one of OpenAI's few; the precise one stays in the message and type.
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        draft.failure = {"code": code, "message": error["message"], "type": error["code"]}
        # Stored as it was told, output or none: the client has its id since response.created.
        try:
            with contextlib.suppress(ServiceError):
                await turn.finish(incomplete="error")
        except (asyncio.CancelledError, GeneratorExit):
            settle = False  # the client left meanwhile: on_leave stores, then lets the conversation go
            raise
        for index, pieces in arguments.items():
            order[index]["arguments"] = "".join(pieces)
        if message_index is not None:  # what was streamed stands in the final object too
            order[message_index]["content"] = [refusal_part(turn.text) if refused else output_text(turn.text)]
        for item in order:  # the message, and the call that was open, stopped short; earlier calls had ended
            item["status"] = "completed" if item["type"] == "function_call" else "incomplete"
        if turn.open_call in calls:
            calls[turn.open_call][1]["status"] = "incomplete"
        told = [event for index, item in enumerate(order)
                for event in (_announce(emit, index, item) if index else []) + _closing(emit, index, item)]  # fmt: skip
        yield b"".join(told) + emit("response.failed", response=draft.shell("failed", order, error=draft.failure))
        return
    finally:
        await turn.close(settle)
    final = draft.final(result)  # the same items, ids and order as streamed
    ready = []
    for index, item in enumerate(final["output"]):
        if index > 0 or not order:  # not told yet (an empty reply's message too): the first streamed as it came
            ready += _announce(emit, index, item)
        ready += _closing(emit, index, item)
    log.outcome = "done"
    kind = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(final["status"], "response.completed")
    ready.append(emit(kind, response=final))
    yield b"".join(ready)


# -- the rest of the API ---------------------------------------------------------------------------
async def _owned(request: Request, services: Services) -> tuple[str, Record]:
    owner = await owner_of(request, services)
    response_id = request.path_params["id"]
    record = await services.store.get_record("response", response_id)
    if record is None or record.owner != owner:
        raise NotFound("response_not_found", id=response_id[:256])
    return owner, record


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("_")}


async def retrieve(request: Request, services: Services) -> Response:
    current_log().route = "responses get"
    _, record = await _owned(request, services)
    if request.query_params.get("stream", "false").lower() != "false":  # OpenAI resumes background ones only
        raise invalid(
            "stream",
            "a stored response is retrieved whole: streaming one is for background "
            "responses, which this gateway does not run",
        )
    return JSONBody(_public(record.body))


async def delete(request: Request, services: Services) -> Response:
    """Deletes the response object; the items stay, so responses that follow it keep their history."""
    current_log().route = "responses delete"
    _, record = await _owned(request, services)
    await services.store.delete_record("response", record.id)
    return JSONBody({"id": record.id, "object": "response", "deleted": True})


async def cancel(request: Request, services: Services) -> Response:
    current_log().route = "responses cancel"
    await _owned(request, services)
    raise BadRequest("cancel_not_background")


async def input_items(request: Request, services: Services) -> Response:
    """Every item the response answered (its history and its input), newest first by default."""
    current_log().route = "responses input_items"
    owner, record = await _owned(request, services)
    page = page_of(request)
    first_output = record.body.get("_first_output")
    anchor = record.tip
    ids: list[str] = []
    if anchor:
        ids = await services.store.path_ids(owner, anchor)
        if first_output in ids:  # newest first: the outputs, then the inputs (without outputs, the tip is an input)
            ids = ids[ids.index(first_output) + 1 :]
    if not page.descending:
        ids.reverse()
    if page.after is not None:  # an id that is not in the list: nothing after it
        ids = ids[ids.index(page.after) + 1 :] if page.after in ids else []
    before = request.query_params.get("before")
    if before is not None:  # the page just before that id (older SDKs offer it), in the same order
        ids = ids[: ids.index(before)] if before in ids else []
        ids, more = ids[-page.limit :], len(ids) > page.limit
    else:
        ids, more = ids[: page.limit], len(ids) > page.limit
    items = await services.store.get_items(owner, ids)
    return JSONBody(list_body([item_json(s.item) for s in items], more))
