"""Mode 2: the ChatGPT web backend (or a reverse proxy of it), which always answers with a stream.

We ask for the ``v1`` delta encoding, as the current web app does: each frame then carries only
the new text, so the bytes on the wire grow linearly with the reply, where the classic form resends
the whole text in every frame. The parser reads both forms, since proxies may still send classic.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..errors import BadGateway, BadRequest, Forbidden, NotFound, ServiceError, TooManyRequests, Unauthorized
from .http import TRANSPORT_ERRORS, Upstream, finish_response, host_of, scrub, transport_error
from .sse import SSEDecoder
from .web_reply import WebReplyError, WebReplyParser


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (we only read ``exp`` and the email); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def expiry(token: str) -> float | None:
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) else None


def account_of(token: str) -> str | None:
    claims = jwt_claims(token) or {}
    profile = claims.get("https://api.openai.com/profile")
    email = profile.get("email") if isinstance(profile, dict) else None
    return email if isinstance(email, str) else None


def conversation_body(
    question: str, message_id: str, parent_id: str, conversation_id: str | None, model: str
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "next",
        "messages": [
            {
                "id": message_id,
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": [question]},
            }
        ],
        "model": model,
        "parent_message_id": parent_id,
        "supported_encodings": ["v1"],
    }
    if conversation_id:
        body["conversation_id"] = conversation_id
    return body


def new_id() -> str:
    return str(uuid.uuid4())


def web_error(status: int, raw: bytes, content_type: str, host: str, token: str, conv: str | None) -> ServiceError:
    text = raw[:2000].decode("utf-8", "replace")
    detail = text
    try:
        parsed = orjson.loads(raw)
        if isinstance(parsed, dict):
            inner = parsed.get("detail") or parsed.get("error") or parsed.get("message") or parsed
            detail = inner.get("message", str(inner)) if isinstance(inner, dict) else str(inner)
    except orjson.JSONDecodeError:
        pass
    detail = scrub(detail, token)
    if status == 401:
        return Unauthorized("upstream_unauthorized", host=host, detail="access token rejected")
    if status == 403 and ("html" in content_type or "<html" in text.lower()):
        return BadGateway("cloudflare_blocked", host=host)
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


@dataclass
class WebStream:
    """A reply stream whose status was 200: iterate ``deltas()``; ``parser`` holds ids and text."""

    host: str
    response: aiohttp.ClientResponse
    idle_s: float
    parser: WebReplyParser = field(default_factory=WebReplyParser)
    _decoder: SSEDecoder = field(default_factory=SSEDecoder)

    async def deltas(self) -> AsyncIterator[str]:
        """Yield text as it arrives. A stream cut before any text raises 502; after text, it just ends
        with ``complete`` false, so the caller can keep what arrived."""
        try:
            async for chunk in self.response.content.iter_any():
                for event in self._decoder.feed(chunk):
                    added = self.parser.feed(event)
                    if added:
                        yield added
                if self.parser.done:
                    return
            for event in self._decoder.flush():
                added = self.parser.feed(event)
                if added:
                    yield added
        except WebReplyError as exc:
            if self.parser.text:
                return
            raise BadGateway("upstream_bad_reply", host=self.host, detail=scrub(str(exc))) from exc
        except TRANSPORT_ERRORS as exc:
            if self.parser.text:
                return
            if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
                raise BadGateway("stream_cut", host=self.host) from exc
            raise transport_error(exc, self.host, self.idle_s, idle=True) from exc
        if not self.parser.text:
            raise BadGateway("stream_cut", host=self.host)

    @property
    def complete(self) -> bool:
        return self.parser.done

    @property
    def text(self) -> str:
        return self.parser.text

    async def aclose(self) -> None:
        finish_response(self.response, complete=self.parser.done)


async def open_conversation(
    up: Upstream,
    url: str,
    token: str,
    body: dict[str, Any],
    extra_headers: dict[str, str],
    timeout_s: float,
    idle_s: float,
) -> WebStream:
    """Send the conversation request; errors before the stream starts raise here."""
    host = host_of(url)
    exp = expiry(token)
    if exp is not None and exp <= time.time():
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        raise Unauthorized("token_expired", when=when)
    headers = {
        **extra_headers,
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "Content-Type": "application/json",
    }
    timeout = aiohttp.ClientTimeout(total=None, sock_read=idle_s)
    try:
        async with asyncio.timeout(timeout_s):
            response = await up.request("POST", url, data=orjson.dumps(body), headers=headers, timeout=timeout)
            content_type = response.headers.get("Content-Type", "")
            if response.status != 200 or "event-stream" not in content_type:
                raw = await response.read()
                response.close()
                if response.status == 200:
                    raise BadGateway("upstream_bad_reply", host=host, detail=f"content type {content_type!r}")
                conv = body.get("conversation_id")
                raise web_error(response.status, raw, content_type, host, token, conv)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, host, timeout_s) from exc
    return WebStream(host, response, idle_s)
