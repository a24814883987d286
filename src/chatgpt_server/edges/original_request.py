"""Validation of the original's routes: every problem is collected, then reported at once (as the
original did), and the body becomes a typed request."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest, ValidationFailed
from ..settings import JS_SPACE, Settings, normalise_base_url

Problems = list[tuple[str, dict[str, Any]]]

# opts.opts options and the mode they apply to ("" = both).
OPTIONS: dict[str, str] = {
    "systemMessage": "",
    "completionParams": "1",
    "maxModelTokens": "",  # mode 2 too: the Codex backend gets the history from our store
    "maxResponseTokens": "",
    "apiBaseUrl": "1",
    "apiOrg": "1",
    "apiReverseProxyUrl": "2",
    "headers": "2",
    "model": "",
    "timeoutMs": "",
    "idleTimeoutMs": "",
    "deltaOnly": "",
    "debug": "",  # accepted and ignored, as a client of the original may send it
}
# The documented ranges of the numeric options.
RANGES: dict[str, int] = {
    "maxModelTokens": 10_000_000,
    "maxResponseTokens": 1_000_000,
    "timeoutMs": 3_600_000,
    "idleTimeoutMs": 3_600_000,
}
RESERVED_PARAMS = ("messages", "stream", "stream_options")
# Headers a client may not set on the upstream request: the credential and the host are ours, and
# connection-level headers would let a client reshape the request itself.
RESERVED_HEADERS = frozenset(
    ("authorization", "host", "connection", "upgrade", "te", "expect", "transfer-encoding", "content-length",
     "keep-alive", "cookie", "trailer", "content-type", "accept", "chatgpt-account-id", "content-encoding",
     "accept-encoding", "cookie2",
     # who the request comes from is the gateway's to say: a client's claim would reach the upstream as
     # ours (every X-Forwarded-* too, below, and what CDNs and proxies write for the client's address)
     "forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip", "cf-connecting-ipv6", "x-client-ip",
     "x-cluster-client-ip", "fastly-client-ip", "x-originating-ip", "x-remote-ip", "x-remote-addr", "client-ip",
     "x-azure-clientip", "x-appengine-user-ip", "x-envoy-external-address", "via", "x-forwarded", "forwarded-for",
     "x-proxyuser-ip", "wl-proxy-client-ip", "max-forwards",
     # which host, path and method the request is for is the gateway's too (proxies and frameworks honour these)
     "x-host", "x-original-host", "x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method",
     "x-method-override")
)  # fmt: skip
# Prefixes of header names that belong to the gateway, the connection, or the proxies between.
RESERVED_PREFIXES = ("proxy-", "sec-", "x-forwarded-", "x-original-forwarded")
MAX_HEADERS, MAX_HEADER_NAME, MAX_HEADER_VALUE, MAX_HEADER_TOTAL = 32, 64, 4096, 16384
# A numeric option written as a string, as the original took it: digits only, within every option's range.
DIGITS = re.compile(r"^0*[1-9][0-9]{0,7}$")  # up to the largest range (10,000,000), which is checked after
MAX_KEY = 16384  # an API key or access token, on every door (the longest real ones are a few kB)
MAX_MODEL = 256  # a model name, or an organization id (as /v1 bounds model names)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 header name (fullmatch: no newline)


def header_safe(value: str) -> bool:
    """Printable ASCII only (0x20-0x7E): what may become (part of) an outgoing header value."""
    return value.isascii() and value.isprintable()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    mode: str  # "1": OpenAI API key; "2": ChatGPT access token
    key: str
    content: str
    is_follow: bool = False
    parent_message_id: str | None = None
    stream: bool = False
    system_message: str | None = None
    completion_params: dict[str, Any] = field(default_factory=dict)
    max_model_tokens: int = 4000
    max_response_tokens: int = 1000
    model_tokens_given: bool = False  # without it, mode 2's budget is the model's context window
    response_tokens_given: bool = False
    base_url: str = ""
    organization: str | None = None
    model: str | None = None
    conversation_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    delta_only: bool = False


def _code(value: Any, valid: tuple[str, ...]) -> str | None:
    """None when missing or empty; "" when present but not valid. A string only: the original refused
    the number 1 (contract.md), and a client that sends one learns it here as it did there."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip(JS_SPACE) in valid:
        return value.strip(JS_SPACE)
    return ""


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    return None


def _text(opts: dict[str, Any], name: str, problems: Problems) -> str:
    value = opts.get(name)
    if value is None or value == "":
        problems.append(("field_required", {"field": f"opts.{name}"}))
    elif not isinstance(value, str):
        problems.append(("field_not_string", {"field": f"opts.{name}"}))
    else:
        return value
    return ""


def _bounded_int(options: dict[str, Any], name: str, problems: Problems) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    field_name = f"opts.opts.{name}"
    if isinstance(value, str) and DIGITS.fullmatch(value):  # "8000": the original's JavaScript coerced it
        value = int(value)
    if isinstance(value, float) and value.is_integer():  # 2.0 (and 1e30) are integers in JSON
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(("field_not_positive_int", {"field": field_name}))
        return None
    if value > RANGES[name]:
        problems.append(("field_too_large", {"field": field_name, "max": RANGES[name]}))
        return None
    return value


def _allowed_url(options: dict[str, Any], name: str, default: str, settings: Settings, problems: Problems,
                 also: tuple[str, ...] = ()) -> str:  # fmt: skip
    value = options.get(name)
    if value is None:
        return default
    field_name = f"opts.opts.{name}"
    try:
        url = normalise_base_url(value) if isinstance(value, str) else None
    except ValueError:
        url = None
    if url is None:
        problems.append(("upstream_url_invalid", {"field": field_name}))
    elif not settings.is_allowed(url, default) and url not in also:
        problems.append(("upstream_not_allowed", {"field": field_name, "url": url}))
    else:
        return url
    return default


def check_headers(value: Any, problems: Problems, field_name: str = "opts.opts.headers") -> dict[str, str]:
    """Extra upstream headers: names that are header tokens, printable values, bounded sizes, and
    none of the headers that belong to the gateway or to the connection."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        problems.append(("headers_invalid", {}))
        return {}
    if len(value) > MAX_HEADERS:
        problems.append(("headers_too_many", {"max": MAX_HEADERS}))
        return {}
    total = 0
    for name, text in value.items():
        shown = name[:MAX_HEADER_NAME]  # escaped where the message is rendered
        bare = name.strip().lower().replace("_", "-")  # many servers read X_Forwarded_For as X-Forwarded-For
        total += len(name) + len(text)
        if bare in RESERVED_HEADERS or bare.startswith(RESERVED_PREFIXES):
            problems.append(("header_reserved", {"name": shown}))
        elif not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            problems.append(("header_name_invalid", {"name": shown}))
        elif not header_safe(text) or len(text) > MAX_HEADER_VALUE:
            problems.append(("header_value_invalid", {"name": shown}))
    if total > MAX_HEADER_TOTAL:
        problems.append(("headers_too_large", {"max": MAX_HEADER_TOTAL}))
    return dict(value)


def _applies(name: Any, mode: str | None) -> bool:
    """An option this gateway reads in ``mode`` (every known one while the mode is not known)."""
    return name in OPTIONS and (not mode or OPTIONS[name] in ("", mode))


def _options(mode: str | None, raw: Any, settings: Settings, problems: Problems) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(("field_not_object", {"field": "opts.opts"}))
        return {}
    # The original merged opts.opts into its client, which used what it knew: an unknown option, or one
    # of the other mode, changed nothing, and a client of it may send them. They are ignored here too,
    # unchecked (an apiBaseUrl in mode 2 reaches nothing).
    raw = {name: value for name, value in raw.items() if _applies(name, mode)}
    out: dict[str, Any] = {}
    system = raw.get("systemMessage")
    if system is not None and not isinstance(system, str):
        problems.append(("field_not_string", {"field": "opts.opts.systemMessage"}))
    out["system_message"] = system if isinstance(system, str) else None
    params = raw.get("completionParams")
    params = {} if params is None else params
    if not isinstance(params, dict):
        problems.append(("field_not_object", {"field": "opts.opts.completionParams"}))
        params = {}
    for name in RESERVED_PARAMS:
        if name in params:
            problems.append(("completion_param_reserved", {"name": name}))
    if "model" in params and not isinstance(params["model"], str):
        problems.append(("field_not_string", {"field": "opts.opts.completionParams.model"}))
    elif isinstance(params.get("model"), str) and len(params["model"]) > MAX_MODEL:
        problems.append(("field_too_long", {"field": "opts.opts.completionParams.model", "max": MAX_MODEL}))
    out["completion_params"] = params
    for name in ("model", "apiOrg"):
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(("field_not_string", {"field": f"opts.opts.{name}"}))
        elif isinstance(value, str) and not header_safe(value):
            problems.append(("field_not_header_safe", {"field": f"opts.opts.{name}"}))
        elif isinstance(value, str) and len(value) > MAX_MODEL:
            problems.append(("field_too_long", {"field": f"opts.opts.{name}", "max": MAX_MODEL}))
    out["model"] = raw.get("model") if isinstance(raw.get("model"), str) else None
    out["organization"] = raw.get("apiOrg") if isinstance(raw.get("apiOrg"), str) else None
    model_tokens = _bounded_int(raw, "maxModelTokens", problems)
    response_tokens = _bounded_int(raw, "maxResponseTokens", problems)
    timeout_ms = _bounded_int(raw, "timeoutMs", problems)
    idle_ms = _bounded_int(raw, "idleTimeoutMs", problems)
    out["max_model_tokens"] = model_tokens or settings.max_model_tokens
    out["model_tokens_given"] = bool(model_tokens)
    out["response_tokens_given"] = bool(response_tokens)
    out["max_response_tokens"] = response_tokens or settings.max_response_tokens
    # In mode 2 without maxModelTokens the budget is the model's window (edges/original.py), not this default.
    if out["max_response_tokens"] >= out["max_model_tokens"] and (model_tokens or (response_tokens and mode != "2")):
        problems.append(("response_tokens_too_large", {}))
    out["timeout_s"] = (timeout_ms or settings.timeout_ms) / 1000
    out["idle_timeout_s"] = (idle_ms or settings.idle_timeout_ms) / 1000
    out["base_url"] = _allowed_url(raw, "apiBaseUrl", settings.openai_base_url, settings, problems)
    # The Codex backend is named by its own URL too (the default URL is then sent there: edges/original.py).
    codex = (settings.codex_url,) if settings.chatgpt_backend == "codex" else ()
    out["conversation_url"] = _allowed_url(raw, "apiReverseProxyUrl", settings.chatgpt_url, settings, problems, codex)
    out["headers"] = check_headers(raw.get("headers"), problems)
    delta_only = raw.get("deltaOnly")
    if delta_only is not None and not isinstance(delta_only, bool):
        problems.append(("field_not_bool", {"field": "opts.opts.deltaOnly"}))
    out["delta_only"] = delta_only is True
    return out


def parse_chat(body: Any, settings: Settings) -> ChatRequest:
    """The body of POST /api/v1/gpt/getInfo as a typed request, or every problem with it."""
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    problems: Problems = []
    mode = _code(body.get("mode"), ("1", "2"))
    if mode is None:
        problems += [("mode_invalid", {}), ("mode_required", {})]
    elif not mode:
        problems.append(("mode_invalid", {}))
    kind = _code(body.get("type"), ("1", "2"))
    if kind is None:
        problems += [("type_missing_invalid", {}), ("type_required", {})]
    elif not kind:
        problems.append(("type_invalid", {}))
    opts = body.get("opts")
    if opts is None:
        problems.append(("opts_required", {}))
        raise ValidationFailed(problems)
    if not isinstance(opts, dict):
        problems.append(("opts_not_object", {}))
        raise ValidationFailed(problems)
    key = _text(opts, "key", problems)
    if len(key) > MAX_KEY:
        problems.append(("field_too_long", {"field": "opts.key", "max": MAX_KEY}))
    elif key and not header_safe(key):
        problems.append(("field_not_header_safe", {"field": "opts.key"}))
    content = _text(opts, "content", problems)
    follow = _flag(opts.get("isFollow"))
    if opts.get("isFollow") is None:
        problems.append(("field_required", {"field": "opts.isFollow"}))
    elif follow is None:
        problems.append(("field_not_bool", {"field": "opts.isFollow"}))
    parent = opts.get("parentMessageId")
    if parent is not None and not isinstance(parent, str):
        problems.append(("field_not_string", {"field": "opts.parentMessageId"}))
        parent = None
    if isinstance(parent, str) and len(parent) > 256:
        problems.append(("field_too_long", {"field": "opts.parentMessageId", "max": 256}))
    if follow and not parent:
        problems.append(("parent_required", {}))
    options = _options(mode or None, opts.get("opts"), settings, problems)
    if problems:
        raise ValidationFailed(problems)
    assert mode and kind
    return ChatRequest(
        mode=mode,
        key=key,
        content=content,
        is_follow=bool(follow),
        parent_message_id=parent if follow else None,
        stream=kind == "2",
        **options,
    )


@dataclass(frozen=True, slots=True)
class TokenQuery:
    refresh: bool
    email: str
    password: str


def _short_text(value: Any, name: str, limit: int, problems: Problems) -> None:
    """A value that goes into a header or a form: each way it can be wrong, said as such."""
    if not isinstance(value, str):
        problems.append(("field_not_string", {"field": name}))
    elif len(value) > limit:
        problems.append(("field_too_long", {"field": name, "max": limit}))
    elif not header_safe(value.strip(JS_SPACE) if name == "email" else value):  # an email is read stripped
        problems.append(("field_not_header_safe", {"field": name}))


def device_id(values: Any) -> str:
    """The ``deviceAuthId`` of a device sign-in poll."""
    device = values.get("deviceAuthId") if isinstance(values, dict) else None
    problems: Problems = []
    if device is None or device == "":
        problems.append(("field_required", {"field": "deviceAuthId"}))
    else:
        _short_text(device, "deviceAuthId", 512, problems)
    if problems:
        raise ValidationFailed(problems)
    assert isinstance(device, str)
    return device


def parse_token(values: dict[str, Any]) -> TokenQuery:
    problems: Problems = []
    kind = _code(values.get("type"), ("1", "2"))
    if not kind:
        problems.append(("token_type_invalid", {}))
    email, password = values.get("email"), values.get("password")
    if email is None or (isinstance(email, str) and not email.strip(JS_SPACE)):
        problems.append(("email_required", {}))
    else:
        _short_text(email, "email", 320, problems)
    if password is None or password == "":
        problems.append(("password_required", {}))
    elif not isinstance(password, str):
        problems.append(("field_not_string", {"field": "password"}))
    elif len(password) > 1024:
        problems.append(("field_too_long", {"field": "password", "max": 1024}))
    if problems:
        raise ValidationFailed(problems)
    assert isinstance(email, str) and isinstance(password, str)
    return TokenQuery(refresh=kind == "2", email=email.strip(JS_SPACE), password=password)
