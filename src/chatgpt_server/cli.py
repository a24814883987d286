"""The command line: ``chatgpt-server serve | ask | login | accounts | logout``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError

from . import __version__
from .settings import Settings, env_name, unknown_variables

# Flags of `serve`, each the command-line spelling of a setting.
SERVE_FLAGS = ("host", "port", "workers", "store_url", "language", "log_level", "log_format")


def _describe(field: str) -> str:
    info = Settings.model_fields[field]
    default = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    shown = "" if default in (None, "", ()) else f" (default: {default})"
    return f"{info.description or ''}{shown}; {env_name(field)}"


class Usage(Exception):
    """A bad setting or argument: one line, exit status 2."""


def load_settings(overrides: dict[str, Any]) -> Settings:
    """The settings, or a ``Usage`` naming the flag or environment variable at fault."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            where = env_name(field) if field in Settings.model_fields else field
            if overrides.get(field) is not None:
                where = f"--{field.replace('_', '-')} ({where})"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
        raise Usage("; ".join(lines)) from None


class JSONFormatter(logging.Formatter):
    """One JSON object per event, as the access log writes them."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        entry = {"time": when, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:  # uvicorn's "Exception in ASGI application" and the like keep their traceback
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings) -> None:
    """Every log line in the one format, uvicorn's own included (it is given no logging config of its
    own, so its loggers reach this handler): a JSON log holds no plain-text line."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler])


def serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .http_limits import configure

    overrides = {name: getattr(args, name) for name in SERVE_FLAGS}
    if args.check:
        overrides["require_store"] = True
    settings = load_settings(overrides)
    if settings.models_file:  # read now: a bad file is one line here, not a traceback in each worker
        from .upstreams.routing import load_routes

        load_routes(settings.models_file, settings)
    setup_logging(settings)
    log = logging.getLogger("chatgpt_server")
    log.info("settings: %s", json.dumps(settings.masked(), default=str))
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    if settings.require_store and not asyncio.run(_check_store(settings)):
        return 1
    if args.check:
        log.info("store %s opens: ready to serve", settings.store_url.split(":", 1)[0])
        return 0
    log.info("Swagger UI: http://%s:%d/api", _shown_host(settings.host), settings.port)
    http = configure(settings.max_header_bytes, 100, settings.header_timeout_seconds, settings.language)
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "http": http, "loop": "uvloop",
        "ws": "none",  # no WebSocket route: an upgrade request is an HTTP request, answered as one
        "access_log": False,  # ours is written by the app: uvicorn's would write query strings
        "log_config": None,
        "log_level": settings.log_level.lower(), "proxy_headers": False, "server_header": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_seconds) + 5,
        "timeout_keep_alive": 30,
    }  # fmt: skip
    if settings.workers > 1:
        for name in SERVE_FLAGS:  # the workers read their settings from the environment
            if overrides.get(name) is not None:
                os.environ[env_name(name)] = str(overrides[name])
        config = uvicorn.Config("chatgpt_server.app:app_from_environment", factory=True, workers=settings.workers,
                                **common)  # fmt: skip
        from uvicorn.supervisors import Multiprocess

        class Supervisor(Multiprocess):
            """uvicorn's supervisor of the workers keeps its copy of the listening socket open until the
            last worker has drained: new connections would wait in the kernel's queue meanwhile and be
            reset at the end (nginx answers 502, retrying no POST). Closed first, they are refused at
            once, as by one worker, and a proxy moves on to another instance. SIGTERM and SIGINT are
            acted on when they arrive, not at the supervisor's next look at its signals (every 0.5 s,
            while the workers went on taking connections)."""

            def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
                super().__init__(config, sockets)
                self.stopping = False
                self.told: set[int] = set()  # workers sent SIGTERM, by pid: never twice (a second one forces)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, self.stop_now)

            def stop_now(self, sig: int, frame: FrameType | None) -> None:
                # A signal handler: no lock, no logging. The loop still ends at its next look, as it would.
                self.signal_queue.append(sig)
                self.refuse_and_tell()

            def refuse_and_tell(self) -> None:
                """Close the listening sockets, and send each running worker SIGTERM once (with os.kill:
                uvicorn's terminate also closes the pipe its health checks use, and a worker that fails
                one is killed as hung)."""
                self.stopping = True
                for sock in self.sockets:
                    sock.close()
                for process in self.processes:
                    pid = process.process.pid
                    if pid is None or pid in self.told or process.process.exitcode is not None:
                        continue
                    self.told.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)

            def keep_subprocess_alive(self) -> None:
                if not self.stopping:  # no worker is replaced once shutting down (its socket is closed)
                    super().keep_subprocess_alive()

            def terminate_all(self) -> None:
                self.refuse_and_tell()

        Supervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    uvicorn.Server(uvicorn.Config(create_app(settings), **common)).run()
    return 0


def _shown_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


async def _check_store(settings: Settings) -> bool:
    from .errors import StoreUnavailable
    from .stores import open_store

    store = open_store(settings.store_url, settings.retention_days, settings.store_timeout_ms / 1000)
    try:
        await store.open()
        await store.ping()
    except StoreUnavailable as exc:
        print(f"chatgpt-server: the {store.kind} store cannot be opened: {exc.reason or 'no answer'}", file=sys.stderr)
        return False
    finally:
        await store.close()
    return True


def ask(args: argparse.Namespace) -> int:
    """One turn through the same door and core the server uses, with the same settings and store."""
    from .app import Services
    from .edges.messages import error_message
    from .edges.original import reply_data, spec_for
    from .edges.original_request import parse_chat
    from .errors import ServiceError
    from .stores import open_store

    settings = load_settings({"store_url": args.store_url})
    variable = "OPENAI_API_KEY" if args.mode == "1" else "CHATGPT_ACCESS_TOKEN"
    key = args.key or os.environ.get(variable)
    if not key:
        raise Usage(f"give --key or set {variable}")
    opts: dict[str, Any] = {"key": key, "content": args.question, "isFollow": bool(args.follow)}
    if args.follow:
        opts["parentMessageId"] = args.follow
    if args.model:
        opts["opts"] = {"model": args.model}

    async def run() -> int:
        services = Services(settings, open_store(settings.store_url, settings.retention_days,
                                                 settings.store_timeout_ms / 1000))  # fmt: skip
        await services.start()
        try:
            chat = parse_chat({"mode": args.mode, "type": "2" if args.stream else "1", "opts": opts}, settings)
            spec, credential = await spec_for(chat, services)
            turn = await services.accounts.open_turn(services.turns, spec, credential)
            try:
                async for piece in turn.events():
                    if args.stream and piece.text:
                        print(piece.text, end="", flush=True)
                result = await turn.finish()
            finally:
                await turn.close()
        except ServiceError as exc:
            # A terminal's messages are English unless the language was set (the server's default, zh,
            # is for the original's clients).
            language = settings.language if "language" in settings.model_fields_set else "en"
            print(f"error {exc.status}: {error_message(exc, language)}", file=sys.stderr)
            return 1
        finally:
            await services.close()
        print() if args.stream else print(reply_data(chat, result, spec.model)["text"])
        print(f"\n[id: {result.reply_id}]  follow up with: --follow {result.reply_id}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def _with_accounts(body: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from .app import Services
    from .stores import open_store

    settings = load_settings({})

    async def run() -> int:
        services = Services(settings, open_store(settings.store_url, settings.retention_days,
                                                 settings.store_timeout_ms / 1000))  # fmt: skip
        await services.start()
        try:
            return await body(services)
        finally:
            await services.close()

    return asyncio.run(run())


def login(args: argparse.Namespace) -> int:
    """Device sign-in (upstreams.md §5): show the code, wait for the person, store the account."""
    from .edges.messages import error_message
    from .errors import ServiceError

    async def body(services: Any) -> int:
        accounts = services.accounts
        try:
            accounts._sealer()
            device = await accounts.oauth.start_device()
            print(f"Open {accounts.oauth.verification_uri} and enter the code:\n\n    {device.user_code}\n")
            print("Never share this code: whoever enters it gets your ChatGPT account.", flush=True)
            deadline = time.monotonic() + 15 * 60
            while time.monotonic() < deadline:
                got = await accounts.oauth.poll_device(device)
                if got is not None:
                    account = await accounts.keep(await accounts.oauth.exchange(*got))
                    print(f"Signed in: {account['email']} ({account['plan']}, account {account['accountId']})")
                    return 0
                await asyncio.sleep(max(device.interval, 0.2))
            print("chatgpt-server login: the code expired; run login again", file=sys.stderr)
            return 1
        except ServiceError as exc:
            print(f"chatgpt-server login: {error_message(exc, 'en')}", file=sys.stderr)
            return 1

    return _with_accounts(body)


def accounts_list(args: argparse.Namespace) -> int:
    async def body(services: Any) -> int:
        rows = await services.accounts.all()
        if not rows:
            print("no stored accounts (chatgpt-server login adds one)")
        for row in rows:
            expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row["expiresAt"]))
            print(f"{row['email']}\t{row['plan']}\t{row['accountId']}\taccess token until {expires}\t{row['status']}")
        return 0

    return _with_accounts(body)


def token(args: argparse.Namespace) -> int:
    """The stored account's access token on stdout (refreshed if due), for CHATGPT_ACCESS_TOKEN: the
    terminal's counterpart of the token route."""

    async def body(services: Any) -> int:
        print(await services.accounts.token_of(args.email))
        return 0

    return _with_accounts(body)


def logout(args: argparse.Namespace) -> int:
    async def body(services: Any) -> int:
        removed = await services.accounts.forget(args.email)
        print(f"removed {removed} account(s) of {args.email}")
        return 0 if removed else 1

    return _with_accounts(body)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="chatgpt-server",
        description="A self-hosted gateway to ChatGPT and any chat-completions model, with conversations that "
        "remember. Every setting is also an environment variable (CHATGPT_SERVER_*) or a line of .env.",
    )
    top.add_argument("--version", action="version", version=f"chatgpt-server {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP server")
    p.add_argument("--host", help=_describe("host"))
    p.add_argument("--port", type=int, help=_describe("port"))
    p.add_argument("--workers", type=int, help=_describe("workers"))
    p.add_argument("--store-url", help=_describe("store_url"))
    p.add_argument("--language", help=_describe("language"))
    p.add_argument("--log-level", help=_describe("log_level"))
    p.add_argument("--log-format", help=_describe("log_format"))
    p.add_argument("--check", action="store_true",
                   help="open the store and exit: 0 if it opens, 1 (with the reason) if not")  # fmt: skip
    p.set_defaults(func=serve)
    a = sub.add_parser("ask", help="ask one question from the terminal (reads .env as serve does)")
    a.add_argument("question")
    a.add_argument("--follow", metavar="MESSAGE_ID", help="continue after this reply id")
    a.add_argument("--key", help="API key (mode 1) or access token (mode 2); default: $OPENAI_API_KEY or "
                                 "$CHATGPT_ACCESS_TOKEN")  # fmt: skip
    a.add_argument("--mode", choices=["1", "2"], default="1", help="1: API key (default); 2: ChatGPT account")
    a.add_argument("--model", help="the model (default: CHATGPT_SERVER_DEFAULT_MODEL / _DEFAULT_CHATGPT_MODEL)")
    a.add_argument("--stream", action="store_true", help="print the reply as it is written")
    a.add_argument("--store-url", help=_describe("store_url"))
    a.set_defaults(func=ask)
    sub.add_parser("login", help="sign a ChatGPT account in (device code) and store it").set_defaults(func=login)
    sub.add_parser("accounts", help="list stored ChatGPT accounts (never a token)").set_defaults(func=accounts_list)
    tok = sub.add_parser("token", help="print a stored account's current access token (refreshed if due)")
    tok.add_argument("email", nargs="?", help="the account's email (needed when several are stored)")
    tok.set_defaults(func=token)
    out = sub.add_parser("logout", help="remove a stored ChatGPT account")
    out.add_argument("email")
    out.set_defaults(func=logout)
    return top


def main(argv: list[str] | None = None) -> int:
    from .edges.messages import error_message
    from .errors import ServiceError, StoreUnavailable
    from .upstreams.routing import RoutesFileError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Usage as exc:
        print(f"chatgpt-server: {exc}", file=sys.stderr)
        return 2
    except RoutesFileError as exc:
        print(f"chatgpt-server: CHATGPT_SERVER_MODELS_FILE: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"chatgpt-server: the conversation store is unavailable: {exc.reason or 'no answer'}", file=sys.stderr)
        return 1
    except ServiceError as exc:  # what a request would be answered with: its words, one line
        print(f"chatgpt-server: {error_message(exc, 'en')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
