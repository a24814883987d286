"""POST /api/v1/gpt/getInfo: generate a reply (type "1": JSON; type "2": a stream of events)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..conversation.service import ChatService
from .body import read_values
from .envelope import language_of, ok
from .streaming import EventStreamResponse
from .validation import parse_chat


async def get_info(request: Request) -> Response | EventStreamResponse:
    state = request.app.state
    chat = parse_chat(await read_values(request, state.settings.max_body_bytes), state.settings)
    service: ChatService = state.services.chat
    if not chat.stream:
        reply = await service.reply(chat)
        return ok(reply.data(), status=201)
    # Everything that can fail before the first byte fails here, as an ordinary JSON error.
    turn = await service.prepare(chat)
    stream = await service.open_stream(turn)
    return EventStreamResponse(stream, state.settings.heartbeat_seconds, request.url.path, language_of(request))
