"""Stateless pass-through of a chat-completions request (``/v1/chat/completions``), with the same
limits a turn has: the overall deadline, the idle limit between chunks, the size cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ..errors import GatewayTimeout
from ..upstreams.base import Target
from ..upstreams.chat_completions import ChunkParser, Relay
from .activity import current_log


async def relay_whole(
    relay: Relay, body: bytes, target: Target, timeout_s: float
) -> tuple[bytes, dict[str, Any] | None]:
    log = current_log()
    log.upstream = target.host
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await relay.open(body, target)
            return await relay.whole(response, target)
    except TimeoutError as exc:
        raise GatewayTimeout("upstream_timeout", host=target.host, seconds=round(timeout_s, 3)) from exc
    finally:
        log.upstream_ms += (time.perf_counter() - started) * 1000


async def relay_stream(relay: Relay, body: bytes, target: Target, timeout_s: float, idle_s: float,
                       parser: ChunkParser) -> AsyncGenerator[str, None]:  # fmt: skip
    """Opens the upstream before returning, so failures up to the first byte (and a whole answer that
    is not a good one) raise here."""
    log = current_log()
    log.upstream = target.host
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            response = await relay.open(body, target)
            ready = await relay.whole_as_chunks(response, target)
    except TimeoutError as exc:
        raise GatewayTimeout("upstream_timeout", host=target.host, seconds=round(timeout_s, 3)) from exc
    return _paced(relay.chunks(response, target, parser, ready), deadline, idle_s, target.host, timeout_s)


async def _paced(source: AsyncIterator[str], deadline: float, idle_s: float, host: str,
                 timeout_s: float) -> AsyncGenerator[str, None]:  # fmt: skip
    loop = asyncio.get_running_loop()
    await_next = source.__aiter__().__anext__
    while True:
        now = loop.time()
        idle = now + idle_s < deadline
        try:
            async with asyncio.timeout_at(min(deadline, now + idle_s)):
                data = await await_next()
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            key = "upstream_idle_timeout" if idle else "upstream_timeout"
            raise GatewayTimeout(key, host=host, seconds=round(idle_s if idle else timeout_s, 3)) from exc
        yield data
