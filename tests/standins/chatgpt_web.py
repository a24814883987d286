"""A stand-in for the ChatGPT web backend (upstreams.md §2), as a real HTTP server.

It keeps the conversation tree itself, as the real one does: a follow-up must name a conversation of
the same account and a message in it, or it fails (404 "Conversation not found", 400 for an unknown
parent). The reply is ``echo(n): <question>`` where n counts the user messages on the path from the
root to the new message, so a test can see whether the ids sent were right. It answers in the
``v1`` delta encoding when the request lists it (unless ``force_classic``), else in the classic
cumulative form; refuses a second concurrent request of one account with 429; and can be told to
answer as Cloudflare does, or to cut the stream.

Access tokens are JWTs signed by the stand-in (``mint``), with ``exp`` and the account's email.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SECRET = b"standin-secret"
PROFILE = "https://api.openai.com/profile"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(email: str, ttl: float = 3600, exp: float | None = None) -> str:
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    claims = {
        "exp": int(exp if exp is not None else time.time() + ttl),
        PROFILE: {"email": email},
        "jti": uuid.uuid4().hex,
    }
    payload = _b64(orjson.dumps(claims))
    signature = _b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def verify(token: str) -> dict[str, Any] | None:
    try:
        header, payload, signature = token.split(".")
    except ValueError:
        return None
    expected = _b64(hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        return None
    claims: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims if claims.get("exp", 0) > time.time() else None


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _detail(status: int, detail: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"detail": detail}), content_type="application/json")


CLOUDFLARE_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    "<div id='cf-wrapper'>Checking if the site connection is secure</div></body></html>"
)


@dataclass
class Conversation:
    account: str
    messages: dict[str, tuple[str | None, str, str]] = field(default_factory=dict)  # id -> (parent, role, text)

    def user_turns(self, message_id: str | None) -> int:
        turns = 0
        while message_id in self.messages:
            parent, role, _ = self.messages[message_id]
            turns += role == "user"
            message_id = parent
        return turns


@dataclass
class ChatGPTStandIn:
    conversations: dict[str, Conversation] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    force_classic: bool = False
    fail_next: list[str] = field(default_factory=list)
    chunk_delay: float = 0.0
    first_delay: float = 0.0
    max_concurrent_seen: int = 0
    active: int = 0
    cancelled: int = 0
    require_sentinel: bool = False  # as chatgpt.com today (§2): writes need the sentinel tokens

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/backend-api/conversation", self.conversation)
        return app

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        failure = self.fail_next.pop(0) if self.fail_next else None
        if failure == "cloudflare":
            return web.Response(status=403, text=CLOUDFLARE_PAGE, content_type="text/html")
        if failure == "500":
            return _detail(500, "Something went wrong")
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        claims = verify(token)
        if claims is None:
            return _detail(401, "Your authentication token has expired. Please try signing in again.")
        if self.require_sentinel and not (
            request.headers.get("openai-sentinel-chat-requirements-token")
            and request.headers.get("openai-sentinel-proof-token")
        ):
            return _detail(403, "Unusual activity has been detected from your device. Try again later.")
        account = claims[PROFILE]["email"]
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _detail(400, "invalid JSON")
        self.requests.append({"headers": dict(request.headers), "body": body})
        problem = self._check(body)
        if problem:
            return _detail(400, problem)
        message = body["messages"][0]
        conversation_id = body.get("conversation_id")
        if conversation_id is not None:
            conversation = self.conversations.get(conversation_id)
            if conversation is None or conversation.account != account:
                return _detail(404, "Conversation not found")
            if body["parent_message_id"] not in conversation.messages:
                return _detail(400, "Parent message not found in this conversation")
        else:
            conversation_id = str(uuid.uuid4())
            conversation = Conversation(account)
        if account in self.busy:
            return _detail(429, "Only one message at a time. Please allow any other responses to complete "
                                "before sending another message, or wait one minute.")  # fmt: skip
        self.busy.add(account)
        self.active += 1
        self.max_concurrent_seen = max(self.max_concurrent_seen, self.active)
        try:
            question = message["content"]["parts"][0]
            parent = body["parent_message_id"] if body.get("conversation_id") else None
            conversation.messages[message["id"]] = (parent, "user", question)
            reply_id = str(uuid.uuid4())
            text = f"echo({conversation.user_turns(message['id'])}): {question}"
            self.conversations[conversation_id] = conversation
            # The backend creates the reply node when it starts writing: it stays in the conversation even
            # if the client stops reading.
            conversation.messages[reply_id] = (message["id"], "assistant", text)
            delta = "v1" in (body.get("supported_encodings") or []) and not self.force_classic
            cut = {"cut0": "before", "cut": "after", "handoff": "handoff"}.get(failure or "", "")
            return await self._reply(request, conversation_id, reply_id, text, delta, cut)
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
            self.busy.discard(account)

    @staticmethod
    def _check(body: Any) -> str | None:
        if not isinstance(body, dict) or body.get("action") != "next":
            return "action must be next"
        messages = body.get("messages")
        if not isinstance(messages, list) or len(messages) != 1:
            return "messages must hold one message"
        message = messages[0]
        if not _is_uuid(message.get("id")) or (message.get("author") or {}).get("role") != "user":
            return "message needs a uuid id and the user role"
        parts = (message.get("content") or {}).get("parts")
        if not isinstance(parts, list) or not parts or not isinstance(parts[0], str):
            return "message content needs text parts"
        if not _is_uuid(body.get("parent_message_id")):
            return "parent_message_id must be a uuid"
        if not isinstance(body.get("model"), str):
            return "model is required"
        if "conversation_id" in body and not _is_uuid(body["conversation_id"]):
            return "conversation_id must be a uuid"
        return None

    async def _reply(self, request: web.Request, conversation_id: str, reply_id: str, text: str,
                     delta: bool, cut: str) -> web.StreamResponse:  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        if self.first_delay:
            await asyncio.sleep(self.first_delay)
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]

        async def send(data: Any, event: str | None = None) -> None:
            frame = (f"event: {event}\n" if event else "") + "data: " + orjson.dumps(data).decode() + "\n\n"
            await response.write(frame.encode())

        message = {"id": reply_id, "author": {"role": "assistant"}, "content": {"content_type": "text", "parts": [""]},
                   "status": "in_progress", "end_turn": None, "metadata": {}}  # fmt: skip
        if delta:
            await response.write(b'event: delta_encoding\ndata: "v1"\n\n')
            await send({"type": "input_message", "input_message": {"author": {"role": "user"}}})
            await send({"p": "", "o": "add", "v": {"message": message, "conversation_id": conversation_id,
                                                   "error": None}, "c": 0}, "delta")  # fmt: skip
        else:
            echo = {"id": str(uuid.uuid4()), "author": {"role": "user"}, "content": {"content_type": "text",
                    "parts": ["(the question)"]}}  # fmt: skip
            await send({"message": echo, "conversation_id": conversation_id, "error": None})
        if cut == "before":
            request.transport.close()  # type: ignore[union-attr]
            return response
        so_far = ""
        for i, piece in enumerate(pieces):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            so_far += piece
            if delta:
                if i == 0:
                    await send({"p": "/message/content/parts/0", "o": "append", "v": piece}, "delta")
                elif i == len(pieces) - 1:
                    await send({"p": "", "o": "patch", "v": [
                        {"p": "/message/content/parts/0", "o": "append", "v": piece},
                        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
                        {"p": "/message/end_turn", "o": "replace", "v": True}]}, "delta")  # fmt: skip
                else:
                    await send({"v": piece}, "delta")
            else:
                whole = {**message, "content": {"content_type": "text", "parts": [so_far]}}
                await send({"message": whole, "conversation_id": conversation_id, "error": None})
            if cut == "after" and i == 1:
                request.transport.close()  # type: ignore[union-attr]
                return response
            if cut == "handoff" and i == 1:  # the rest only by reading the conversation back (upstreams.md §2)
                await send({"type": "stream_handoff", "conversation_id": conversation_id})
                await response.write(b"data: [DONE]\n\n")
                return response
        await send({"type": "message_stream_complete", "conversation_id": conversation_id})
        await response.write(b"data: [DONE]\n\n")
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7011)
    parser.add_argument("--classic", action="store_true", help="answer in the classic cumulative form")
    args = parser.parse_args()
    standin = ChatGPTStandIn(force_classic=args.classic)
    standin.requests = _Discard()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(standin.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


class _Discard(list):  # type: ignore[type-arg]
    """A request log that keeps nothing (benchmarks send many)."""

    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()
