"""The OpenAPI document served at /api-json: every route, field and error status."""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__

STREAM_DESCRIPTION = """With `type: "2"` the answer is `text/event-stream` (HTTP 200). Events:

* `event: delta` — `data: {"delta": "<new text>", "text": "<text so far>", "id": "<reply id>",
  "parentMessageId": "<user message id>", "conversationId": "..."}`, one per upstream chunk;
* `event: done` — `data:` the success envelope whose `data` is exactly what `type: "1"` returns
  (the turn is stored before this event is sent);
* `event: error` — `data:` the error envelope, for a failure after the stream began;
* `: ping` comment lines every `CHATGPT_SERVER_HEARTBEAT_SECONDS` while nothing else is sent.

Failures before the first byte are ordinary JSON error answers with their HTTP status. If the client
disconnects, the upstream request is cancelled and the partial reply is stored with
`incomplete: true`. Browsers: use `fetch` and read `response.body` (EventSource cannot POST).
"""


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def _ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
    schema = {"allOf": [{"$ref": "#/components/schemas/Envelope"}, {"properties": {"data": data}}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


GPT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["mode", "type", "opts"],
    "properties": {
        "mode": {"type": "string", "enum": ["1", "2"],
                 "description": '"1": OpenAI API key (chat completions); "2": ChatGPT web access token. '
                                "The numbers 1 and 2 are accepted too."},
        "type": {"type": "string", "enum": ["1", "2"], "description": '"1": one JSON reply; "2": a stream'},
        "opts": {
            "type": "object",
            "required": ["key", "content", "isFollow"],
            "properties": {
                "key": {"type": "string", "description": "API key (mode 1) or access token (mode 2)"},
                "content": {"type": "string", "description": "the question"},
                "isFollow": {"type": "boolean", "description": "continue the conversation of parentMessageId"},
                "parentMessageId": {"type": "string",
                                    "description": "id of the message to answer (a reply's `id`); "
                                                   "required when isFollow is true"},
                "opts": {
                    "type": "object",
                    "description": "Options. An unknown option is refused (400); `debug` is ignored.",
                    "properties": {
                        "systemMessage": {"type": "string", "description": "mode 1; \"\" sends none"},
                        "completionParams": {"type": "object",
                                             "description": "mode 1: any chat-completions field "
                                                            "(model, temperature, max_tokens, ...)"},
                        "maxModelTokens": {"type": "integer", "default": 4000, "description": "mode 1"},
                        "maxResponseTokens": {"type": "integer", "default": 1000, "description": "mode 1"},
                        "apiBaseUrl": {"type": "string",
                                       "description": "mode 1; must be on CHATGPT_SERVER_ALLOWED_UPSTREAMS"},
                        "apiOrg": {"type": "string", "description": "mode 1: OpenAI-Organization"},
                        "model": {"type": "string", "description": "mode 2 model (default auto); "
                                                                   "mode 1: shorthand for completionParams.model"},
                        "apiReverseProxyUrl": {"type": "string",
                                               "description": "mode 2; must be on "
                                                              "CHATGPT_SERVER_ALLOWED_UPSTREAMS"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                    "description": "mode 2: extra headers (not Authorization)"},
                        "timeoutMs": {"type": "integer", "description": "overall timeout (default 600000)"},
                        "idleTimeoutMs": {"type": "integer",
                                          "description": "longest silence between stream chunks"},
                        "debug": {"type": "boolean", "description": "ignored"},
                    },
                },
            },
        },
    },
}  # fmt: skip

CHAT_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["assistant"]},
        "id": {"type": "string", "description": "the reply's id: name it as parentMessageId to follow up"},
        "parentMessageId": {"type": "string", "description": "id of the stored user message"},
        "conversationId": {"type": "string"},
        "text": {"type": "string"},
        "detail": {"type": "object", "description": "mode 1: the upstream chat completion, with usage "
                                                    "(usage.estimated is true when the upstream gave none)"},
        "incomplete": {"type": "boolean", "description": "present and true when the reply was cut off"},
    },
}  # fmt: skip

TOKEN_PARAMS = [
    {"name": "type", "in": "query", "required": True, "schema": {"type": "string", "enum": ["1", "2"]},
     "description": "1: get a token (cached while valid); 2: refresh it"},
    {"name": "email", "in": "query", "required": True, "schema": {"type": "string"}},
    {"name": "password", "in": "query", "required": True, "schema": {"type": "string"}},
]  # fmt: skip

TOKEN_ERRORS = {
    "400": _error("validation failed, or the account signs in through Google/Microsoft/Apple"),
    "401": _error("wrong email or password"),
    "403": _error("captcha required, or unsupported_country (set CHATGPT_SERVER_PROXY)"),
    "429": _error("sign-in refused or rate limited (OAuthSignin)"),
    "502": _error("the identity service is unreachable, or the sign-in flow changed at step N"),
    "504": _error("the identity service did not answer in time"),
}


@cache
def openapi_document() -> dict[str, Any]:
    token_ok = _ok("the access token (a bare JWT string)", {"type": "string"})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "chatgpt-server",
            "version": __version__,
            "description": "ChatGPT behind one small API. Every answer is an envelope: "
            "`{status, success, message, data, timestamp}`; errors add `path` (never with a query "
            "string). Messages are English, or Chinese with `Accept-Language: zh` or "
            "CHATGPT_SERVER_LANGUAGE=zh.",
        },
        "paths": {
            "/api/v1/gpt/getInfo": {
                "post": {
                    "summary": "Generate a reply",
                    "description": STREAM_DESCRIPTION,
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/GptRequest"}}}},
                    "responses": {
                        "201": _ok("the reply (type \"1\"), stored before it is returned",
                                   {"$ref": "#/components/schemas/ChatMessage"}),
                        "200": {"description": "type \"2\": the reply as server-sent events",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                        "400": _error("validation failed (every problem listed, joined by ','), an option "
                                      "is unknown or for the other mode, an upstream URL is not allowed, "
                                      "the prompt exceeds the token budget, or the upstream refused "
                                      "the request (context too long, unknown model)"),
                        "401": _error("the upstream rejected the key or token, or the token has expired"),
                        "403": _error("the upstream refused access"),
                        "404": _error("parentMessageId is unknown to this credential, or the upstream "
                                      "does not know the conversation"),
                        "413": _error("the body is larger than CHATGPT_SERVER_MAX_BODY_BYTES"),
                        "429": _error("upstream rate limit, exhausted quota, or one message at a time "
                                      "(Retry-After passed on)"),
                        "502": _error("the upstream is unreachable, failed (5xx), answered something "
                                      "unexpected, or was blocked by Cloudflare"),
                        "503": _error("conversation store unavailable (the upstream was not called)"),
                        "504": _error("the upstream did not answer in time"),
                    },
                }
            },
            "/api/v1/token/getInfo": {
                "get": {
                    "summary": "Get or refresh a ChatGPT access token (password in the URL: prefer POST)",
                    "parameters": TOKEN_PARAMS,
                    "responses": {"200": token_ok, **TOKEN_ERRORS},
                },
                "post": {
                    "summary": "Get or refresh a ChatGPT access token (recommended)",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}},
                        "application/x-www-form-urlencoded": {
                            "schema": {"$ref": "#/components/schemas/TokenRequest"}},
                    }},
                    "responses": {"201": token_ok, **TOKEN_ERRORS},
                },
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness, with the counts that show a leak",
                    "responses": {
                        "200": _ok(
                            "alive",
                            {"type": "object", "properties": {
                                "alive": {"type": "boolean"},
                                "tasks": {"type": "integer", "description": "asyncio tasks"},
                                "streams": {"type": "integer", "description": "upstream replies being read"},
                                "queues": {"type": "integer", "description": "mode-2 accounts with a queue"}}},
                        )
                    },
                }
            },
            "/readyz": {"get": {"summary": "Readiness: the conversation store answers", "responses": {
                "200": _ok("ready", {"type": "object"}),
                "503": _error("conversation store unavailable")}}},
        },
        "components": {
            "schemas": {
                "Envelope": {"type": "object", "properties": {
                    "status": {"type": "integer", "example": 200},
                    "success": {"type": "boolean", "example": True},
                    "message": {"type": "string", "example": "ok"},
                    "data": {},
                    "timestamp": {"type": "integer", "description": "epoch milliseconds"}}},
                "ErrorEnvelope": {"type": "object", "properties": {
                    "status": {"type": "integer", "example": 400},
                    "success": {"type": "boolean", "example": False},
                    "message": {"type": "string"},
                    "data": {"type": "object"},
                    "timestamp": {"type": "integer"},
                    "path": {"type": "string", "description": "the route, never the query string"}}},
                "GptRequest": GPT_REQUEST,
                "ChatMessage": CHAT_MESSAGE,
                "TokenRequest": {"type": "object", "required": ["type", "email", "password"], "properties": {
                    "type": {"type": "string", "enum": ["1", "2"]},
                    "email": {"type": "string"}, "password": {"type": "string"}}},
            }
        },
    }  # fmt: skip
