"""A stand-in for the Codex backend (upstreams.md §4): ``/backend-api/codex/responses`` and ``/models``.

As strict as the real one. The bearer token must be an access token the auth stand-in accepts
(signature against its JWKS, exp, audience, grant not revoked), ``ChatGPT-Account-Id`` must be the
token's ``chatgpt_account_id``, ``originator`` and ``User-Agent`` are required. The body must have
``store: false`` and ``stream: true``, non-empty ``instructions``, a model of the account's plan, no
key outside what Codex sends, and a well-formed ``input`` (role/part pairs, function_call outputs that
answer a call in the input, reasoning items carrying ``encrypted_content``). Front-door refusals answer
``{"detail": "..."}`` as the real backend does; item-level ones ``{"error": {message, type, param,
code}}`` as the Responses API does.

The reply streams the Responses events in the real order, with a reasoning item first, a reasoning
summary delta and an unknown ``codex.rate_limits`` event that a client must not show as text. The text
is ``echo(N): <last user message text>`` with N the number of user message items in ``input``; when
``tools`` lists a function NAME and the last user text starts with ``call:NAME`` (and no
function_call_output follows it yet), a function call with arguments ``{"x":1}`` instead. After a
function_call_output the text is ``echo(N): <text> [tool: <output>]``.

Tests steer failures with ``fail_next`` (``FAILURES``; ``refusal`` and ``whole_item`` are replies in the
other shapes the Responses events allow: refusal deltas, or the text only in the finished item) and
read ``requests``.

As a process (benchmark): ``python -m tests.standins.codex --port N (--issuer URL | --no-auth)``.
With ``--issuer``, tokens are checked against the JWKS fetched from ``{URL}/.well-known/jwks.json``
(signature, exp, aud, iss; revocation is not known there); ``--no-auth`` accepts any bearer token and
checks the account header only against a JWT's claim when the token is one.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson
from aiohttp import web

from .chatgpt_auth import ACCESS_AUDIENCE, AUTH_CLAIM, ChatGPTAuthStandIn

ALL_MODELS = ("gpt-5", "gpt-5-codex", "gpt-5-mini", "gpt-5.1", "gpt-5.1-codex", "gpt-5.1-codex-mini")
PLAN_MODELS: dict[str, tuple[str, ...]] = {
    "free": ("gpt-5", "gpt-5-mini"),
    **{plan: ALL_MODELS for plan in ("plus", "pro", "team", "business", "enterprise", "edu")},
}
ALLOWED_KEYS = {"model", "instructions", "input", "store", "stream", "include", "tools", "tool_choice",
                "parallel_tool_calls", "reasoning", "prompt_cache_key", "text", "service_tier"}  # fmt: skip
REFUSED_KEYS = ("max_output_tokens", "max_tokens", "max_completion_tokens", "temperature", "top_p", "metadata")
INCLUDABLE = {"reasoning.encrypted_content"}
ROLE_PARTS = {"user": {"input_text", "input_image", "input_file"}, "system": {"input_text"},
              "developer": {"input_text"}, "assistant": {"output_text", "refusal"}}  # fmt: skip
FAILURES = ("401", "usage_limit", "usage_limit_seconds", "usage_not_included", "usage_not_included_403", "overloaded",
            "rate_limited",
            "failed_context", "failed_quota", "failed_usage_limit", "cut", "refusal", "whole_item", "sleep:<s>",
            "keepalive:<s>", "incomplete", "done_without_id", "completed_only")  # fmt: skip

STREAM_KEY = web.RequestKey("codex_stream", web.StreamResponse)
Verifier = Callable[[str], Awaitable[tuple[dict[str, Any] | None, str]]]


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"detail": detail}), content_type="application/json",
                        headers=headers)  # fmt: skip


def _error(status: int, message: str, code: str | None, param: str | None = None,
           kind: str | None = "invalid_request_error") -> web.Response:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Invalid(Exception):
    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _texts(item: dict[str, Any]) -> list[str]:
    return [str(p.get("text", "")) for p in item.get("content", []) if p.get("type") in ("input_text", "output_text")]


def check_input(items: Any) -> None:
    """Raise Invalid for what the Responses API refuses in ``input``."""
    if not isinstance(items, list):
        raise Invalid("Invalid type for 'input': expected an array of input items.", "input", "invalid_type")
    calls: set[str] = set()
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise Invalid(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLE_PARTS:
                raise Invalid(f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer',"
                              " and 'user'.", f"{where}.role")  # fmt: skip
            content = item.get("content")
            if not isinstance(content, list):
                raise Invalid(f"Invalid type for '{where}.content': expected an array of content parts.",
                              f"{where}.content", "invalid_type")  # fmt: skip
            for j, part in enumerate(content):
                here = f"{where}.content[{j}]"
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in ROLE_PARTS[role]:
                    allowed = ", ".join(f"'{t}'" for t in sorted(ROLE_PARTS[role]))
                    raise Invalid(f"Invalid value: '{ptype}'. Supported values are: {allowed}.", f"{here}.type")
                assert isinstance(part, dict)
                if ptype in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                    raise Invalid(f"Missing required parameter: '{here}.text'.", f"{here}.text",
                                  "missing_required_parameter")  # fmt: skip
                url = part.get("image_url")
                if ptype == "input_image" and not (
                    (isinstance(url, str) and url.startswith(("data:image/", "https://", "http://")))
                    or isinstance(part.get("file_id"), str)
                ):
                    raise Invalid(f"Invalid '{here}.image_url': expected a URL or a data URL.", f"{here}.image_url")
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise Invalid(f"Missing required parameter: '{where}.{name}'.", f"{where}.{name}",
                                  "missing_required_parameter")  # fmt: skip
            if not item["name"]:
                raise Invalid(f"Invalid '{where}.name': empty string. Expected a string with minimum length 1, but "
                              "got an empty string instead.", f"{where}.name", "empty_string")  # fmt: skip
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise Invalid(f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id",
                              "missing_required_parameter")  # fmt: skip
            if not isinstance(item.get("output"), str | list):
                raise Invalid(f"Missing required parameter: '{where}.output'.", f"{where}.output",
                              "missing_required_parameter")  # fmt: skip
            if item["call_id"] not in calls:
                raise Invalid(f"No tool call found for function call output with call_id {item['call_id']}.", "input")
        elif kind == "reasoning":
            if not isinstance(item.get("summary"), list):
                raise Invalid(f"Missing required parameter: '{where}.summary'.", f"{where}.summary",
                              "missing_required_parameter")  # fmt: skip
            if not isinstance(item.get("encrypted_content"), str):
                raise Invalid(f"Item with id '{item.get('id')}' not found. Items are not persisted when `store` is "
                              "set to false. Try again with `store` set to true, or remove this item from your "
                              "input.", "input")  # fmt: skip
        else:
            raise Invalid(f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
                          "'function_call_output' and 'reasoning'.", f"{where}.type")  # fmt: skip


def check_tools(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    names = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in ("function", "web_search", "local_shell", "custom"):
            raise Invalid(f"Invalid value for 'tools[{i}].type'.", f"tools[{i}].type")
        if tool["type"] == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:  # the chat-completions shape nests it
                raise Invalid(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                              "missing_required_parameter")  # fmt: skip
            if "parameters" in tool and not isinstance(tool["parameters"], dict):
                raise Invalid(f"Invalid type for 'tools[{i}].parameters'.", f"tools[{i}].parameters", "invalid_type")
            names.append(tool["name"])
    return names


@dataclass
class CodexStandIn:
    auth: ChatGPTAuthStandIn | None = None
    verifier: Verifier | None = None  # overrides auth (the process form); neither: any token passes
    requests: list[dict[str, Any]] = field(default_factory=list, repr=False)
    record: bool = True
    fail_next: list[str] = field(default_factory=list)
    chunk_delay: float = 0.0
    keepalive_interval: float = 0.1
    closed_streams: int = 0
    completed: int = 0
    active: int = 0
    max_concurrent_seen: int = 0
    primary_used_percent: float = 12.0
    primary_window_minutes: int = 300
    primary_reset_in_s: int = 3600
    secondary_used_percent: float = 3.0
    secondary_window_minutes: int = 10080
    secondary_reset_in_s: int = 86400 * 3
    credits_balance: str | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/backend-api/codex/responses", self.responses)
        app.router.add_get("/backend-api/codex/models", self.models)
        return app

    # -- auth --------------------------------------------------------------------------------------
    async def _verify(self, token: str) -> tuple[dict[str, Any] | None, str]:
        if self.verifier is not None:
            return await self.verifier(token)
        if self.auth is not None:
            return self.auth.check_access(token)
        try:
            return jwt.decode(token, options={"verify_signature": False}), ""
        except jwt.PyJWTError:
            return {}, ""

    async def _authorize(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """(the token's auth claim, None) or ({}, the refusal)."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return {}, _error(401, "Missing bearer or basic authentication in header.", "invalid_token", kind=None)
        claims, reason = await self._verify(header[7:].strip())
        if claims is None:
            messages = {"token_expired": "Provided authentication token is expired. Please try signing in again.",
                        "token_revoked": "Your authentication token has been invalidated. Please try signing in "
                                         "again."}  # fmt: skip
            message = messages.get(reason, "Could not parse your authentication token. Please try signing in again.")
            return {}, _error(401, message, reason or "invalid_token", kind=None)
        auth = claims.get(AUTH_CLAIM) or {}
        account = request.headers.get("ChatGPT-Account-Id")
        if not account:
            return {}, _detail(403, "Missing ChatGPT-Account-Id header.")
        if auth and account != auth.get("chatgpt_account_id"):
            return {}, _detail(403, "You do not have access to this workspace (ChatGPT-Account-Id does not match "
                                    "the token).")  # fmt: skip
        return auth, None

    def _rate_headers(self) -> dict[str, str]:
        now = int(time.time())
        headers = {
            "x-codex-primary-used-percent": f"{self.primary_used_percent:g}",
            "x-codex-primary-window-minutes": str(self.primary_window_minutes),
            "x-codex-primary-reset-at": str(now + self.primary_reset_in_s),
            "x-codex-primary-reset-after-seconds": str(self.primary_reset_in_s),
            "x-codex-secondary-used-percent": f"{self.secondary_used_percent:g}",
            "x-codex-secondary-window-minutes": str(self.secondary_window_minutes),
            "x-codex-secondary-reset-at": str(now + self.secondary_reset_in_s),
            "x-codex-secondary-reset-after-seconds": str(self.secondary_reset_in_s),
        }
        if self.credits_balance is not None:
            headers["x-codex-credits-balance"] = self.credits_balance
        return headers

    # -- /models -----------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        auth, refusal = await self._authorize(request)
        if refusal is not None:
            return refusal
        if not request.query.get("client_version"):
            return _detail(400, "client_version is required")
        plan = str(auth.get("chatgpt_plan_type", "plus"))
        models = [{"slug": slug, "display_name": slug, "description": f"{slug} (stand-in)", "visibility": "list",
                   "supported_in_api": True, "priority": i, "context_window": 272000,
                   "default_reasoning_level": "medium",
                   "supported_reasoning_levels": [{"effort": e, "description": e} for e in ("low", "medium", "high")]}
                  for i, slug in enumerate(PLAN_MODELS.get(plan, ALL_MODELS))]  # fmt: skip
        return web.Response(body=orjson.dumps({"models": models}), content_type="application/json",
                            headers=self._rate_headers())  # fmt: skip

    # -- /responses --------------------------------------------------------------------------------
    async def responses(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if self.record:
            self.requests.append(
                {"headers": dict(request.headers), "header_list": list(request.headers.items()), "body": body}
            )
        auth, refusal = await self._authorize(request)
        if refusal is not None:
            return refusal
        for name in ("originator", "User-Agent"):
            if not request.headers.get(name):
                return _detail(400, f"Missing required header: {name}")
        if request.content_type != "application/json" or not isinstance(body, dict):
            return _detail(400, "Request body must be a JSON object")
        plan = str(auth.get("chatgpt_plan_type", "plus"))
        failure = self.fail_next.pop(0) if self.fail_next else None
        if failure and failure not in FAILURES and not failure.startswith(("sleep:", "keepalive:")):
            raise ValueError(f"unknown failure {failure!r}; one of {FAILURES}")
        if failure:
            answer = await self._failure(failure, plan)
            if answer is not None:
                return answer
        problem = self._front_door(body, plan)
        if problem is not None:
            return _detail(400, problem)
        try:
            check_input(body["input"])
            tools = check_tools(body.get("tools", []))
        except Invalid as invalid:
            return _error(400, invalid.message, invalid.code, invalid.param)
        keepalive = float(failure.split(":", 1)[1]) if failure and failure.startswith("keepalive:") else 0.0
        self.active += 1
        self.max_concurrent_seen = max(self.max_concurrent_seen, self.active)
        try:
            return await self._stream(request, body, tools, failure or "", keepalive)
        except ConnectionResetError:  # the client went away: nothing more to write to
            self.closed_streams += 1
            prepared = request[STREAM_KEY]
            return prepared
        except asyncio.CancelledError:
            self.closed_streams += 1
            raise
        finally:
            self.active -= 1

    @staticmethod
    def _front_door(body: dict[str, Any], plan: str) -> str | None:
        if body.get("store") is not False:
            return "Store must be set to false"
        if body.get("stream") is not True:
            return "Stream must be set to true"
        for name in (*REFUSED_KEYS, *sorted(set(body) - ALLOWED_KEYS)):
            if name in body:
                return f"Unsupported parameter: {name}"
        instructions = body.get("instructions")
        if not isinstance(instructions, str) or not instructions.strip():
            return "Instructions are required"
        model = body.get("model")
        if not isinstance(model, str) or model not in PLAN_MODELS.get(plan, ALL_MODELS):
            return f"The '{model}' model is not supported when using Codex with a ChatGPT account."
        if "input" not in body:
            return "Input is required"
        include = body.get("include", [])
        if not isinstance(include, list) or not all(isinstance(x, str) and x in INCLUDABLE for x in include):
            return f"Invalid include: {include!r}"
        reasoning = body.get("reasoning")
        if reasoning is not None and not (
            isinstance(reasoning, dict)
            and reasoning.get("effort", "medium") in ("none", "minimal", "low", "medium", "high", "xhigh")
            and reasoning.get("summary", "auto") in ("auto", "concise", "detailed", "none", None)
        ):
            return f"Invalid reasoning: {reasoning!r}"
        if "tool_choice" in body and not (
            body["tool_choice"] in ("auto", "none", "required")
            or (isinstance(body["tool_choice"], dict) and body["tool_choice"].get("type") == "function")
        ):
            return "Invalid tool_choice"
        for name, kind in (("parallel_tool_calls", bool), ("prompt_cache_key", str), ("text", dict)):
            if name in body and not isinstance(body[name], kind):
                return f"Invalid type for {name}"
        return None

    async def _failure(self, failure: str, plan: str) -> web.StreamResponse | None:
        now = int(time.time())
        if failure == "401":
            return _error(401, "Provided authentication token is expired. Please try signing in again.",
                          "token_expired", kind=None)  # fmt: skip
        if failure in ("usage_limit", "usage_limit_seconds"):
            error: dict[str, Any] = {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                                     "plan_type": plan}  # fmt: skip
            if failure == "usage_limit":
                error["resets_at"] = now + 120
            else:
                error["resets_in_seconds"] = 120
            headers = {**self._rate_headers(), "x-codex-primary-used-percent": "100"}
            return web.Response(status=429, body=orjson.dumps({"error": error}), content_type="application/json",
                                headers=headers)  # fmt: skip
        if failure in ("usage_not_included", "usage_not_included_403"):
            body = {"error": {"type": "usage_not_included", "message": "To use Codex with your ChatGPT plan, upgrade"
                              " to Plus: https://openai.com/chatgpt/pricing.", "plan_type": plan}}  # fmt: skip
            return web.Response(status=429 if failure == "usage_not_included" else 403, body=orjson.dumps(body),
                                content_type="application/json")  # fmt: skip
        if failure == "overloaded":
            return _error(503, "Our servers are currently overloaded. Please try again later.",
                          "server_is_overloaded", kind="server_error")  # fmt: skip
        if failure == "rate_limited":  # too many requests, with the wait in the header only
            response = _error(429, "Rate limit reached. Please try again later.", "rate_limit_exceeded",
                              kind="rate_limit_error")  # fmt: skip
            response.headers["Retry-After"] = "30"
            return response
        if failure.startswith("sleep:"):
            await asyncio.sleep(float(failure.split(":", 1)[1]))
        return None

    async def _stream(self, request: web.Request, body: dict[str, Any], tools: list[str], failure: str,
                      keepalive: float) -> web.StreamResponse:  # fmt: skip
        items: list[dict[str, Any]] = [i for i in body["input"] if isinstance(i, dict)]
        users = [i for i, item in enumerate(items) if item.get("type", "message") == "message"
                 and item.get("role") == "user"]  # fmt: skip
        last_user = "\n".join(_texts(items[users[-1]])) if users else ""
        after = items[users[-1] + 1 :] if users else items
        outputs = [i for i in after if i.get("type") == "function_call_output"]
        call = None
        if last_user.startswith("call:") and not outputs:
            name = last_user[5:].split()[0] if last_user[5:].split() else ""
            call = name if name in tools else None
        text = f"echo({len(users)}): {last_user}"
        if outputs:
            output = outputs[-1]["output"]
            text += f" [tool: {output if isinstance(output, str) else orjson.dumps(output).decode()}]"
        include_encrypted = "reasoning.encrypted_content" in body.get("include", [])
        response_id = f"resp_{uuid.uuid4().hex}"
        created_at = int(time.time())
        model = body["model"]

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", **self._rate_headers(),
                                               "x-request-id": str(uuid.uuid4())})  # fmt: skip
        await response.prepare(request)
        request[STREAM_KEY] = response
        sequence = 0

        async def send(kind: str, **data: Any) -> None:
            nonlocal sequence
            frame = {"type": kind, "sequence_number": sequence, **data}
            sequence += 1
            await response.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(frame) + b"\n\n")

        def envelope(status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
            return {"id": response_id, "object": "response", "created_at": created_at, "status": status,
                    "model": model, "output": output, "store": False, "error": None, "usage": None,
                    "instructions": body["instructions"], **extra}  # fmt: skip

        if keepalive:  # headers are out; only comment lines until the backend "starts thinking"
            deadline = time.monotonic() + keepalive
            while time.monotonic() < deadline:
                await response.write(b": keepalive\n\n")
                await asyncio.sleep(min(self.keepalive_interval, max(0.0, deadline - time.monotonic())))
        await send("response.created", response=envelope("in_progress", []))
        await send("response.in_progress", response=envelope("in_progress", []))

        summary = "**Thinking** about the request"
        reasoning: dict[str, Any] = {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": []}
        await send("response.output_item.added", output_index=0, item=reasoning)
        await send("response.reasoning_summary_part.added", item_id=reasoning["id"], output_index=0,
                   summary_index=0, part={"type": "summary_text", "text": ""})  # fmt: skip
        await send("response.reasoning_summary_text.delta", item_id=reasoning["id"], output_index=0,
                   summary_index=0, delta=summary)  # fmt: skip
        await send("response.reasoning_summary_text.done", item_id=reasoning["id"], output_index=0,
                   summary_index=0, text=summary)  # fmt: skip
        reasoning = {**reasoning, "summary": [{"type": "summary_text", "text": summary}]}
        if include_encrypted:
            reasoning["encrypted_content"] = "gAAAAA" + uuid.uuid4().hex
        await send("response.output_item.done", output_index=0, item=reasoning)
        await send("codex.rate_limits", rate_limits={
            "primary": {"used_percent": self.primary_used_percent, "window_minutes": self.primary_window_minutes,
                        "resets_at": created_at + self.primary_reset_in_s},
            "secondary": {"used_percent": self.secondary_used_percent,
                          "window_minutes": self.secondary_window_minutes,
                          "resets_at": created_at + self.secondary_reset_in_s}})  # fmt: skip

        if call is not None:
            item: dict[str, Any] | None = await self._function_call(send, call)
            output_tokens = 4
        else:
            item = await self._message(request, send, text, failure, envelope)
            output_tokens = len(text.split(" "))
        if item is None:
            return response
        words = sum(len(t.split()) for it in items for t in _texts(it)) + len(body["instructions"].split())
        usage = {"input_tokens": words, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": words + output_tokens}  # fmt: skip
        await send("response.completed", response=envelope("completed", [reasoning, item], usage=usage))
        await response.write_eof()
        self.completed += 1
        return response

    async def _function_call(self, send: Callable[..., Awaitable[None]], name: str) -> dict[str, Any]:
        arguments = '{"x":1}'
        item: dict[str, Any] = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "in_progress",
                                "call_id": f"call_{uuid.uuid4().hex[:24]}", "name": name, "arguments": ""}  # fmt: skip
        await send("response.output_item.added", output_index=1, item=item)
        for piece in (arguments[:4], arguments[4:]):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send("response.function_call_arguments.delta", item_id=item["id"], output_index=1, delta=piece)
        await send("response.function_call_arguments.done", item_id=item["id"], output_index=1, arguments=arguments)
        item = {**item, "status": "completed", "arguments": arguments}
        await send("response.output_item.done", output_index=1, item=item)
        return item

    async def _message(self, request: web.Request, send: Callable[..., Awaitable[None]], text: str, failure: str,
                       envelope: Callable[..., dict[str, Any]]) -> dict[str, Any] | None:  # fmt: skip
        """The message item's events; None when the stream ended otherwise (failed or cut)."""
        item: dict[str, Any] = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "status": "in_progress",
                                "role": "assistant", "content": []}  # fmt: skip
        where = {"item_id": item["id"], "output_index": 1, "content_index": 0}
        if failure == "completed_only":  # no item events at all: the reply only in response.completed
            return {
                **item,
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        await send("response.output_item.added", output_index=1, item=item)
        if failure == "refusal":  # the model declines: a refusal part instead of output_text
            refused = {"type": "refusal", "refusal": ""}
            await send("response.content_part.added", **where, part=refused)
            for i, word in enumerate(text.split(" ")):
                await send("response.refusal.delta", **where, delta=word if i == 0 else " " + word)
            await send("response.refusal.done", **where, refusal=text)
            await send("response.content_part.done", **where, part={**refused, "refusal": text})
            item = {**item, "status": "completed", "content": [{**refused, "refusal": text}]}
            await send("response.output_item.done", output_index=1, item=item)
            return item
        if failure == "whole_item":  # no deltas: the text only in the finished item
            whole = {"type": "output_text", "text": text, "annotations": []}
            item = {**item, "status": "completed", "content": [whole]}
            await send("response.output_item.done", output_index=1, item=item)
            return item
        await send("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
        words = text.split(" ")
        for i, word in enumerate(words):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send("response.output_text.delta", **where, delta=word if i == 0 else " " + word, logprobs=[])
            if i == 1 and failure == "cut":
                request.transport.close()  # type: ignore[union-attr]
                return None
            if i == 1 and failure == "incomplete":  # the output limit: what was said, then response.incomplete
                said = " ".join(words[:2])
                part = {"type": "output_text", "text": said, "annotations": [], "logprobs": []}
                await send("response.output_text.done", **where, text=said, logprobs=[])
                await send("response.content_part.done", **where, part=part)
                cut = {**item, "status": "incomplete", "content": [part]}
                await send("response.output_item.done", output_index=1, item=cut)
                await send("response.incomplete", response=envelope("incomplete", [cut], incomplete_details={
                    "reason": "max_output_tokens"}))  # fmt: skip
                return None
            if i == 1 and failure in ("failed_context", "failed_quota", "failed_usage_limit"):
                errors: dict[str, dict[str, Any]] = {
                    "failed_context": {"code": "context_length_exceeded", "message": "Your input exceeds the "
                                       "context window of this model. Please adjust your input and try again."},
                    "failed_quota": {"code": "insufficient_quota", "message": "You exceeded your current quota, "
                                     "please check your plan and billing details."},
                    "failed_usage_limit": {"code": "usage_limit_reached", "type": "usage_limit_reached",
                                           "message": "The usage limit has been reached", "resets_in_seconds": 120},
                }  # fmt: skip
                await send("response.failed", response=envelope("failed", [], error=errors[failure]))
                return None
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        await send("response.output_text.done", **where, text=text, logprobs=[])
        await send("response.content_part.done", **where, part=part)
        item = {**item, "status": "completed", "content": [part]}
        unnamed = {k: v for k, v in item.items() if k != "id"}  # a server may leave the id off
        await send("response.output_item.done", output_index=1, item=unnamed if failure == "done_without_id" else item)
        return item


class RemoteJWKS:
    """Checks tokens against the keys an issuer publishes (the process form of the stand-in)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer.rstrip("/")
        self.keys: dict[str, Any] = {}
        self._fetched = 0.0

    async def _fetch(self) -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{self.issuer}/.well-known/jwks.json") as reply:
            data = await reply.json()
        self.keys = {k["kid"]: jwt.PyJWK(k).key for k in data.get("keys", [])}
        self._fetched = time.monotonic()

    async def __call__(self, token: str) -> tuple[dict[str, Any] | None, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None, "invalid_token"
        kid = header.get("kid")
        if kid not in self.keys and time.monotonic() - self._fetched > 1:
            await self._fetch()
        if kid not in self.keys or header.get("alg") != "RS256":
            return None, "invalid_token"
        try:
            claims: dict[str, Any] = jwt.decode(token, self.keys[kid], algorithms=["RS256"], audience=ACCESS_AUDIENCE,
                                                issuer=self.issuer)  # fmt: skip
        except jwt.ExpiredSignatureError:
            return None, "token_expired"
        except jwt.PyJWTError:
            return None, "invalid_token"
        return claims, ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7012)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed deltas")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--issuer", help="check tokens against the JWKS of this issuer (a chatgpt_auth stand-in)")
    mode.add_argument("--no-auth", action="store_true", help="accept any bearer token")
    args = parser.parse_args()
    standin = CodexStandIn(record=False, chunk_delay=args.chunk_delay)
    if args.issuer:
        standin.verifier = RemoteJWKS(args.issuer)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(standin.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
