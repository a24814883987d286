"""The OpenAPI 3.1 document served at /api-json: every route, method, field, constraint and status.

It describes what the server enforces (read from the validators in ``original_request``, ``access_token``,
``v1``, ``openai_items``, ``responses`` and ``conversations``), in the error shape of each door: the
original's envelope outside ``/v1``, OpenAI's ``{"error": {...}}`` under it. Schemas that repeat are built
by the small helpers below; ``openapi_document()`` assembles the whole once.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from .conversations import MAX_ADDED
from .http import allowed
from .openai_items import IMAGE_DETAILS, MAX_ITEMS, MAX_TEXT
from .original_request import (
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_KEY,
    MAX_MODEL,
    OPTIONS,
    RANGES,
    RESERVED_HEADERS,
    RESERVED_PARAMS,
    RESERVED_PREFIXES,
)
from .responses import EFFORTS, INCLUDABLE, LOGPROBS, MAX_METADATA, SERVICE_TIERS, SUMMARIES
from .v1 import MAX_LIMIT

Schema = dict[str, Any]

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
SSE = "text/event-stream"
PRINTABLE_ASCII = "^[ -~]*$"  # what may become (part of) an outgoing header: no control characters
NON_EMPTY_PRINTABLE_ASCII = "^[ -~]+$"
CODE_1_OR_2 = r"^\s*[12]\s*$"  # "1" or "2"; surrounding whitespace is ignored
HTTP_URL = "^\\s*[Hh][Tt][Tt][Pp][Ss]?://[!-~]+\\s*$"  # \s: the route trims as JavaScript does
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an RFC 9110 token
NO_CONTROL = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
ID_LENGTH = 256

STREAM_DESCRIPTION = """With `type: "2"` the answer is `text/event-stream` (HTTP 200). Events:

* `event: delta` — `data: {"delta": "<new text>", "text": "<text so far>", "id": "<reply id>",
  "parentMessageId": "<user message id>", "conversationId": "..."}`, one per upstream chunk
  (`text` is left out with `opts.opts.deltaOnly: true`);
* `event: done` — `data:` the success envelope whose `data` is exactly what `type: "1"` returns
  (the turn is stored before this event is sent);
* `event: error` — `data:` the error envelope, for a failure after the stream began;
* `: ping` comment lines every `CHATGPT_SERVER_HEARTBEAT_SECONDS` while nothing else is sent.

Failures before the first byte are ordinary JSON error answers with their HTTP status. If the client
disconnects, the upstream request is cancelled and the partial reply is stored with
`incomplete: true`. Browsers: use `fetch` and read `response.body` (EventSource cannot POST).
"""

INFO_DESCRIPTION = """ChatGPT and any chat-completions model behind one small API.

**Two doors.** The original's routes (everything outside `/v1`) answer with an envelope:
`{status, success, message, data, timestamp}` (`status` is 200 in every success, also when the HTTP
status is 201); errors are `{status, success: false, message, data: {}, timestamp, path}` with the
HTTP status in `status` and `path` never carrying the query string. Their messages are Chinese, as the
original's, or English with `Accept-Language: en` (or `CHATGPT_SERVER_LANGUAGE=en`). The OpenAI-shaped routes under
`/v1` answer as OpenAI does, errors as `{"error": {"message", "type", "param", "code"}}`, and take the
caller's key as `Authorization: Bearer`: it goes to the model's upstream, and every stored response and
conversation belongs to it.

**Every route**: a method the path does not serve is 405 with `Allow`; an unknown path is 404; a
trailing slash names the same route. Every response carries `X-Request-Id` (the request's own when it
sends a valid one, `^[A-Za-z0-9._:-]{1,128}$`, that is no credential, else a new one). Bodies are JSON
(`application/json`, any `application/*+json`, or no `Content-Type` at all); another media type is 415 on
the OpenAI-shaped routes
and 400 on the original ones (as the original answered it), a body over
`CHATGPT_SERVER_MAX_BODY_BYTES` is 413, malformed JSON is 400. A request head over
`CHATGPT_SERVER_MAX_HEADER_BYTES` is answered 431 (414 while still in the URL), and one not complete
within `CHATGPT_SERVER_HEADER_TIMEOUT_SECONDS` 408, one without exactly one `Host` header 400, a request
line of another HTTP version than 1.0 or 1.1 505, a method the server does not know 501, and a chunked
body whose framing cannot be read 400, in the route's JSON error shape with a request id, before any
route is reached. A request asking for an upgrade is served as HTTP/1.1. Browsers
on other origins are served only when `CHATGPT_SERVER_CORS_ORIGINS` lists them (then `OPTIONS`
preflights are answered too; a refused one is 400 in the route's JSON error shape).
"""


# -- small helpers -------------------------------------------------------------------------------
def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _or_null(schema: Schema) -> Schema:
    """``schema``, or null (which the server reads as "not given")."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _string(description: str = "", **constraints: Any) -> Schema:
    schema: Schema = {"type": "string", **constraints}
    if description:
        schema["description"] = description
    return schema


def _integer(low: int, high: int | None = None, description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", "minimum": low, **extra}
    if high is not None:
        schema["maximum"] = high
    if description:
        schema["description"] = description
    return schema


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = True,
            description: str = "") -> Schema:  # fmt: skip
    """An object with these properties; ``closed``: nothing else (what the server sends, or refuses)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _code(description: str) -> Schema:
    """ "1" or "2" (whitespace around is ignored); a number is refused, as the original refused it."""
    return {**_string(pattern=CODE_1_OR_2), "description": description}


def _case_insensitive(word: str) -> str:
    """A header name as a pattern any case of it matches, ``_`` for ``-`` too (as the route reads it). Valid
    in ECMAScript's ``u`` mode (JSON Schema's dialect), which refuses ``\\-`` outside a class."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else "[-_]" if c == "-" else "\\." if c == "." else c
                   for c in word)  # fmt: skip


def _json_event(event: str, data: Schema, description: str = "") -> Schema:
    """One server-sent event whose ``data`` line holds JSON (``event`` is "message" when the stream names none)."""
    schema = _object(
        {
            "event": {"const": event},
            "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        ("event", "data"),
    )
    if description:
        schema["description"] = description
    return schema


# -- responses, by door ----------------------------------------------------------------------------
REQUEST_ID_HEADER = {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}


def _answer(description: str, content: dict[str, Schema] | None = None, **headers: Schema) -> Schema:
    response: Schema = {"description": description, "headers": {**REQUEST_ID_HEADER, **headers}}
    if content:
        response["content"] = content
    return response


def _success(data: Schema) -> Schema:
    """The original's success envelope around ``data``."""
    return _object(
        {
            "status": {"const": 200, "description": "200 in every success, also when the HTTP status is 201"},
            "success": {"const": True},
            "message": {"const": "ok"},
            "data": data,
            "timestamp": {"$ref": "#/components/schemas/Timestamp"},
        },
        ("status", "success", "message", "data", "timestamp"),
    )


def _ok(description: str, data: Schema) -> Schema:
    return _answer(description, {JSON: {"schema": _success(data)}})


def _retry_after(status: str) -> dict[str, Schema]:
    return {"Retry-After": {"$ref": "#/components/headers/Retry-After"}} if status == "429" else {}


def _envelope_errors(errors: dict[str, str]) -> dict[str, Schema]:
    """Error answers of the original's door: status -> when. What the /v1 routes answer with 415 is a
    400 here, as the original's contract has it."""
    errors = dict(errors)
    if "415" in errors:
        media = errors.pop("415")
        errors["400"] = f"{errors['400']}; {media}" if "400" in errors else media
    out: dict[str, Schema] = {}
    for status, description in errors.items():
        schema = {"allOf": [_ref("ErrorEnvelope"), {"properties": {"status": {"const": int(status)}}}]}
        out[status] = _answer(description, {JSON: {"schema": schema}}, **_retry_after(status))
    return out


OPENAI_ERROR_TYPES = {
    "400": ["invalid_request_error"],
    "401": ["invalid_request_error"],
    "403": ["permission_error"],
    "404": ["invalid_request_error"],
    "405": ["invalid_request_error"],
    "409": ["invalid_request_error"],
    "413": ["invalid_request_error"],
    "415": ["invalid_request_error"],
    "429": ["rate_limit_exceeded", "insufficient_quota"],
}


def _openai_errors(errors: dict[str, str]) -> dict[str, Schema]:
    """Error answers of the OpenAI-shaped door: status -> when."""
    out: dict[str, Schema] = {}
    for status, description in errors.items():
        kinds = OPENAI_ERROR_TYPES.get(status, ["server_error"])
        schema = {"allOf": [_ref("OpenAIError"), {"properties": {"error": {"properties": {"type": {"enum": kinds}}}}}]}
        out[status] = _answer(description, {JSON: {"schema": schema}}, **_retry_after(status))
    return out


def _method_not_allowed(allow: str, openai: bool) -> Schema:
    answer = (_openai_errors if openai else _envelope_errors)({"405": "a method this path does not serve"})["405"]
    answer["description"] = f"another method than {allow} on this path (`Allow` lists them)"
    answer["headers"]["Allow"] = {"required": True, "schema": {"const": allow},
                                  "description": "the methods this path serves"}  # fmt: skip
    return answer


BODY_ERRORS = {
    "413": "the body is larger than CHATGPT_SERVER_MAX_BODY_BYTES",
    "415": "the body is not JSON (`application/json` or `application/*+json`; no Content-Type reads as JSON), "
    "or it is sent under a Content-Encoding",
}
FORM_BODY_ERRORS = {
    **BODY_ERRORS,
    "415": "the body is neither JSON nor a url-encoded form, or it is sent under a Content-Encoding",
}
STORE_DOWN = "the conversation store is unavailable (the upstream was not called), or the server is shutting down"


def _json_body(schema: Schema, required: bool = True, form: Schema | None = None, description: str = "") -> Schema:
    content: dict[str, Schema] = {JSON: {"schema": schema}}
    if form is not None:
        content[FORM] = {"schema": form}
    body: Schema = {"required": required, "content": content}
    if description:
        body["description"] = description
    return body


# -- the original's door: POST /api/v1/gpt/getInfo -------------------------------------------------
MODE_1 = {"type": "string", "pattern": r"^\s*1\s*$"}
MODE_2 = {"type": "string", "pattern": r"^\s*2\s*$"}
MODE_1_OPTIONS = tuple(name for name, mode in OPTIONS.items() if mode == "1")
MODE_2_OPTIONS = tuple(name for name, mode in OPTIONS.items() if mode == "2")
RESERVED_HEADER_NAMES = "^(?:" + "|".join(sorted(_case_insensitive(h) for h in RESERVED_HEADERS)) + ")$"
PREFIXED_HEADER_NAMES = "^(?:" + "|".join(_case_insensitive(p) for p in RESERVED_PREFIXES) + ")"


def _upstream_url(mode: str) -> Schema:
    url = _string(f"mode {mode}: another upstream base URL (http or https, a valid port, no query, fragment or "
                  "credentials); it must be the configured one or on CHATGPT_SERVER_ALLOWED_UPSTREAMS, else 400",
                  format="uri", pattern=HTTP_URL)  # fmt: skip
    return _or_null({**url, "not": {"pattern": "[?#]|^[^:]*://[^/]*@"}})


# The digit strings of 1..maximum, for each range an option has (leading zeros allowed, as Number() reads them).
DIGITS_UP_TO = {
    1_000_000: r"^0*([1-9][0-9]{0,5}|1000000)$",
    3_600_000: r"^0*([1-9][0-9]{0,5}|[12][0-9]{6}|3[0-5][0-9]{5}|3600000)$",
    10_000_000: r"^0*([1-9][0-9]{0,6}|10000000)$",
}


def _count_option(maximum: int, description: str, **extra: Any) -> Schema:
    """A numeric option: an integer, or its digits as a string (the original's JavaScript coerced them)."""
    digits = {"type": "string", "pattern": DIGITS_UP_TO[maximum]}
    return _or_null({"anyOf": [_integer(1, maximum), digits], "description": description + "; a string of its "
                     "digits is read as the number", **extra})  # fmt: skip


def _millis(description: str) -> Schema:
    return _count_option(RANGES["timeoutMs"], description)


OPTION_SCHEMAS: dict[str, Schema] = {
    "systemMessage": _or_null(_string('the system message (default: the original\'s; "" sends none)')),
    "completionParams": _or_null({
        "type": "object",
        "description": "mode 1: any chat-completions body field (model, temperature, top_p, presence_penalty, "
        "max_tokens, stop, ...), passed to the upstream as given, which may refuse what it does not know "
        f"(400); {', '.join(RESERVED_PARAMS)} are set by the server and refused here",
        "properties": {"model": {"type": "string", "maxLength": MAX_MODEL}},
        "propertyNames": {"not": {"enum": list(RESERVED_PARAMS)}},
    }),
    "maxModelTokens": _count_option(RANGES["maxModelTokens"], "the token budget of prompt and reply (default "
                                    "in mode 1 CHATGPT_SERVER_MAX_MODEL_TOKENS, 4000; in mode 2 the model's "
                                    "context window); it must exceed maxResponseTokens (given or default), and "
                                    "be at most 10000000", default=4000),
    "maxResponseTokens": _count_option(RANGES["maxResponseTokens"], "the reply's share of the budget (default "
                                       "CHATGPT_SERVER_MAX_RESPONSE_TOKENS, 1000); it must be below "
                                       "maxModelTokens (given or default), and at most 1000000", default=1000),
    "apiBaseUrl": _upstream_url("1"),
    "apiOrg": _or_null(_string("mode 1: sent as OpenAI-Organization", pattern=PRINTABLE_ASCII,
                               maxLength=MAX_MODEL)),
    "model": _or_null(_string("mode 2: the ChatGPT model (default CHATGPT_SERVER_DEFAULT_CHATGPT_MODEL); "
                              "mode 1: shorthand for completionParams.model", pattern=PRINTABLE_ASCII,
                              maxLength=MAX_MODEL)),
    "apiReverseProxyUrl": _upstream_url("2"),
    "headers": _or_null({
        "type": "object",
        "description": f"mode 2: extra headers for the backend (web or Codex), under the protocol's own: at most "
        f"{MAX_HEADERS}, names that are header "
        f"tokens of at most {MAX_HEADER_NAME} characters, values of printable ASCII of at most "
        f"{MAX_HEADER_VALUE}, at most 16384 characters in all, and none of the gateway's or the connection's "
        "own headers (Authorization, Host, Cookie, Content-Type, Accept, Forwarded, X-Forwarded-*, Proxy-*, "
        "Sec-*, ...)",
        "maxProperties": MAX_HEADERS,
        "propertyNames": {"allOf": [
            {"pattern": HEADER_NAME, "maxLength": MAX_HEADER_NAME},
            {"not": {"pattern": RESERVED_HEADER_NAMES}},
            {"not": {"pattern": PREFIXED_HEADER_NAMES}},
        ]},
        "additionalProperties": _string(maxLength=MAX_HEADER_VALUE, pattern=PRINTABLE_ASCII),
    }),
    "timeoutMs": _millis("the longest the whole reply may take (default CHATGPT_SERVER_TIMEOUT_MS, 600000)"),
    "idleTimeoutMs": _millis("the longest silence between stream chunks (default "
                             "CHATGPT_SERVER_IDLE_TIMEOUT_MS, 120000)"),
    "deltaOnly": _or_null({"type": "boolean", "description": "type 2: delta events carry only the new text "
                                                             "(no `text` so far), so a stream grows linearly"}),
    "debug": {"description": "accepted (any value) and ignored, as a client of the original may send it"},
}  # fmt: skip
GPT_OPTIONS = _object(
    {name: schema if not OPTIONS[name] else {"description": f"mode {OPTIONS[name]} only (its schema there); any "
                                                            "value is ignored in the other mode"}
     for name, schema in OPTION_SCHEMAS.items()},
    closed=False,
    description="Options, merged as the original merged them into its client: an unknown option, and one of the "
    f"other mode ({', '.join(MODE_1_OPTIONS)} are for mode 1, {', '.join(MODE_2_OPTIONS)} for mode 2), is ignored, "
    "whatever its value. null reads as not given.",
)  # fmt: skip


def _mode_options(names: tuple[str, ...]) -> Schema:
    """The schemas of one mode's own options, where that mode is asked for."""
    options = {n: OPTION_SCHEMAS[n] for n in names}
    return {"properties": {"opts": {"properties": {"opts": {"properties": options}}}}}


GPT_REQUEST = {
    **_object(
        {
            "mode": _code('"1": an OpenAI API key (chat completions); "2": a ChatGPT access token'),
            "type": _code('"1": one JSON reply (HTTP 201); "2": a stream of server-sent events (HTTP 200)'),
            "opts": {
                "type": "object",
                "required": ["key", "content", "isFollow"],
                "properties": {
                    "key": _string("the API key (mode 1) or access token (mode 2)", minLength=1, maxLength=MAX_KEY,
                                   pattern=NON_EMPTY_PRINTABLE_ASCII),
                    "content": _string("the question", minLength=1),
                    "isFollow": {"anyOf": [{"type": "boolean"}, {"enum": ["true", "false"]}],
                                 "description": "true to continue the conversation of parentMessageId"},
                    "parentMessageId": _or_null(_string("the `id` of the reply to continue from; required (and not "
                                                        "empty) when isFollow is true, ignored otherwise",
                                                        maxLength=ID_LENGTH)),
                    "opts": _or_null(_ref("GptOptions")),
                },
                "if": {"required": ["isFollow"], "properties": {"isFollow": {"enum": [True, "true"]}}},
                "then": {"required": ["parentMessageId"], "properties": {"parentMessageId": _string(minLength=1)}},
            },
        },
        ("mode", "type", "opts"),
        closed=False,
    ),
    "allOf": [
        {"if": {"required": ["mode"], "properties": {"mode": MODE_1}}, "then": _mode_options(MODE_1_OPTIONS)},
        {"if": {"required": ["mode"], "properties": {"mode": MODE_2}}, "then": _mode_options(MODE_2_OPTIONS)},
    ],
}  # fmt: skip

USAGE = {"type": "object", "additionalProperties": {"type": ["integer", "boolean", "object"]},
         "description": "token counts; `estimated: true` when the upstream gave none"}  # fmt: skip

CHAT_MESSAGE = _object(
    {
        "role": {"const": "assistant"},
        "id": _string("the reply's id: name it as parentMessageId to follow up"),
        "parentMessageId": _string("the id of the stored user message"),
        "conversationId": _string(),
        "text": _string(),
        "detail": {
            "type": "object",
            "description": "mode 1: the upstream chat completion, with usage; mode 2: the model, usage and the "
            "account's rate limits, when the backend sent them",
            "properties": {
                "id": _string(), "object": {"const": "chat.completion"}, "created": {"type": "integer"},
                "model": _string(), "usage": USAGE,
                "choices": {"type": "array", "items": {"type": "object"}},
            },
        },
        "incomplete": {"const": True, "description": "present when the reply was cut off"},
        "incompleteReason": _string("why the reply was cut off"),
    },
    ("role", "id", "parentMessageId", "conversationId", "text"),
)  # fmt: skip

DELTA = _object(
    {
        "delta": _string("the new text"),
        "text": _string("the text so far (left out with deltaOnly)"),
        "id": _string("the reply's id"),
        "parentMessageId": _string("the id of the stored user message"),
        "conversationId": _string(),
    },
    ("delta", "id", "parentMessageId", "conversationId"),
)

GPT_EVENT = {
    "oneOf": [
        _json_event("delta", DELTA, "one per upstream chunk"),
        _json_event("done", _success(_ref("ChatMessage")), "the reply, stored"),
        _json_event("error", _ref("ErrorEnvelope"), "a failure after the stream began"),
    ]
}


# -- the token door ---------------------------------------------------------------------------------
EMAIL = _string("the account's email (whitespace around it is ignored); printable ASCII", maxLength=320,
                pattern=r"^\s*[!-~](?:[ -~]*[!-~])?\s*$")  # fmt: skip
PASSWORD = _string("sent only to CHATGPT_SERVER_AUTH_URL; never logged nor echoed", minLength=1, maxLength=1024)
ACCOUNT_TOKEN = _string("with type 2: a verified access token of a stored account (also accepted as "
                        "`Authorization: Bearer`, once) returns that account's current token, refreshed if needed; "
                        "email and password are then not needed. Only a token of the sign-in the account is "
                        "stored with (or a refresh of it) is: one of an older sign-in gets nothing")  # fmt: skip
TOKEN_TYPE = "1: get a token (cached while it stays valid); 2: refresh it"

TOKEN_REQUEST = _object(
    {"type": _code(TOKEN_TYPE), "email": EMAIL, "password": PASSWORD, "token": ACCOUNT_TOKEN},
    ("type", "email", "password"),
    closed=False,
)
TOKEN_FORM = _object(
    {"type": _string(TOKEN_TYPE, pattern=CODE_1_OR_2), "email": EMAIL, "password": PASSWORD, "token": ACCOUNT_TOKEN},
    ("type", "email", "password"),
    closed=False,
)
TOKEN_QUERY = [
    {"name": "type", "in": "query", "required": True, "schema": _string(pattern=CODE_1_OR_2),
     "description": TOKEN_TYPE},
    {"name": "email", "in": "query", "required": True, "schema": EMAIL},
    {"name": "password", "in": "query", "required": True, "schema": PASSWORD,
     "description": "in a URL it ends up in proxy and server logs: prefer POST"},
    {"name": "token", "in": "query", "required": False, "schema": ACCOUNT_TOKEN},
]  # fmt: skip
TOKEN_ERRORS = {
    "400": "validation failed (every problem listed, joined by ','), the account signs in through "
    "Google/Microsoft/Apple, stored accounts need CHATGPT_SERVER_SECRET_KEY, or two Authorization headers",
    "401": "wrong email or password, or the stored account must sign in again",
    "403": "captcha required, or unsupported_country (set CHATGPT_SERVER_PROXY)",
    "404": "the stored account was removed meanwhile",
    "429": "sign-in refused or rate limited (OAuthSignin), or this address made "
    "CHATGPT_SERVER_PASSWORD_SIGN_INS_PER_HOUR password sign-ins this hour (password_sign_ins_limited, Retry-After)",
    "502": "the identity service is unreachable, answered something unexpected or a redirect to another host, "
    "or the sign-in flow changed at step N (then use device sign-in)",
    "503": "the store is unavailable, another instance is refreshing the account, or the issuer's keys cannot be "
    "fetched now (Retry-After)",
    "504": "the identity service did not answer in time",
}
# The SDK's organization= and project=: passed on to a chat-completions upstream (a key of several).
SCOPE_HEADERS = [
    {"name": name, "in": "header", "required": False,
     "schema": {"type": "string", "maxLength": 256, "pattern": "^[\\x20-\\x7e]*$"},
     "description": f"passed on to a chat-completions upstream as {name}; one printable value, else 400 (not sent "
     "to the Codex backend)"}
    for name in ("OpenAI-Organization", "OpenAI-Project")
]  # fmt: skip
LANGUAGE = {
    "name": "Accept-Language", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "`en` for English messages, `zh` for Chinese (the original's texts); anything else: "
    "CHATGPT_SERVER_LANGUAGE (default zh)",
}  # fmt: skip
OPTIONAL_ACCOUNT_TOKEN: list[dict[str, list[str]]] = [{}, {"accountToken": []}]

DEVICE_START = _object(
    {
        "userCode": _string("the code the person enters at verificationUri"),
        "verificationUri": _string(format="uri"),
        "deviceAuthId": _string("name it to poll"),
        "interval": {"type": "number", "minimum": 0, "description": "seconds to wait between polls"},
        "expiresAt": _integer(0, description="epoch seconds"),
    },
    ("userCode", "verificationUri", "deviceAuthId", "interval", "expiresAt"),
)
DEVICE_POLL = _object(
    {"deviceAuthId": _string("from POST /api/v1/token/device", minLength=1, maxLength=512,
                             pattern=NON_EMPTY_PRINTABLE_ASCII)},
    ("deviceAuthId",),
    closed=False,
)  # fmt: skip
DEVICE_RESULT = {
    "oneOf": [
        _object({"status": {"const": "pending"}, "interval": {"type": "number", "minimum": 0}}, ("status", "interval"),
                description="the person has not finished yet: poll again after interval seconds"),
        _object(
            {
                "status": {"const": "signed_in"},
                "email": _string(), "plan": _string(), "accountId": _string(), "expiresAt": {"type": "integer"},
                "accessToken": _string("the account's access token: use it as the mode 2 key or /v1 bearer key"),
            },
            ("status", "email", "plan", "accountId", "expiresAt", "accessToken"),
            description="signed in: the account is stored (its tokens encrypted with CHATGPT_SERVER_SECRET_KEY)",
        ),
    ]
}  # fmt: skip
DEVICE_ERRORS = {
    "502": "the issuer is unreachable or answered something unexpected",
    "503": "the store is unavailable",
    "504": "the issuer did not answer in time",
}


# -- the OpenAI-shaped door -------------------------------------------------------------------------
MODEL = _string("the model; the upstream that serves it is chosen by CHATGPT_SERVER_MODELS_FILE (default: "
                "CHATGPT_SERVER_OPENAI_BASE_URL), which may not know it (400). Printable: no control characters",
                minLength=1, maxLength=ID_LENGTH, pattern=NO_CONTROL)  # fmt: skip
TEXT = _string(maxLength=MAX_TEXT)
TEXT_TYPES = ["input_text", "output_text", "text"]
TEXT_PART = _object({"type": {"enum": TEXT_TYPES}, "text": TEXT}, ("type", "text"), closed=False)
IMAGE_PART = _object(
    {
        "type": {"const": "input_image"},
        "image_url": _string("an http(s) URL or a data:image/ URL (file ids are not supported)", minLength=1,
                             maxLength=MAX_TEXT, pattern="^(?:https?://|data:image/)"),
        "detail": {"enum": list(IMAGE_DETAILS), "default": "auto"},
    },
    ("type", "image_url"),
    closed=False,
)  # fmt: skip
REFUSAL_PART = _object({"type": {"const": "refusal"}, "refusal": TEXT}, ("type", "refusal"), closed=False)


def _content(parts: list[Schema]) -> Schema:
    return {"anyOf": [TEXT, {"type": "array", "minItems": 1, "items": {"anyOf": parts}}]}


def _message_item(roles: list[str], parts: list[Schema]) -> Schema:
    return _object({"type": {"const": "message"}, "role": {"enum": roles}, "content": _content(parts)},
                   ("role", "content"), closed=False)  # fmt: skip


CALL_ID = _string(minLength=1, maxLength=ID_LENGTH)
INPUT_ITEMS = [
    _message_item(["user", "system", "developer"], [TEXT_PART, IMAGE_PART]),
    _message_item(["assistant"], [TEXT_PART, REFUSAL_PART]),
    _object({"type": {"const": "function_call"}, "call_id": CALL_ID, "name": CALL_ID, "arguments": TEXT},
            ("type", "call_id", "name"), closed=False),
    _object({"type": {"const": "function_call_output"}, "call_id": CALL_ID,
             "output": _content([TEXT_PART, IMAGE_PART])}, ("type", "call_id", "output"), closed=False),
    _object({"type": {"const": "reasoning"}}, ("type",), closed=False,
            description="skipped: reasoning state belongs to the upstream that made it"),
]  # fmt: skip
REFERENCE_ITEM = {**_object({"type": {"const": "item_reference"}, "id": CALL_ID}, ("id",), closed=False,
                            description="an item stored earlier, copied into this turn (type may be left out when "
                            "role is too)"),
                  "if": {"not": {"required": ["type"]}}, "then": {"not": {"required": ["role"]}}}  # fmt: skip
NOT_REASONING = {"not": {"required": ["type"], "properties": {"type": {"const": "reasoning"}}}}


def _items(kinds: list[Schema], description: str, min_items: int = 0, max_items: int = MAX_ITEMS) -> Schema:
    schema: Schema = {"type": "array", "maxItems": max_items, "items": {"anyOf": kinds}, "description": description}
    if min_items:
        schema["minItems"] = min_items
        schema["contains"] = NOT_REASONING
    return schema


PRINTABLE_ID = _string("an id this gateway gave (printable ASCII; the server refuses only characters that are not "
                       "printable, and answers 404 for an id it does not know)", minLength=1, maxLength=ID_LENGTH,
                       pattern=NON_EMPTY_PRINTABLE_ASCII)  # fmt: skip


def _reference(description: str) -> Schema:
    return {
        "anyOf": [PRINTABLE_ID, _object({"id": PRINTABLE_ID}, ("id",), closed=False), {"type": "null"}],
        "description": description,
    }


METADATA = _or_null({
    "type": "object",
    "description": f"at most {MAX_METADATA} keys of at most 64 characters, values strings of at most 512",
    "maxProperties": MAX_METADATA,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": _string(maxLength=512),
})  # fmt: skip
FUNCTION_TOOL = _object(
    {
        "type": {"const": "function"},
        "name": _string(
            "letters, digits, underscores, dashes (OpenAI's rule), dots and colons", pattern="^[A-Za-z0-9_.:-]{1,64}$"
        ),
        "description": _or_null(_string()),
        "parameters": _or_null({"type": "object", "description": "a JSON schema"}),
        "strict": _or_null({"type": "boolean", "description": "passed on"}),
    },
    ("type", "name"),
    closed=False,
)
ALLOWED_TOOLS = _object(
    {"type": {"const": "allowed_tools"}, "mode": {"enum": ["auto", "required"]},
     "tools": {"type": "array", "minItems": 1, "items": _object(
         {"type": {"const": "function"}, "name": _string("one of this request's tools")}, ("type", "name"))}},
    ("type", "mode", "tools"), description="the model may use only these of the request's tools",
)  # fmt: skip
TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["auto", "none", "required", None]},
        _object({"type": {"const": "function"}, "name": _string("one of this request's tools")}, ("type", "name"),
                closed=False),
        ALLOWED_TOOLS,
    ]
}  # fmt: skip
TEXT_FORMAT = {
    "anyOf": [
        {"type": "null"},
        _object({"type": {"enum": ["text", "json_object"]}}, ("type",)),
        _object({"type": {"const": "json_schema"}, "schema": {"type": "object"},
                 "name": _string("1 to 64 letters, digits, _ or -", pattern="^[A-Za-z0-9_-]{1,64}$"),
                 "description": _string("passed on: it tells the model what the format is for"),
                 "strict": _or_null({"type": "boolean"})}, ("type", "schema", "name")),
    ]
}  # fmt: skip

# input, or a history that is the question
HAS_QUESTION = {"anyOf": [
    {"required": ["input"]},
    {"required": ["previous_response_id"], "properties": {"previous_response_id": {"not": {"type": "null"}}}},
    {"required": ["conversation"], "properties": {"conversation": {"not": {"type": "null"}}}},
]}  # fmt: skip
RESPONSE_REQUEST = {
    **_object(
        {
            "model": MODEL,
            "input": {"anyOf": [TEXT, _items([*INPUT_ITEMS, REFERENCE_ITEM], "items; at least one that is not "
                                             "reasoning", min_items=1)]},
            "instructions": _or_null(_string("a system message for this response only (never stored)")),
            "previous_response_id": _reference("continue from this response (or from any stored item id, such "
                                               "as a reply id of the original route)"),
            "conversation": _reference("continue this conversation and add the turn to it"),
            "store": _or_null({"type": "boolean", "default": True}),
            "stream": _or_null({"type": "boolean", "default": False}),
            "truncation": {"enum": ["auto", "disabled", None], "default": "disabled",
                           "description": "auto drops the oldest items that do not fit the model's context window"},
            "max_output_tokens": _or_null(_integer(16, 1_000_000)),
            "temperature": _or_null({"type": "number", "minimum": 0, "maximum": 2}),
            "top_p": _or_null({"type": "number", "minimum": 0, "maximum": 1}),
            "tools": _or_null({"type": "array", "maxItems": 128, "items": FUNCTION_TOOL,
                               "description": "function tools only"}),
            "tool_choice": TOOL_CHOICE,
            "parallel_tool_calls": _or_null({"type": "boolean"}),
            "metadata": METADATA,
            "user": _or_null(_string(maxLength=ID_LENGTH)),
            "safety_identifier": _or_null(_string("passed on to a chat-completions upstream", maxLength=ID_LENGTH)),
            "text": _or_null(_object({"format": TEXT_FORMAT, "verbosity": {"enum": ["low", "medium", "high", None]}})),
            "reasoning": _or_null(_object(
                {"effort": {"enum": [*EFFORTS, None]}, "summary": {"enum": [*SUMMARIES, None]}}, closed=False,
                description=f"effort ({', '.join(EFFORTS)}) is passed on to reasoning models; the rest is ignored")),
            "background": {"enum": [False, None], "description": "background mode is not supported"},
            "include": _or_null({"type": "array", "items": {"enum": [v for v in INCLUDABLE if v != LOGPROBS]},
                                 "description": "OpenAI's values are accepted (no extra applies to what this "
                                 "gateway returns), logprobs refused, others 400"}),
            "top_logprobs": {"enum": [0, None], "description": "logprobs are not available"},
            "stream_options": _or_null(_object({"include_obfuscation": {"type": "boolean"}},
                                               description="accepted and ignored")),
            "prompt_cache_key": _or_null(_string("passed on to a chat-completions upstream", maxLength=1024)),
            "service_tier": {"enum": [*SERVICE_TIERS, None],
                             "description": "passed on to a chat-completions upstream"},
            "max_tool_calls": _or_null(_integer(1, 1_000_000, description="echoed; not enforced")),
        },
        ("model",),
        description="An unknown field is refused (400). tool_choice's function must name one of tools. input may "
        "be left out with previous_response_id or conversation: the history is then the question.",
    ),
    "allOf": [
        HAS_QUESTION,
        {"not": {"required": ["previous_response_id", "conversation"], "properties": {
            "previous_response_id": {"not": {"type": "null"}}, "conversation": {"not": {"type": "null"}}}}},
        {"if": {"required": ["conversation"], "properties": {"conversation": {"not": {"type": "null"}}}},
         "then": {"properties": {"store": {"not": {"const": False}}}}},
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"const": "required"}}},
         "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
    ],
}  # fmt: skip

# responses.input_tokens.count: create's fields, none required (model: CHATGPT_SERVER_DEFAULT_MODEL).
COUNT_REQUEST = {
    **{k: v for k, v in RESPONSE_REQUEST.items() if k != "required"},
    "allOf": [rule for rule in RESPONSE_REQUEST["allOf"] if rule is not HAS_QUESTION],  # create's rule, not count's
    "properties": {**RESPONSE_REQUEST["properties"],
                   "personality": {"type": "string", "description": "accepted and ignored"}},
    "description": "As createResponse's body, every field optional: model defaults to CHATGPT_SERVER_DEFAULT_MODEL, "
    "input to none; stream is ignored.",
}  # fmt: skip

INPUT_TOKENS = _object({"object": {"const": "response.input_tokens"}, "input_tokens": _integer(0)},
                       ("object", "input_tokens"))  # fmt: skip

STATUS = {"enum": ["completed", "incomplete", "in_progress"]}
OUTPUT_TEXT = _object({"type": {"const": "output_text"}, "text": _string(), "annotations": {"type": "array"},
                       "logprobs": {"type": "array"}}, ("type", "text", "annotations", "logprobs"))  # fmt: skip
REFUSAL = _object(
    {"type": {"const": "refusal"}, "refusal": _string()},
    ("type", "refusal"),
    description="an assistant message that is the model declining (the upstream said it as a refusal)",
)
SHOWN_PARTS = [
    OUTPUT_TEXT,
    REFUSAL,
    _object({"type": {"const": "input_text"}, "text": _string()}, ("type", "text")),
    _object({"type": {"const": "input_image"}, "image_url": _string(), "detail": {"enum": list(IMAGE_DETAILS)}},
            ("type", "image_url", "detail")),
]  # fmt: skip
ITEM = {
    "oneOf": [
        _object({"id": _string(), "type": {"const": "message"}, "status": STATUS,
                 "role": {"enum": ["user", "assistant", "system", "developer"]},
                 "content": {"type": "array", "items": {"anyOf": SHOWN_PARTS}}},
                ("id", "type", "status", "role", "content")),
        _object({"id": _string(), "type": {"const": "function_call"}, "status": STATUS, "call_id": _string(),
                 "name": _string(), "arguments": _string()}, ("id", "type", "status", "call_id", "name", "arguments")),
        _object({"id": _string(), "type": {"const": "function_call_output"}, "status": STATUS, "call_id": _string(),
                 "output": _string()}, ("id", "type", "status", "call_id", "output")),
    ]
}  # fmt: skip

RESPONSE = _object(
    {
        "id": _string(pattern="^resp_"),
        "object": {"const": "response"},
        "created_at": {"type": "integer"},
        "completed_at": _or_null({"type": "integer", "description": "when it completed (completed only)"}),
        "status": {"enum": ["completed", "incomplete", "in_progress", "failed", "cancelled"],
                   "description": "cancelled: the client left a stream (what had arrived is kept)"},
        "background": {"const": False},
        "error": _or_null(_object({"code": _string(), "message": _string(), "type": _string("the precise code")},
                                  ("code", "message"))),
        "incomplete_details": _or_null(_object({"reason": {"enum": ["max_output_tokens", "content_filter"]}},
                                               ("reason",))),
        "instructions": _or_null(_string()),
        "max_output_tokens": _or_null({"type": "integer"}),
        "max_tool_calls": _or_null({"type": "integer", "description": "as asked"}),
        "model": _string(),
        "output": {"type": "array", "items": _ref("Item")},
        "parallel_tool_calls": {"type": "boolean"},
        "previous_response_id": _or_null(_string()),
        "conversation": _or_null(_object({"id": _string()}, ("id",))),
        "reasoning": _object({"effort": {"enum": [*EFFORTS, None]}, "summary": {}},
                             ("effort", "summary")),
        "store": {"type": "boolean"},
        "temperature": _or_null({"type": "number"}),
        "text": _object({"format": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]}}},
            "verbosity": {"enum": ["low", "medium", "high"]}}, ("format",)),
        "prompt_cache_key": _or_null(_string()),
        "service_tier": {"enum": [*SERVICE_TIERS, None], "description": "as asked (null: not asked; absent in "
                         "responses stored before it was kept)"},
        "tool_choice": {"anyOf": [{"enum": ["auto", "none", "required"]},
                                  _object({"type": {"const": "function"}, "name": _string()}, ("type", "name")),
                                  ALLOWED_TOOLS]},
        "tools": {"type": "array", "items": {"type": "object"}},
        "top_p": _or_null({"type": "number"}),
        "truncation": {"enum": ["auto", "disabled"]},
        "usage": _or_null(_object({
            "input_tokens": _integer(0), "output_tokens": _integer(0), "total_tokens": _integer(0),
            "input_tokens_details": _object({"cached_tokens": _integer(0), "cache_write_tokens": _integer(0)},
                                            ("cached_tokens", "cache_write_tokens")),
            "output_tokens_details": _object({"reasoning_tokens": _integer(0)}, ("reasoning_tokens",)),
        }, ("input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"))),
        "user": _or_null(_string()),
        "safety_identifier": _or_null(_string("as asked (absent in responses stored before it was kept)")),
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ("id", "object", "created_at", "status", "background", "error", "incomplete_details", "instructions",
     "max_output_tokens", "max_tool_calls", "model", "output", "parallel_tool_calls", "previous_response_id",
     "conversation", "reasoning", "store", "temperature", "text", "tool_choice", "tools", "top_p", "truncation",
     "usage", "user", "metadata"),
)  # fmt: skip


def _response_event(kind: str, **fields: Schema) -> Schema:
    data = _object({"type": {"const": kind}, "sequence_number": _integer(0), **fields},
                   ("type", "sequence_number", *fields))  # fmt: skip
    return _json_event(kind, data)


INDEX = _integer(0)
RESPONSE_EVENT = {
    "oneOf": [
        *(_response_event(kind, response=_ref("Response")) for kind in (
            "response.created", "response.in_progress", "response.completed", "response.incomplete",
            "response.failed")),
        _response_event("response.output_item.added", output_index=INDEX, item=_ref("Item")),
        _response_event("response.output_item.done", output_index=INDEX, item=_ref("Item")),
        _response_event("response.content_part.added", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        part={"anyOf": [OUTPUT_TEXT, REFUSAL]}),
        _response_event("response.content_part.done", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        part={"anyOf": [OUTPUT_TEXT, REFUSAL]}),
        _response_event("response.refusal.delta", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        delta=_string()),
        _response_event("response.refusal.done", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        refusal=_string()),
        _response_event("response.output_text.delta", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        delta=_string(), logprobs={"type": "array"}),
        _response_event("response.output_text.done", item_id=_string(), output_index=INDEX, content_index=INDEX,
                        text=_string(), logprobs={"type": "array"}),
        _response_event("response.function_call_arguments.delta", item_id=_string(), output_index=INDEX,
                        delta=_string()),
        _response_event("response.function_call_arguments.done", item_id=_string(), output_index=INDEX,
                        name=_string(), arguments=_string()),
    ]
}  # fmt: skip

CHAT_MESSAGE_IN = _object(
    {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "name": _string(),
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": _string(),
    },
    ("role",),
    closed=False,
)
CHAT_REQUEST = _object(
    {
        "model": MODEL,
        "messages": {"type": "array", "minItems": 1, "items": CHAT_MESSAGE_IN,
                     "description": "passed on as given: the upstream checks them"},
        "stream": _or_null({"type": "boolean", "default": False}),
        "stream_options": _or_null({"type": "object", "description": "include_usage is set to true unless given"}),
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"}, "stop": {}, "tools": {"type": "array"}, "tool_choice": {},
        "response_format": {"type": "object"}, "user": _string(), "seed": {"type": "integer"},
    },
    ("model", "messages"),
    closed=False,
    description="A chat-completions body, passed to the model's upstream as the client wrote it: the gateway "
    "checks model, messages and stream; the upstream checks the rest (and refuses what it does not know).",
)  # fmt: skip
CHAT_COMPLETION = {
    "type": "object",
    "required": ["choices"],
    "properties": {
        "id": _string(), "object": _string(), "created": {"type": "integer"}, "model": _string(),
        "choices": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["message"]}},
        "usage": {"type": "object"},
    },
    "description": "the upstream's chat completion, as it sent it (after checking it is one)",
}  # fmt: skip
CHAT_CHUNK_EVENT = _object(
    {
        "event": {"const": "message"},
        "data": {
            "type": "string",
            "if": {"const": "[DONE]"},
            "else": {"contentMediaType": JSON, "contentSchema": {"anyOf": [
                {"type": "object", "required": ["object"],
                 "properties": {"object": {"const": "chat.completion.chunk"}}},
                _ref("OpenAIError"),
            ]}},
        },
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    ("event", "data"),
    description="`data:` a chat.completion.chunk as the upstream sent it, then `[DONE]`; a failure after the "
    "stream began is one `data:` event with OpenAI's error object",
)  # fmt: skip

MODEL_OBJECT = _object({
    "id": _string(), "object": {"const": "model"}, "created": {"type": "integer"},
    "owned_by": {"enum": ["chat", "codex"]}, "context_window": _integer(1),
}, ("id", "object", "created", "owned_by", "context_window"))  # fmt: skip
MODEL_LIST = _object(
    {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL_OBJECT}}, ("object", "data")
)
CONVERSATION = _object(
    {
        "id": _string(),
        "object": {"const": "conversation"},
        "created_at": {"type": "integer"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ("id", "object", "created_at", "metadata"),
)


def _list_of(item: Schema) -> Schema:
    return _object(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": _or_null(_string()),
            "last_id": _or_null(_string()),
            "has_more": {"type": "boolean"},
        },
        ("object", "data", "first_id", "last_id", "has_more"),
    )


def _deleted(kind: str) -> Schema:
    return _object({"id": _string(), "object": {"const": kind}, "deleted": {"const": True}},
                   ("id", "object", "deleted"))  # fmt: skip


CONVERSATION_CREATE = _object(
    {"items": _or_null(_items(INPUT_ITEMS, "the conversation's first items, at most 20 (item references are "
                              "refused)", max_items=MAX_ADDED)),
     "metadata": METADATA},
    description="An unknown field is refused (400).",
)  # fmt: skip
CONVERSATION_UPDATE = _object({"metadata": METADATA}, ("metadata",), description="An unknown field is refused (400).")
ITEMS_ADD = _object(
    {"items": _items(INPUT_ITEMS, "items to add, 1 to 20 (item references are refused); at least one that is not "
                     "reasoning", min_items=1, max_items=MAX_ADDED)},
    ("items",),
    description="An unknown field is refused (400).",
)  # fmt: skip


def _path_id(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _string(minLength=1), "description": description}


def _paging(after: str) -> list[Schema]:
    return [
        {"name": "after", "in": "query", "required": False, "description": after,
         "schema": _string(maxLength=ID_LENGTH, pattern=PRINTABLE_ASCII)},
        {"name": "limit", "in": "query", "required": False, "schema": _integer(1, MAX_LIMIT, default=20)},
        {"name": "order", "in": "query", "required": False, "schema": {"enum": ["asc", "desc"], "default": "desc"}},
    ]  # fmt: skip


CONVERSATION_ID = _path_id("id", "a conversation id (one the original route or the Responses API started works too)")
RESPONSE_ID = _path_id("id", "a response id")
ITEM_ID = _path_id("item_id", "an item id")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
V1_AUTH = {
    "401": "no `Authorization: Bearer` key, or one that is not printable ASCII of at most 16384 characters "
    "(or the upstream refused it: code invalid_api_key); or a ChatGPT account's token expired past its grace "
    "period, or of an earlier sign-in of the stored account",
    "400": "more than one Authorization header",
}
V1_STORE = {
    "503": STORE_DOWN + "; or, with a ChatGPT account's token as the key, the issuer's keys cannot be "
    "fetched now, so it cannot be checked (Retry-After); or a conversation's lock lapsed while the store was "
    "out of reach, so its turn was not stored (code conversation_lease_lost)"
}
NOT_FOUND_RESPONSE = {"404": "no response with this id belongs to this key"}
NOT_FOUND_CONVERSATION = {"404": "no conversation with this id belongs to this key"}
CONFLICT = {"409": "the conversation changed meanwhile: try again"}
UPSTREAM_ERRORS = {
    "401": "no `Authorization: Bearer` key, one that is not printable ASCII, or the upstream refused it",
    "403": "the upstream refused access (or the account's plan does not include this use)",
    "429": "the upstream's rate limit or quota, or the account's usage limit (Retry-After passed on)",
    "502": "the upstream is unreachable, failed (5xx), redirected, or answered something unexpected or too large",
    "504": "the upstream did not answer in time, or went silent mid-stream",
}


# -- operations --------------------------------------------------------------------------------------
def _operation(op_id: str, summary: str, responses: dict[str, Schema], *, tag: str, description: str = "",
               parameters: list[Schema] | None = None, body: Schema | None = None,
               security: list[dict[str, list[str]]] | None = None) -> Schema:  # fmt: skip
    operation: Schema = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _link(op_id: str, description: str, **parameters: str) -> Schema:
    return {"operationId": op_id, "parameters": parameters, "description": description}


def _conversation_links() -> dict[str, Schema]:
    by_id = {"id": "$response.body#/id"}
    return {
        "GetConversation": _link("getConversation", "read it", **by_id),
        "UpdateConversation": _link("updateConversation", "change its metadata", **by_id),
        "DeleteConversation": _link("deleteConversation", "delete it", **by_id),
        "ListItems": _link("listConversationItems", "list its items", **by_id),
        "AddItems": _link("addConversationItems", "add items", **by_id),
    }


def _original_paths() -> dict[str, Schema]:
    gpt_ok = _ok('type "1": the reply, stored before it is returned', _ref("ChatMessage"))
    gpt_stream = _answer('type "2": the reply as server-sent events', {SSE: {"schema": GPT_EVENT}},
                         **{"Cache-Control": {"schema": {"const": "no-cache"}, "required": True},
                            "X-Accel-Buffering": {"schema": {"const": "no"}, "required": True}})  # fmt: skip
    gpt_errors = _envelope_errors({
        "400": "validation failed (every problem listed, joined by ','), the body is not a JSON object or not "
        "JSON, an option of this mode is out of its range or shape (unknown ones and the other mode's are "
        "ignored), an upstream URL is not allowed, the prompt exceeds "
        "maxModelTokens - maxResponseTokens, maxResponseTokens is not below a mode-2 model's context window, "
        "parentMessageId belongs to a conversation of the other mode, or the "
        "upstream refused the request (context too long, unknown model)",
        "401": "the upstream rejected the key or token, or the access token has expired (checked before calling)",
        "403": "the upstream refused access, or asks for a browser challenge",
        "404": "parentMessageId is unknown to this credential, the upstream does not know the conversation, or it "
        "answered 404 (an unknown model)",
        **BODY_ERRORS,
        "429": "upstream rate limit, exhausted quota, or one message at a time (Retry-After passed on)",
        "502": "the upstream is unreachable, failed (5xx), answered something unexpected or too large, or was "
        "blocked by Cloudflare",
        "503": STORE_DOWN + "; or (mode 2) the issuer's keys cannot be fetched now, so a token naming the issuer "
        "cannot be checked (Retry-After)",
        "504": "the upstream did not answer in time (timeoutMs, idleTimeoutMs), or (legacy web backend) the "
        "account was busy with another message all that time and nothing was sent",
    })  # fmt: skip
    token_get = _operation(
        "getToken", "Get or refresh a ChatGPT access token (password in the URL: prefer POST)",
        {"200": _ok("the access token", _string("a bare JWT", minLength=1)), **_envelope_errors(TOKEN_ERRORS)},
        tag="tokens", parameters=[*TOKEN_QUERY, LANGUAGE], security=OPTIONAL_ACCOUNT_TOKEN,
    )  # fmt: skip
    token_post = _operation(
        "postToken", "Get or refresh a ChatGPT access token (recommended)",
        {"201": _ok("the access token", _string("a bare JWT", minLength=1)),
         **_envelope_errors({**TOKEN_ERRORS, "400": TOKEN_ERRORS["400"] + "; a body that is not an object is read "
                             "as an empty one", **FORM_BODY_ERRORS})},
        tag="tokens", parameters=[LANGUAGE], security=OPTIONAL_ACCOUNT_TOKEN,
        body=_json_body(TOKEN_REQUEST, form=TOKEN_FORM),
    )  # fmt: skip
    device_start = _operation(
        "startDeviceSignIn", "Start a device sign-in of a ChatGPT account",
        {"201": _ok("open verificationUri, enter userCode, then poll", DEVICE_START),
         **_envelope_errors({"400": "the body is not JSON, or storing accounts needs CHATGPT_SERVER_SECRET_KEY",
                             "404": "device sign-in is not enabled for the account (ChatGPT settings, security)",
                             "429": "this client address started CHATGPT_SERVER_DEVICE_SIGN_INS_PER_HOUR sign-ins "
                             "in the last hour (Retry-After says when it may start another)",
                             **FORM_BODY_ERRORS, **DEVICE_ERRORS})},
        tag="tokens", parameters=[LANGUAGE], description="For servers without a terminal: what "
        "`chatgpt-server login` does. The body, if any, is read (JSON or form) and ignored.",
        body=_json_body({"description": "ignored"}, required=False, form={"type": "object"}),
    )  # fmt: skip
    device_poll = _operation(
        "pollDeviceSignIn", "Poll a device sign-in",
        {"201": _ok("pending, or signed in and stored", DEVICE_RESULT),
         **_envelope_errors({"400": "deviceAuthId is missing or not printable ASCII of at most 512 characters, the "
                             "body is not JSON, storing accounts needs CHATGPT_SERVER_SECRET_KEY, or the issuer's "
                             "tokens do not verify or lack a refresh token",
                             "404": "unknown or expired deviceAuthId: start again",
                             **FORM_BODY_ERRORS, **DEVICE_ERRORS})},
        tag="tokens", parameters=[LANGUAGE], body=_json_body(DEVICE_POLL, form=DEVICE_POLL),
    )  # fmt: skip
    return {
        "/api/v1/gpt/getInfo": {"post": _operation(
            "getInfo", "Generate a reply", {"201": gpt_ok, "200": gpt_stream, **gpt_errors}, tag="original",
            description=STREAM_DESCRIPTION, parameters=[LANGUAGE], body=_json_body(_ref("GptRequest")),
        )},
        "/api/v1/token/getInfo": {"get": token_get, "post": token_post},
        "/api/v1/token/device": {"post": device_start},
        "/api/v1/token/device/poll": {"post": device_poll},
    }  # fmt: skip


def _openai_paths() -> dict[str, Schema]:
    page_errors = {"400": "limit, order or after is invalid"}
    response_links = {
        "GetResponse": _link("getResponse", "read it", id="$response.body#/id"),
        "DeleteResponse": _link("deleteResponse", "delete it", id="$response.body#/id"),
        "ListInputItems": _link("listInputItems", "list the items it answered", id="$response.body#/id"),
    }
    created_response = _answer("the response (stream false), stored with its items unless store is false",
                               {JSON: {"schema": _ref("Response")}})  # fmt: skip
    created_response["links"] = response_links
    response_stream = _answer("stream true: OpenAI's event sequence, one output item at a time (added, its deltas, "
                              "done, then the next: the first as it comes, a later one whole once the first is "
                              "done); response.completed is sent after the turn is stored",
                              {SSE: {"schema": RESPONSE_EVENT}})  # fmt: skip
    conversation_made = _answer("the conversation", {JSON: {"schema": _ref("Conversation")}})
    conversation_made["links"] = _conversation_links()
    items_added = _answer("the items added, with their new ids", {JSON: {"schema": _list_of(_ref("Item"))}})
    items_added["links"] = {
        "GetItem": _link("getConversationItem", "read the first", id="$request.path.id",
                         item_id="$response.body#/data/0/id"),
        "DeleteItem": _link("deleteConversationItem", "delete the first", id="$request.path.id",
                            item_id="$response.body#/data/0/id"),
    }  # fmt: skip

    def op(op_id: str, summary: str, ok: Schema, errors: dict[str, str], **kw: Any) -> Schema:
        return _operation(op_id, summary, {"200": ok, **_openai_errors({**V1_AUTH, **errors})}, tag="openai",
                          security=BEARER, **kw)  # fmt: skip

    return {
        "/v1/models": {"get": op("listModels", "The models this gateway routes", _answer(
            "the models the routes file names, then the default model", {JSON: {"schema": MODEL_LIST}}), {})},
        "/v1/models/{id}": {"get": op("retrieveModel", "A model, and the upstream that serves it", _answer(
            "the model: any name is served (by its route in the routes file, else by the default upstream)",
            {JSON: {"schema": MODEL_OBJECT}}), {"404": "a name longer than 256 characters or not printable"},
            parameters=[_path_id("id", "a model name")])},
        "/v1/chat/completions": {"post": op(
            "createChatCompletion", "OpenAI's Chat Completions, passed through (nothing is stored)",
            _answer("the completion (stream false), or server-sent chunks (stream true)",
                    {JSON: {"schema": CHAT_COMPLETION}, SSE: {"schema": CHAT_CHUNK_EVENT}}),
            {"400": "model or messages missing or invalid, stream not a boolean, the model is served by a ChatGPT "
             "account (use /v1/responses), or the upstream refused the request",
             "404": "the upstream answered 404 (an unknown model)", **BODY_ERRORS, **UPSTREAM_ERRORS},
            body=_json_body(CHAT_REQUEST), parameters=SCOPE_HEADERS,
        )},
        "/v1/responses": {"post": _operation(
            "createResponse", "OpenAI's Responses API over any upstream",
            {"200": {**created_response, "content": {**created_response["content"], **response_stream["content"]}},
             **_openai_errors({
                 "400": "a field is missing, unknown or invalid (param names it), previous_response_id and "
                 "conversation are both given, the input is over the context window (without truncation auto), "
                 "the conversation is answering another response (code conversation_locked), a "
                 "function_call_output answers no call the prompt holds before it (code no_call_to_answer) or one "
                 "answered already (call_already_answered), a call the "
                 "history ends with is left unanswered (its id named), previous_response_id is unknown to this "
                 "key (code previous_response_not_found, as OpenAI answers it), a ChatGPT account's model is "
                 "given a parameter its backend refuses (temperature, top_p, max_output_tokens: code "
                 "unsupported_parameter), or the upstream refused the request",
                 "404": "conversation or an item_reference is unknown to this key, or the upstream answered 404 (an "
                 "unknown model)",
                 **BODY_ERRORS, **UPSTREAM_ERRORS, **V1_STORE})},
            tag="openai", security=BEARER, body=_json_body(_ref("ResponseRequest")), parameters=SCOPE_HEADERS,
            description="A response is a turn: its input and output items join the conversation tree (the same "
            "tree the original route writes), and previous_response_id continues from it. instructions apply to "
            "one response only. Models served by a ChatGPT account (CHATGPT_SERVER_MODELS_FILE, upstream codex) "
            "take that account's token as the bearer key.",
        )},
        "/v1/responses/input_tokens": {"post": _operation(
            "countInputTokens", "The input tokens createResponse would send, counted here: nothing is sent",
            {"200": _answer("the count", {JSON: {"schema": INPUT_TOKENS}}), **_openai_errors({
                "400": "a field is invalid (param names it), the input is over the context window (without "
                "truncation auto), or previous_response_id is unknown to this key (code "
                "previous_response_not_found)",
                "404": "conversation or an item_reference is unknown to this key",
                **V1_AUTH, **BODY_ERRORS, **V1_STORE})},
            tag="openai", security=BEARER, body=_json_body(_ref("CountRequest"), required=False),
            description="The history (previous_response_id or conversation) is cut as createResponse would cut it; "
            "tool definitions are not counted.",
        )},
        "/v1/responses/{id}": {
            "get": op("getResponse", "A stored response", _answer("the response", {JSON: {"schema": _ref(
                "Response")}}), {**NOT_FOUND_RESPONSE, **V1_STORE, "400": "stream is not false: streaming a stored "
                "response is OpenAI's resume of a background one, which this gateway does not run"},
                parameters=[RESPONSE_ID, {"name": "stream", "in": "query", "required": False,
                                          "schema": {"enum": ["false"]}, "description": "only false"}]),
            "delete": op("deleteResponse", "Delete a stored response (its items stay for the responses that follow)",
                         _answer("deleted", {JSON: {"schema": _deleted("response")}}),
                         {**NOT_FOUND_RESPONSE, **V1_STORE}, parameters=[RESPONSE_ID]),
        },
        "/v1/responses/{id}/input_items": {"get": op(
            "listInputItems", "The items a response answered (its history and input), newest first by default",
            _answer("a page of items", {JSON: {"schema": _list_of(_ref("Item"))}}),
            {**page_errors, **NOT_FOUND_RESPONSE, **V1_STORE},
            parameters=[RESPONSE_ID, *_paging("the id of the item before the page (an id not among them gives an "
                                              "empty page)"),
                        {"name": "before", "in": "query", "required": False, "schema": {"type": "string"},
                         "description": "the id of the item after the page: the page just before it (an id "
                                        "not among them gives an empty page)"}],
        )},
        "/v1/responses/{id}/cancel": {"post": _operation(
            "cancelResponse", "Cancel a background response: never possible here (no background mode)",
            _openai_errors({"400": "only background responses can be cancelled, and background mode is not "
                            "supported", **V1_AUTH, **NOT_FOUND_RESPONSE, **V1_STORE}),
            tag="openai", security=BEARER, parameters=[RESPONSE_ID],
            description="Always an error: 404 for a response this key does not have, else 400. No body is read.",
        )},
        "/v1/conversations": {
            "get": op("listConversations", "This key's conversations, newest first (order asc for oldest first)",
                      _answer("a page of conversations", {JSON: {"schema": _list_of(_ref("Conversation"))}}),
                      {**page_errors, **V1_STORE}, parameters=_paging("the id of the conversation before the page")),
            "post": op("createConversation", "Start a conversation", conversation_made,
                       {"400": "a field is unknown or invalid (param names it), a function_call_output answers no "
                        "call before it (code no_call_to_answer) or answers one twice (call_already_answered), or "
                        "the body is not a JSON object",
                        **BODY_ERRORS, **V1_STORE}, body=_json_body(CONVERSATION_CREATE, required=False)),
        },
        "/v1/conversations/{id}": {
            "get": op("getConversation", "A conversation", _answer("the conversation", {JSON: {"schema": _ref(
                "Conversation")}}), {**NOT_FOUND_CONVERSATION, **V1_STORE}, parameters=[CONVERSATION_ID]),
            "post": op("updateConversation", "Replace a conversation's metadata", _answer(
                "the conversation", {JSON: {"schema": _ref("Conversation")}}),
                {"400": "metadata is missing or invalid, or the body is not a JSON object", **NOT_FOUND_CONVERSATION,
                 **CONFLICT, **BODY_ERRORS, **V1_STORE},
                parameters=[CONVERSATION_ID], body=_json_body(CONVERSATION_UPDATE)),
            "delete": op("deleteConversation", "Delete a conversation (its items stay for the responses that used "
                         "them)", _answer("deleted", {JSON: {"schema": _deleted("conversation.deleted")}}),
                         {**NOT_FOUND_CONVERSATION, **CONFLICT, **V1_STORE}, parameters=[CONVERSATION_ID]),
        },
        "/v1/conversations/{id}/items": {
            "get": op("listConversationItems", "A conversation's items, in the order they were added (newest first "
                      "by default): the line that ends at its last turn (a branch from an older turn is reachable "
                      "by its own id, not listed)", _answer("a page of items (none after an id that is not one "
                      "of this conversation's items)", {JSON: {"schema": _list_of(_ref("Item"))}}),
                      {"400": "limit or order is invalid",
                       **NOT_FOUND_CONVERSATION, **V1_STORE},
                      parameters=[CONVERSATION_ID, *_paging("the id of the item before the page")]),
            "post": op("addConversationItems", "Add items to a conversation", items_added,
                       {"400": "items are missing, empty or invalid (param names it), a function_call_output "
                        "answers no call of the conversation or of the items before it (code no_call_to_answer) or one "
                        "answered already (call_already_answered), "
                        "the body is not a JSON object, or the conversation is answering a response (code "
                        "conversation_locked)",
                        **NOT_FOUND_CONVERSATION, **CONFLICT, **BODY_ERRORS, **V1_STORE},
                       parameters=[CONVERSATION_ID], body=_json_body(ITEMS_ADD)),
        },
        "/v1/conversations/{id}/items/{item_id}": {
            "get": op("getConversationItem", "One item of a conversation", _answer("the item", {JSON: {"schema": _ref(
                "Item")}}), {"404": "no such conversation or item for this key", **V1_STORE},
                parameters=[CONVERSATION_ID, ITEM_ID]),
            "delete": op("deleteConversationItem", "Take an item out of a conversation and out of the history of "
                         "every later turn", _answer("the conversation", {JSON: {"schema": _ref("Conversation")}}),
                         {"404": "no such conversation or item for this key", **V1_STORE},
                         parameters=[CONVERSATION_ID, ITEM_ID]),
        },
    }  # fmt: skip


def _operational_paths() -> dict[str, Schema]:
    health = _object(
        {
            "alive": {"const": True}, "pid": _integer(1), "tasks": _integer(0, description="asyncio tasks"),
            "streams": _integer(0, description="upstream replies being read"),
            "turns": _integer(0, description="turns in flight"),
            "queues": _integer(0, description="mode-2 accounts with a queue"),
            "historyCache": _object({"entries": _integer(0), "bytes": _integer(0), "hits": _integer(0),
                                     "misses": _integer(0)}, ("entries", "bytes", "hits", "misses")),
        },
        ("alive", "pid", "tasks", "streams", "turns", "queues", "historyCache"),
    )  # fmt: skip
    ready = _object({"store": {"enum": ["sqlite", "redis", "postgresql"]}, "ready": {"const": True}},
                    ("store", "ready"))  # fmt: skip
    document = {"type": "object", "required": ["openapi", "info", "paths"],
                "properties": {"openapi": _string(pattern=r"^3\.1\.\d+$")}}  # fmt: skip
    asset = {"name": "file", "in": "path", "required": True, "schema": _string(minLength=1),
             "description": "a file of swagger-ui-bundle, e.g. swagger-ui-bundle.js or swagger-ui.css"}  # fmt: skip
    asset_answers = {
        "200": _answer("the file", {"*/*": {"schema": {}}}),
        **_envelope_errors({"404": "no such file"}),
    }

    def op(op_id: str, summary: str, responses: dict[str, Schema], **kw: Any) -> Schema:
        return _operation(op_id, summary, responses, tag="operations", **kw)

    return {
        "/healthz": {"get": op("healthz", "Liveness, with this worker's counts that show a leak",
                               {"200": _ok("alive", health)})},
        "/readyz": {"get": op("readyz", "Readiness: the conversation store answers within a second", {
            "200": _ok("ready", ready), **_envelope_errors({"503": "the conversation store is unavailable"})})},
        "/api": {"get": op("swaggerUi", "Swagger UI (its assets served locally: works offline)",
                           {"200": _answer("the page", {"text/html": {"schema": _string()}})})},
        "/api-json": {"get": op("openapiDocument", "This document", {
            "200": _answer("the OpenAPI document", {JSON: {"schema": document}})})},
        "/": {"get": op("root", "Leads to the documentation", {"302": _answer(
            "to /api", Location={"required": True, "schema": {"const": "/api"}})})},
        "/api/static/{file}": {
            "get": op("swaggerUiAsset", "Swagger UI's assets", asset_answers, parameters=[asset],
                      description="GET and HEAD only; another method is 404 (the path is not a route)."),
            "head": op("swaggerUiAssetHead", "Swagger UI's assets, headers only", asset_answers, parameters=[asset]),
        },
    }  # fmt: skip


def _with_405(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Every operation of a routed path also lists the 405 its path gives to the methods it does not serve."""
    for path, item in paths.items():
        if path.startswith("/api/static/"):
            continue
        allow = allowed(item)
        for operation in item.values():
            operation["responses"]["405"] = _method_not_allowed(allow, path.startswith("/v1/"))
            operation["responses"] = dict(sorted(operation["responses"].items()))
    return paths


@cache
def openapi_document() -> dict[str, Any]:
    paths = _with_405({**_original_paths(), **_openai_paths(), **_operational_paths()})
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatgpt-server", "version": __version__, "description": INFO_DESCRIPTION},
        "tags": [
            {"name": "original", "description": "the original's route: one reply that remembers the conversation"},
            {"name": "tokens", "description": "ChatGPT access tokens for mode 2: legacy sign-in, device sign-in"},
            {"name": "openai", "description": "OpenAI-shaped routes, for the official SDKs"},
            {"name": "operations", "description": "health, readiness and this documentation"},
        ],
        "paths": paths,
        "components": {
            "schemas": {
                "Timestamp": {"type": "integer", "minimum": 0, "description": "epoch milliseconds"},
                "ErrorEnvelope": _object(
                    {
                        "status": _integer(400, 599, "the HTTP status"),
                        "success": {"const": False},
                        "message": _string("every problem, joined by ','; Chinese, or English with "
                                           "Accept-Language: en"),
                        "data": {"type": "object", "maxProperties": 0},
                        "timestamp": _ref("Timestamp"),
                        "path": _string("the route, never the query string"),
                    },
                    ("status", "success", "message", "data", "timestamp", "path"),
                ),
                "OpenAIError": _object(
                    {"error": _object(
                        {
                            "message": _string(),
                            "type": {"enum": ["invalid_request_error", "permission_error",
                                              "rate_limit_exceeded", "insufficient_quota", "server_error"]},
                            "param": _or_null(_string("the field at fault")),
                            "code": _string(),
                        },
                        ("message", "type", "param", "code"),
                    )},
                    ("error",),
                ),
                "GptRequest": GPT_REQUEST,
                "GptOptions": GPT_OPTIONS,
                "ChatMessage": CHAT_MESSAGE,
                "TokenRequest": TOKEN_REQUEST,
                "ResponseRequest": RESPONSE_REQUEST,
                "CountRequest": COUNT_REQUEST,
                "Response": RESPONSE,
                "Item": ITEM,
                "Conversation": CONVERSATION,
            },
            "headers": {
                "X-Request-Id": {"required": True, "description": "the request's id, also in the access log",
                                 "schema": _string(pattern="^[A-Za-z0-9._:-]{1,128}$")},
                "Retry-After": {"required": False, "description": "seconds (or an HTTP date) to wait, as the "
                                "upstream said", "schema": _string()},
            },
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "the caller's key for the model's "
                               "upstream (an OpenAI API key, or a ChatGPT account's access token for models it "
                               "serves); stored responses and conversations belong to it"},
                "accountToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                 "description": "a stored ChatGPT account's access token (type 2 refresh)"},
            },
        },
    }  # fmt: skip
