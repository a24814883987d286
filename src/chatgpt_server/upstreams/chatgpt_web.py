"""The ChatGPT web backend (upstreams.md §2; legacy), or a reverse proxy of it, which always streams.

chatgpt.com itself now refuses this request without browser-side challenge tokens (403 "Unusual
activity"): it reaches the real service only through a reverse proxy that solves them. The history
lives upstream: a follow-up names the backend's own conversation and message ids, which we keep in
the reply item's ``meta``.

We ask for the ``v1`` delta encoding, as the current web app does: each frame then carries only the
new text, so the bytes on the wire grow linearly with the reply. The parser reads both forms.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import BadGateway, BadRequest, Forbidden, NotFound, ServiceError, TooManyRequests, Unauthorized
from .base import Event, Prompt, Reply, Target, ToolCall
from .http import (
    STREAM_CUT,
    TRANSPORT_ERRORS,
    Answer,
    HTTPClient,
    finish_response,
    post,
    read_error,
    retry_after,
    scrub,
    transport_error,
    under_limit,
)
from .sse import SSEDecoder
from .web_reply import WebReplyParser


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (only for ``exp``); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16384:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def expiry(token: str) -> float | None:
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def check_not_expired(token: str) -> None:
    exp = expiry(token)
    if exp is not None and exp <= time.time():
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(max(exp, 0), 253402300799)))
        raise Unauthorized("token_expired", when=when)


def conversation_body(prompt: Prompt, message_id: str, parent_id: str) -> dict[str, Any]:
    question = prompt.inputs[-1].text if prompt.inputs else ""
    body: dict[str, Any] = {
        "action": "next",
        "messages": [
            {"id": message_id, "author": {"role": "user"}, "content": {"content_type": "text", "parts": [question]}}
        ],
        "model": prompt.model,
        "parent_message_id": parent_id,
        "supported_encodings": ["v1"],
    }
    if prompt.web_parent:
        body["conversation_id"] = prompt.web_parent[0]
    return body


def web_error(status: int, raw: bytes, content_type: str, host: str, token: str, conv: str | None) -> ServiceError:
    text = raw.decode("utf-8", "replace")  # scrub cuts it, never inside a credential
    detail: Any = text
    try:
        parsed = orjson.loads(raw)
        if isinstance(parsed, dict):
            inner = parsed.get("detail") or parsed.get("error") or parsed.get("message") or parsed
            detail = inner.get("message") or inner if isinstance(inner, dict) else inner
    except orjson.JSONDecodeError:
        pass
    detail = scrub(detail, token)
    if status == 401:
        return Unauthorized("upstream_unauthorized", host=host, detail="access token rejected")
    if status == 403 and ("html" in content_type or "<html" in text.lower()):
        return BadGateway("cloudflare_blocked", host=host)
    if status == 403 and "unusual activity" in detail.lower():
        return Forbidden("web_challenge", host=host)
    if status == 403:
        return Forbidden("upstream_forbidden", host=host, detail=detail)
    if status == 429:
        if "one message" in detail.lower():
            return TooManyRequests("one_message_at_a_time", host=host)
        return TooManyRequests("upstream_rate_limited", host=host, detail=detail)
    if status == 404:
        return NotFound("conversation_not_found", host=host, id=conv or "(new)")
    if 400 <= status < 500:
        return BadRequest("upstream_bad_request", host=host, detail=detail)
    return BadGateway("upstream_error", host=host, status=status, detail=detail)


class WebReply(Reply):
    """A reply stream whose status was 200; ``parser`` holds the backend's ids and the text."""

    def __init__(self, host: str, response: Answer, limit: int, token: str = ""):
        self.host = host
        self.response = response
        self.limit = limit
        self.parser = WebReplyParser(host=host, secret=token)

    @property
    def text(self) -> str:
        return self.parser.text

    @property
    def complete(self) -> bool:
        return self.parser.done and not self.parser.handed_off

    @property
    def usage(self) -> dict[str, Any] | None:
        return None

    @property
    def upstream_id(self) -> str | None:
        return self.parser.message_id

    @property
    def model(self) -> str | None:
        return None

    @property
    def finish_reason(self) -> str | None:
        return "stop" if self.complete else None

    @property
    def meta(self) -> dict[str, Any]:
        parser = self.parser
        if parser.conversation_id and parser.message_id:
            return {"web": [parser.conversation_id, parser.message_id]}
        return {}

    @property
    def tool_calls(self) -> list[ToolCall]:
        return []

    async def events(self) -> AsyncIterator[Event]:
        """Text as it arrives. A connection cut before any text raises 502; after text, it just ends
        with ``complete`` false, so the caller keeps what arrived. A frame that cannot be read, or that
        reports an error, raises ``BadGateway("upstream_bad_reply")`` whenever it comes (the caller
        keeps the text that arrived before it, as incomplete)."""
        decoder = SSEDecoder()
        try:
            async for chunk in self.response.content.iter_any():
                self.received += len(chunk)
                over = self.received > self.limit
                for event in decoder.feed(under_limit(chunk, self.received, self.limit) if over else chunk):
                    added = self.parser.feed(event)
                    yield Event(added)
                if self.parser.done:
                    break
                if over:  # cut at the cap: what arrived before it stands
                    self.truncated = True
                    return
            else:
                for event in decoder.flush():
                    yield Event(self.parser.feed(event))
        except TRANSPORT_ERRORS as exc:
            if self.parser.text:
                return
            if isinstance(exc, STREAM_CUT):
                raise BadGateway("stream_cut", host=self.host) from exc
            raise transport_error(exc, self.host, 0, idle=True) from exc
        if not self.parser.text:
            raise BadGateway("stream_cut", host=self.host)
        if self.parser.done and not self.meta:
            raise BadGateway("upstream_bad_reply", host=self.host, detail="no conversation_id or message id")

    async def aclose(self) -> None:
        finish_response(self.response, complete=self.parser.done)


class ChatGPTWeb:
    """The upstream: POST <conversation URL> with an access token."""

    name = "web"

    def __init__(self, http: HTTPClient, max_reply_bytes: int):
        self.http = http
        self.limit = max_reply_bytes

    async def open(self, prompt: Prompt, target: Target) -> Reply:
        host = target.host
        check_not_expired(target.credential)
        message_id = prompt.inputs[-1].id
        parent = prompt.web_parent[1] if prompt.web_parent else _fresh_id()
        body = conversation_body(prompt, message_id, parent)
        headers = {
            **dict(target.headers),
            "Authorization": f"Bearer {target.credential}",
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        response = await post(self.http, target.url, orjson.dumps(body), headers, host)
        try:
            content_type = response.headers.get("Content-Type", "")
            if response.status != 200 or "event-stream" not in content_type:
                raw = await read_error(response)
                if response.status == 200:
                    detail = f"content type {scrub(content_type, limit=60)!r}"
                    raise BadGateway("upstream_bad_reply", host=host, detail=detail)
                error = web_error(response.status, raw, content_type, host, target.credential, body.get(
                    "conversation_id"))  # fmt: skip
                if isinstance(error, TooManyRequests):
                    error.headers = retry_after(response.headers.get("Retry-After")) or {}
                raise error
        except BaseException as exc:
            response.release()
            if isinstance(exc, TRANSPORT_ERRORS):
                raise transport_error(exc, host, 0) from exc
            raise
        return WebReply(host, response, self.limit, target.credential)


def _fresh_id() -> str:
    import uuid

    return str(uuid.uuid4())
