"""The command line: ``chatgpt-server serve`` and ``chatgpt-server ask``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

from .settings import Settings


def _settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SystemExit(f"chatgpt-server: invalid settings:\n{exc}") from exc


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = _settings({"host": args.host, "port": args.port, "store_url": args.store_url,
                          "language": args.language, "log_level": args.log_level})  # fmt: skip
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("chatgpt_server").info("settings: %s", json.dumps(settings.masked(), default=str))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,  # uvicorn's access log would write query strings (passwords, in GET token)
        log_level=settings.log_level.lower(),
        loop="uvloop",
        http="httptools",
        proxy_headers=False,  # client addresses are never used: skip the middleware on every request
        timeout_graceful_shutdown=30,  # in-flight replies get this long to finish on SIGTERM
    )
    return 0


def ask(args: argparse.Namespace) -> int:
    """One turn through the same service the server uses, with the same settings and store."""
    from .api.messages import error_message
    from .app import Services
    from .conversation.models import ChatRequest
    from .errors import ServiceError
    from .stores import open_store

    settings = _settings({"store_url": args.store_url})
    key = args.key or os.environ.get("OPENAI_API_KEY" if args.mode == "1" else "CHATGPT_ACCESS_TOKEN")
    if not key:
        variable = "OPENAI_API_KEY" if args.mode == "1" else "CHATGPT_ACCESS_TOKEN"
        print(f"chatgpt-server ask: give --key or set {variable}", file=sys.stderr)
        return 2
    request = ChatRequest(
        mode=args.mode, key=key, content=args.question, is_follow=bool(args.follow),
        parent_message_id=args.follow, stream=args.stream, model=args.model,
        max_model_tokens=settings.max_model_tokens, max_response_tokens=settings.max_response_tokens,
        base_url=settings.openai_base_url, conversation_url=settings.chatgpt_url,
        timeout_s=settings.timeout_ms / 1000, idle_timeout_s=settings.idle_timeout_ms / 1000,
    )  # fmt: skip

    async def run() -> int:
        services = Services(settings, open_store(settings.store_url, settings.retention_days))
        await services.start()
        try:
            if not args.stream:
                reply = await services.chat.reply(request)
            else:
                stream = await services.chat.open_stream(await services.chat.prepare(request))
                async for delta in stream.deltas():
                    print(delta, end="", flush=True)
                print()
                reply = await stream.finish(incomplete=not stream.complete)
        except ServiceError as exc:
            print(f"error {exc.status}: {error_message(exc, settings.language)}", file=sys.stderr)
            return 1
        finally:
            await services.close()
        if not args.stream:
            print(reply.text)
        print(f"\n[id: {reply.id}]  follow up with: --follow {reply.id}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatgpt-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP server")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--store-url")
    p_serve.add_argument("--language", choices=["en", "zh"])
    p_serve.add_argument("--log-level")
    p_serve.set_defaults(func=serve)
    p_ask = sub.add_parser("ask", help="ask one question from the terminal")
    p_ask.add_argument("question")
    p_ask.add_argument("--follow", metavar="MESSAGE_ID", help="continue after this reply id")
    p_ask.add_argument("--key", help="API key (mode 1) or access token (mode 2)")
    p_ask.add_argument("--mode", choices=["1", "2"], default="1")
    p_ask.add_argument("--model")
    p_ask.add_argument("--stream", action="store_true", help="print the reply as it is written")
    p_ask.add_argument("--store-url")
    p_ask.set_defaults(func=ask)
    args = parser.parse_args(argv)
    return int(args.func(args))
