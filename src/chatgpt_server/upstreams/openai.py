"""Mode 1: the OpenAI chat-completions API, one reply or a stream of chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ..errors import BadGateway, BadRequest, Forbidden, ServiceError, TooManyRequests, Unauthorized
from .http import TRANSPORT_ERRORS, Upstream, finish_response, host_of, scrub, transport_error
from .sse import SSEDecoder


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str
    key: str
    organization: str | None = None

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    @property
    def host(self) -> str:
        return host_of(self.base_url)

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        return headers


def api_error(status: int, raw: bytes, retry_after: str | None, endpoint: Endpoint) -> ServiceError:
    """An OpenAI error answer as the precise error a client sees; the key never appears in it."""
    host = endpoint.host
    message, code = "", ""
    try:
        error = orjson.loads(raw).get("error") or {}
        message = str(error.get("message") or "")
        code = str(error.get("code") or error.get("type") or "")
    except (orjson.JSONDecodeError, AttributeError):
        message = raw[:200].decode("utf-8", "replace")
    detail = scrub(message or code or f"HTTP {status}", endpoint.key)
    if status == 401:
        return Unauthorized("upstream_unauthorized", host=host, detail=code or "invalid_api_key")
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        key = "upstream_quota" if code == "insufficient_quota" else "upstream_rate_limited"
        return TooManyRequests(key, headers=headers, host=host, detail=detail)
    if status == 403:
        return Forbidden("upstream_forbidden", host=host, detail=detail)
    if 400 <= status < 500:
        return BadRequest("upstream_bad_request", host=host, detail=detail)
    return BadGateway("upstream_error", host=host, status=status, detail=detail)


def _bad_reply(endpoint: Endpoint, detail: str) -> BadGateway:
    return BadGateway("upstream_bad_reply", host=endpoint.host, detail=detail)


async def complete(up: Upstream, endpoint: Endpoint, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One chat completion; returns the upstream JSON, checked to carry a reply text."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with up.request(
            "POST", endpoint.url, data=orjson.dumps(body), headers=endpoint.headers(), timeout=timeout
        ) as resp:
            raw = await resp.read()
            status, retry_after = resp.status, resp.headers.get("Retry-After")
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, endpoint.host, timeout_s) from exc
    if status != 200:
        raise api_error(status, raw, retry_after, endpoint)
    try:
        completion = orjson.loads(raw)
        message = completion["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise _bad_reply(endpoint, "no choices[0].message in the reply") from exc
    if not isinstance(completion, dict) or not isinstance(message, dict):
        raise _bad_reply(endpoint, "the reply is not a chat completion")
    content = message.get("content")
    if content is None:
        message["content"] = message.get("refusal") or ""
    elif not isinstance(content, str):
        raise _bad_reply(endpoint, "choices[0].message.content is not text")
    return completion


@dataclass
class CompletionStream:
    """A streamed completion whose status was 200: iterate ``deltas()``, then read the totals."""

    endpoint: Endpoint
    response: aiohttp.ClientResponse
    idle_s: float
    id: str | None = None
    model: str | None = None
    created: int | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    done: bool = False
    _decoder: SSEDecoder = field(default_factory=SSEDecoder)
    _pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All the text so far (kept as pieces, joined when asked: linear in the reply)."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def complete(self) -> bool:
        return self.done

    async def deltas(self) -> AsyncIterator[str]:
        try:
            async for chunk in self.response.content.iter_any():
                for event in self._decoder.feed(chunk):
                    text = self._take(event.data)
                    if text:
                        yield text
                if self.done:
                    return
            for event in self._decoder.flush():
                text = self._take(event.data)
                if text:
                    yield text
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.endpoint.host, self.idle_s, idle=True) from exc
        if not self.done:
            raise _bad_reply(self.endpoint, "the stream ended without [DONE]")

    def _take(self, data: str) -> str:
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise _bad_reply(self.endpoint, "a stream chunk is not JSON") from exc
        if not isinstance(chunk, dict):
            raise _bad_reply(self.endpoint, "a stream chunk is not an object")
        if chunk.get("error"):
            detail = scrub(str(chunk["error"].get("message", chunk["error"])), self.endpoint.key)
            raise BadGateway("upstream_error", host=self.endpoint.host, status=200, detail=detail)
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        self.created = self.created or chunk.get("created")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                self._pieces.append(content)
                return content
        return ""

    async def aclose(self) -> None:
        finish_response(self.response, complete=self.done)


async def open_stream(
    up: Upstream, endpoint: Endpoint, body: dict[str, Any], timeout_s: float, idle_s: float
) -> CompletionStream:
    """Send a streamed request and wait for its status; errors before the first chunk raise here."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=idle_s)
    try:
        async with asyncio.timeout(timeout_s):
            response = await up.request(
                "POST", endpoint.url, data=orjson.dumps(body), headers=endpoint.headers(), timeout=timeout
            )
            if response.status != 200:
                raw = await response.read()
                response.close()
                raise api_error(response.status, raw, response.headers.get("Retry-After"), endpoint)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, endpoint.host, timeout_s) from exc
    return CompletionStream(endpoint, response, idle_s)
