"""OpenAI's Chat Completions API, stateless: ``POST /v1/chat/completions`` and ``GET /v1/models``.

The request goes to the upstream that serves its model, as the client wrote it, with the caller's key;
the answer comes back once the same parsers as every other turn have read it (so nothing malformed or
oversized passes), and its usage goes to the access log. Nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ..core.activity import current_log
from ..core.relay import relay_stream, relay_whole
from ..errors import BadRequest, NotFound, ServiceError
from ..redact import masked_runs, may_hold_run
from ..upstreams.chat_completions import ChunkParser
from ..upstreams.http import masking
from .envelope import log_stream_failure, openai_error_body
from .http import JSONBody, read_json
from .openai_items import invalid
from .sse import EventStream
from .v1 import api_key, model_name, owner_of, scoped_target

if TYPE_CHECKING:
    from ..app import Services


def _usage_note(usage: dict[str, Any] | None) -> str:
    if not usage:
        return ""
    return f"usage prompt={usage.get('prompt_tokens', '?')} completion={usage.get('completion_tokens', '?')}"


async def create(request: Request, services: Services) -> ASGIApp:
    log = current_log()
    log.stoppable()  # it writes nothing: a client that leaves, or the shutdown, may stop it anywhere
    key = api_key(request)
    body = await read_json(request, services.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    model = model_name(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("missing_param", param="messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "expected a list of at least one message")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", "expected true or false")
    route = services.models.route(model)
    if route.upstream != "chat":
        raise BadRequest("model_not_chat", model=model[:256])
    target = scoped_target(request, route.base_url, key)
    settings = services.settings
    if stream:
        log.route = "chat.completions stream"
        options = body.get("stream_options")
        # Usage is asked for, for the access log; a client that did not ask does not get it.
        added = not isinstance(options, dict) or "include_usage" not in options
        if added:
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        parser = ChunkParser(target.host, key)
        chunks = await relay_stream(services.relay, orjson.dumps(body), target, settings.timeout_ms / 1000,
                                    settings.idle_timeout_ms / 1000, parser)  # fmt: skip

        async def on_leave() -> None:
            await chunks.aclose()  # closes the upstream response: the upstream stops writing

        return EventStream(_events(chunks, parser, added, key), settings.heartbeat_seconds, on_leave,
                           stall_s=settings.idle_timeout_ms / 1000)  # fmt: skip
    log.route = "chat.completions"
    raw, usage = await relay_whole(services.relay, orjson.dumps(body), target, settings.timeout_ms / 1000)
    log.outcome = _usage_note(usage)
    # Passed on as written, but never with the caller's key in it (an upstream that echoes it as an id).
    return Response(_masked(raw, key), media_type="application/json")


async def _events(chunks: AsyncIterator[str], parser: ChunkParser, usage_added: bool,
                  key: str) -> AsyncIterator[bytes]:  # fmt: skip
    log = current_log()
    try:
        async for data in chunks:
            if usage_added and parser.usage_only:
                continue
            if parser.done:  # as OpenAI writes it, however the upstream padded it
                break
            if "\n" in data:  # it came over several data lines: so it goes on
                data = data.replace("\n", "\ndata: ")
            yield b"data: " + _masked(data.encode(), key) + b"\n\n"
        yield b"data: [DONE]\n\n"  # also for an upstream that ended a whole reply without it
        log.outcome = "done " + _usage_note(parser.usage)
    except asyncio.CancelledError:
        stopped = None if log.gone else log.stopped_here()  # gone: the client left as its stream began
        if stopped is None:
            raise
        log_stream_failure(stopped)
        yield b"data: " + orjson.dumps(openai_error_body(stopped)) + b"\n\n"
    except ServiceError as exc:
        log_stream_failure(exc)
        yield b"data: " + orjson.dumps(openai_error_body(exc)) + b"\n\n"


_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


def _masked(raw: bytes, key: str) -> bytes:
    """``raw`` with the caller's key masked, whole or cut (``masked_runs``), also where the JSON spells
    it in \\u escapes (then it is written again, escapes decoded, which any JSON reader reads the
    same). A key split across stream events is not seen: each event is passed on as it comes."""
    if _ASCII_ESCAPE.search(raw):  # a key is ASCII: only an escaped ASCII character can hide one
        with contextlib.suppress(ValueError, TypeError):  # not JSON, or too deep to write: as it came
            decoded = orjson.dumps(orjson.loads(raw))
            # Written again only when the escapes hid the key: else the bytes go on as the upstream wrote
            # them (Go's servers escape < > & so; a rewrite would change numbers past 64 bits, duplicates)
            if masking(key).search(decoded) or may_hold_run(decoded.lower(), key):
                raw = decoded
    secret = masking(key)
    if secret.search(raw):
        raw = secret.sub(b"***", raw)
    if not may_hold_run(raw.lower(), key):  # no run of the key: the common case
        return raw
    return masked_runs(raw.decode("latin-1"), key).encode("latin-1")  # one character a byte, as the key's


async def list_models(request: Request, services: Services) -> Response:
    current_log().route = "models"
    await owner_of(request, services)  # a key its upstream refuses gets 401
    return JSONBody({"object": "list", "data": services.models.listed()})


async def retrieve_model(request: Request, services: Services) -> Response:
    """One model, as ``GET /v1/models`` lists it: any model name is served (by the routes file's
    upstream for it, else the default upstream), so any well-formed name is found."""
    current_log().route = "models"
    await owner_of(request, services)
    model = request.path_params["id"]
    if len(model) > 256 or not model.isprintable():
        raise NotFound("model_not_found", model=model[:256])
    return JSONBody(services.models.described(model))
