"""Request validation: every problem is collected, then reported at once (as the original did)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..conversation.models import ChatRequest
from ..errors import BadRequest, ValidationFailed
from ..settings import Settings, normalise_base_url

Problems = list[tuple[str, dict[str, Any]]]

# opts.opts options and the mode they apply to ("" = both).
OPTIONS: dict[str, str] = {
    "systemMessage": "1",
    "completionParams": "1",
    "maxModelTokens": "1",
    "maxResponseTokens": "1",
    "apiBaseUrl": "1",
    "apiOrg": "1",
    "apiReverseProxyUrl": "2",
    "headers": "2",
    "model": "",
    "timeoutMs": "",
    "idleTimeoutMs": "",
    "debug": "",  # accepted and ignored, as a client of the original may send it
}
RESERVED_PARAMS = ("messages", "stream", "stream_options")
RESERVED_HEADERS = ("authorization", "host", "content-length", "transfer-encoding")


def _code(value: Any, valid: tuple[str, ...]) -> str | None:
    """ "1" and 1 alike; None when missing or empty; "" when present but not valid."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value.strip() in valid:
        return value.strip()
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


def _positive_int(options: dict[str, Any], name: str, problems: Problems) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(("field_not_positive_int", {"field": f"opts.opts.{name}"}))
        return None
    return value


def _allowed_url(options: dict[str, Any], name: str, default: str, settings: Settings, problems: Problems) -> str:
    value = options.get(name)
    if value is None:
        return default
    field = f"opts.opts.{name}"
    try:
        url = normalise_base_url(value) if isinstance(value, str) else None
    except ValueError:
        url = None
    if url is None:
        problems.append(("upstream_url_invalid", {"field": field}))
    elif not settings.is_allowed(url, default):
        problems.append(("upstream_not_allowed", {"field": field, "url": url}))
    else:
        return url
    return default


def _headers(options: dict[str, Any], problems: Problems) -> dict[str, str]:
    value = options.get("headers")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        problems.append(("headers_invalid", {}))
        return {}
    for name in value:
        if name.lower() in RESERVED_HEADERS:
            problems.append(("header_reserved", {"name": name}))
    return dict(value)


def _options(mode: str | None, raw: Any, settings: Settings, problems: Problems) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(("field_not_object", {"field": "opts.opts"}))
        return {}
    for name in raw:
        if name not in OPTIONS:
            problems.append(("option_unknown", {"name": name}))
        elif mode and OPTIONS[name] and OPTIONS[name] != mode and raw[name] is not None:
            problems.append(("option_wrong_mode", {"name": name, "mode": OPTIONS[name]}))
    out: dict[str, Any] = {}
    system = raw.get("systemMessage")
    if system is not None and not isinstance(system, str):
        problems.append(("field_not_string", {"field": "opts.opts.systemMessage"}))
    out["system_message"] = system if isinstance(system, str) else None
    params = raw.get("completionParams") or {}
    if not isinstance(params, dict):
        problems.append(("field_not_object", {"field": "opts.opts.completionParams"}))
        params = {}
    for name in RESERVED_PARAMS:
        if name in params:
            problems.append(("completion_param_reserved", {"name": name}))
    out["completion_params"] = params
    for name in ("model", "apiOrg"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            problems.append(("field_not_string", {"field": f"opts.opts.{name}"}))
    out["model"] = raw.get("model") if isinstance(raw.get("model"), str) else None
    out["organization"] = raw.get("apiOrg") if isinstance(raw.get("apiOrg"), str) else None
    model_tokens = _positive_int(raw, "maxModelTokens", problems)
    response_tokens = _positive_int(raw, "maxResponseTokens", problems)
    timeout_ms = _positive_int(raw, "timeoutMs", problems)
    idle_ms = _positive_int(raw, "idleTimeoutMs", problems)
    out["max_model_tokens"] = model_tokens or settings.max_model_tokens
    out["max_response_tokens"] = response_tokens or settings.max_response_tokens
    out["timeout_s"] = (timeout_ms or settings.timeout_ms) / 1000
    out["idle_timeout_s"] = (idle_ms or settings.idle_timeout_ms) / 1000
    out["base_url"] = _allowed_url(raw, "apiBaseUrl", settings.openai_base_url, settings, problems)
    out["conversation_url"] = _allowed_url(raw, "apiReverseProxyUrl", settings.chatgpt_url, settings, problems)
    out["headers"] = _headers(raw, problems)
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


def parse_token(values: dict[str, Any]) -> TokenQuery:
    problems: Problems = []
    kind = _code(values.get("type"), ("1", "2"))
    if not kind:
        problems.append(("token_type_invalid", {}))
    email, password = values.get("email"), values.get("password")
    if not isinstance(email, str) or not email.strip():
        problems.append(("email_required", {}))
    if not isinstance(password, str) or not password:
        problems.append(("password_required", {}))
    if problems:
        raise ValidationFailed(problems)
    assert isinstance(email, str) and isinstance(password, str)
    return TokenQuery(refresh=kind == "2", email=email.strip(), password=password)
