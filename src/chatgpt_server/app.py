"""Builds the application: services, routes, the one error mapping, the access log, start-up and shutdown.

The routing is ours, not Starlette's: a dict lookup for exact paths and a few patterns with one
parameter, which costs a fraction of Starlette's router and middleware stack on every request
(measured in bench/RESULTS.md). Handlers still use Starlette's Request and Response objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import select
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import quote

import orjson
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from .accounts.service import Accounts, spent
from .accounts.signin import TokenService
from .core.activity import GONE, REFUSED, Activity, RequestLog, begin_log
from .core.history import HistoryCache
from .core.items import random_hex
from .core.leases import given_back
from .core.owners import Owners
from .core.rates import Window
from .core.turns import Turns
from .edges import access_token, chat_completions, conversations, docs, health, original, responses
from .edges.envelope import error_response, is_openai_path
from .edges.http import allowed
from .edges.messages import error_message, pick_language
from .errors import BadRequest, MethodNotAllowed, NotFound, ServiceError, ShuttingDown, StoreUnavailable
from .redact import holds_secret, masked
from .settings import Settings
from .stores import Store, open_store
from .upstreams.base import Upstream
from .upstreams.chat_completions import ChatCompletions, Relay
from .upstreams.chatgpt_web import ChatGPTWeb
from .upstreams.codex import Codex
from .upstreams.http import HTTPClient
from .upstreams.keys import KeyCheck
from .upstreams.routing import Models

log = logging.getLogger("chatgpt_server")
PURGE_EVERY_S = 3600
SPEND_WAIT_S = 30.0  # an issuer call has 20 s; saving what it gave, the store's timeout
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
Handler = Callable[[Request, "Services"], Awaitable[ASGIApp]]


class Services:
    """What a running instance holds: built once at start-up, closed at shutdown."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.http = HTTPClient(settings)
        self.owners = Owners(store, settings.secret_bytes())
        self.cache = HistoryCache(settings.history_cache_mb * 1024 * 1024, settings.retention_days * 86_400.0)
        self.activity = Activity()
        limit = settings.max_reply_bytes
        upstreams: dict[str, Upstream] = {
            "chat": ChatCompletions(self.http, limit),
            "web": ChatGPTWeb(self.http, limit),
            "codex": Codex(self.http, limit, original.todays_system_message),
        }
        self.turns = Turns(store, upstreams, self.cache, self.activity, settings.lock_lease_ms / 1000,
                           settings.store_timeout_ms / 1000)  # fmt: skip
        self.relay = Relay(self.http, limit)
        self.models = Models(settings)
        self.keys = KeyCheck(self.http)
        self.tokens = TokenService(settings, self.http)
        self.accounts = Accounts(settings, store, self.http, self.owners)
        self.device_starts = Window(settings.device_sign_ins_per_hour, 3600.0)
        self.password_sign_ins = Window(settings.password_sign_ins_per_hour, 3600.0)
        self.shutting_down = False

    async def start(self) -> None:
        try:
            await self.store.open()
            await self.owners.key()
        except StoreUnavailable as exc:
            # A network store may come back: requests get 503 until it does, then it is picked up.
            log.error("conversation store %s is unavailable (%s); will retry on each request", self.store.kind,
                      exc.reason or "no reason given")  # fmt: skip
            if self.settings.require_store:
                raise

    async def close(self) -> None:
        # The server cancels the requests still running just before it closes us, without waiting
        # for them: the turns they were storing (what a stream had received) finish first.
        await self.activity.quiet(2 * self.settings.store_timeout_ms / 1000)
        await given_back(self.settings.store_timeout_ms / 1000)  # the locks those turns let go of
        await spent(SPEND_WAIT_S)  # refreshes and sign-ins that spent a single-use code: saved first
        await self.http.close()
        await self.store.close()

    def begin_shutdown(self) -> None:
        """SIGTERM: in-flight turns get the grace period, then are stopped with 503 "shutting down"."""
        if self.shutting_down:
            return
        self.shutting_down = True
        grace = self.settings.shutdown_grace_seconds
        log.info("shutting down: %d replies in flight get up to %.0f s", len(self.activity.turns), grace)
        asyncio.get_running_loop().call_later(grace, self._stop_turns)

    def _stop_turns(self) -> None:
        for turn in list(self.activity.turns):
            turn.abort(ShuttingDown())
        for entry in list(self.activity.stoppable):  # the rest: pass-throughs, sign-ins
            entry.stop()


@dataclass(frozen=True, slots=True)
class Route:
    handlers: dict[str, Handler]
    allow: str
    rest: bool = False  # its last ``{name}`` takes the rest of the path, slashes included


class Router:
    """Exact paths, and paths with ``{name}`` segments; a trailing slash names the same route. The
    original's paths (under ``/api``) match in any case, as its server (Express) matched them."""

    def __init__(self) -> None:
        self.exact: dict[str, Route] = {}
        self.folded: dict[str, Route] = {}  # the original's paths, lower-cased
        self.patterns: list[tuple[list[str], Route]] = []

    def add(self, path: str, rest: bool = False, **handlers: Handler) -> None:
        methods = {m.upper(): h for m, h in handlers.items()}
        route = Route(methods, allowed(methods), rest)
        if "{" in path:
            self.patterns.append((path.strip("/").split("/"), route))
        else:
            self.exact[path] = route
            if path == "/api" or path.startswith(("/api/", "/api-")):
                self.folded[path.lower()] = route

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        found = self.exact.get(path) or self.folded.get(path.lower())
        if found is not None:
            return found, {}
        parts = path.strip("/").split("/")
        for pattern, route in self.patterns:
            if len(pattern) != len(parts) and not (route.rest and len(parts) > len(pattern)):
                continue
            params: dict[str, str] = {}
            segments = parts if len(parts) == len(pattern) else [*parts[: len(pattern) - 1],
                                                                 "/".join(parts[len(pattern) - 1 :])]  # fmt: skip
            for want, got in zip(pattern, segments, strict=True):
                if want.startswith("{"):
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return route, params
        return None


def routes() -> Router:
    r = Router()
    r.add("/", get=docs.root)
    r.add("/api", get=docs.swagger_page)
    r.add("/api-json", get=docs.openapi_json)
    r.add("/healthz", get=health.healthz)
    r.add("/readyz", get=health.readyz)
    r.add("/api/v1/gpt/getInfo", post=original.get_info)
    r.add("/api/v1/token/getInfo", get=access_token.get_info, post=access_token.get_info)
    r.add("/api/v1/token/device", post=access_token.device_start)
    r.add("/api/v1/token/device/poll", post=access_token.device_poll)
    r.add("/v1/models", get=chat_completions.list_models)
    r.add("/v1/models/{id}", rest=True, get=chat_completions.retrieve_model)  # vLLM's names hold slashes
    r.add("/v1/chat/completions", post=chat_completions.create)
    r.add("/v1/responses", post=responses.create)
    r.add("/v1/responses/input_tokens", post=responses.count_input_tokens)
    r.add("/v1/responses/{id}", get=responses.retrieve, delete=responses.delete)
    r.add("/v1/responses/{id}/input_items", get=responses.input_items)
    r.add("/v1/responses/{id}/cancel", post=responses.cancel)
    r.add("/v1/conversations", get=conversations.list_all, post=conversations.create)
    r.add("/v1/conversations/{id}", get=conversations.retrieve, post=conversations.update,
          delete=conversations.delete)  # fmt: skip
    r.add("/v1/conversations/{id}/items", get=conversations.list_items, post=conversations.add_items)
    r.add("/v1/conversations/{id}/items/{item_id}", get=conversations.get_item, delete=conversations.delete_item)
    return r


def write_lines(fd: int, lines: list[bytes]) -> None:
    """Whole lines, at most PIPE_BUF bytes to a write where the lines allow: a write that small to a
    pipe is atomic, so worker processes sharing stderr never cut into each other's lines."""
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > select.PIPE_BUF:
            _write_all(fd, b"".join(batch))
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        _write_all(fd, b"".join(batch))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # a write cut short (by a signal) goes on where it stopped
        view = view[os.write(fd, view) :]


PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class AccessLog:
    """One line per request: no logging lock, no formatting of anything the request sent beyond its
    method and path. Lines are gathered and written together every few milliseconds (one system call
    for many requests under load; a line waits at most ``FLUSH_S``)."""

    FLUSH_S = 0.02
    FLUSH_BYTES = 64 * 1024

    def __init__(self, form: str, enabled: bool):
        self.json = form == "json"
        self.enabled = enabled
        self._second = -1
        self._prefix = ""
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def flush(self) -> None:
        self._timer = None
        lines, self._lines, self._size = self._lines, [], 0
        if lines:
            with contextlib.suppress(OSError):
                write_lines(2, lines)

    def write(self, entry: RequestLog, rid: str, method: str, path: str, status: int, started: float) -> None:
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time to the second change once a second
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        stamp = f"{self._prefix}.{int((now - second) * 1000):03d}Z"
        duration = round((time.perf_counter() - started) * 1000, 2)
        if holds_secret(path, *entry.secrets):  # a key sent as an id in the path
            path = masked(path, *entry.secrets)
        if entry.secrets and holds_secret(rid, *entry.secrets):  # a key in the body, sent as the request id too
            rid = masked(rid, *entry.secrets)
        if self.json:
            fields = {
                "time": stamp, "request_id": rid, "method": method, "path": path, "status": status,
                "duration_ms": duration, "route": entry.route, "upstream": entry.upstream,
                "upstream_ms": round(entry.upstream_ms, 2), "store_ms": round(entry.store_ms, 2),
                "outcome": entry.outcome, "message": entry.message,
            }  # fmt: skip
            line = orjson.dumps({k: v for k, v in fields.items() if v != ""}) + b"\n"
        else:
            if " " in path or not path.isprintable():  # decoded from %0A, %20...: one line, one field
                path = quote(path, safe=PATH_SAFE)
            text = f"{stamp} {rid} {method} {path} {status} {duration}ms"
            if entry.route:
                text += f' route="{entry.route}"'
            if entry.upstream:
                text += f" upstream={entry.upstream} upstream_ms={entry.upstream_ms:.2f}"
            if entry.store_ms:
                text += f" store_ms={entry.store_ms:.2f}"
            if entry.outcome:  # logfmt: a value with a space is quoted, as message is
                outcome = entry.outcome
                text += f" outcome={orjson.dumps(outcome).decode() if ' ' in outcome else outcome}"
            if entry.message:
                text += f" message={orjson.dumps(entry.message).decode()}"
            line = (text + "\n").encode()
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)


class App:
    """The ASGI application."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.services = Services(
            settings, store or open_store(settings.store_url, settings.retention_days, settings.store_timeout_ms / 1000)
        )
        self.router = routes()
        self.static = StaticFiles(directory=swagger_ui_path)
        self.access = AccessLog(settings.log_format, settings.access_log)
        self._purge: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.services.start()
                except StoreUnavailable as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"store unavailable: {exc.reason}"})
                    return
                except Exception as exc:  # else the server would run on without our start-up and shutdown
                    log.error("start-up failed: %s: %s", type(exc).__name__, masked(str(exc))[:300])
                    await send({"type": "lifespan.startup.failed", "message": f"start-up failed: {type(exc).__name__}"})
                    return
                # Everything built so far lives as long as the process: keep the collector from rescanning it.
                gc.collect()
                gc.freeze()
                self._purge = asyncio.create_task(self._purge_forever())
                self._hook_sigterm()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._purge is not None:
                    self._purge.cancel()
                await self.services.close()
                self.access.flush()  # after: requests the server cancelled end while the services close
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _hook_sigterm(self) -> None:
        """Learn of SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal closed) before the server acts on
        them: the server (uvicorn, in this process, whatever the number of workers) has installed its
        handlers by now; ours runs first, then its. Each begins the same graceful shutdown; SIGHUP, which
        uvicorn leaves to its default (the process killed, what is in flight lost), is its SIGTERM, unless
        it is ignored (``nohup``): then it stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        on_sigterm = signal.getsignal(signal.SIGTERM)
        for hooked in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous = signal.getsignal(hooked)
            if hooked == signal.SIGHUP:
                if previous is not signal.SIG_DFL:  # ignored (nohup), or a supervisor's own: left as it is
                    continue
                previous = on_sigterm
            signal.signal(hooked, self._on_signal(loop, previous))

    def _on_signal(self, loop: asyncio.AbstractEventLoop, previous: object) -> Callable[[int, FrameType | None], None]:
        def on_signal(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.services.begin_shutdown)
            if callable(previous):
                previous(signal.SIGTERM if sig == signal.SIGHUP else sig, frame)

        return on_signal

    async def _purge_forever(self) -> None:
        days = self.settings.retention_days
        while True:
            with contextlib.suppress(ServiceError):
                # RETENTION_DAYS=0 keeps conversations; short-lived records go all the same.
                removed = await self.services.store.purge(time.time() - days * 86_400 if days else 0.0)
                if removed:
                    log.info("retention: removed %d items and records", removed)
            await asyncio.sleep(PURGE_EVERY_S)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        entry = begin_log()
        scope[GONE] = entry.client_left
        rid = self._request_id(scope, entry)
        status = 0
        rid_header = (b"x-request-id", rid.encode())

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        path = scope["path"]
        method = scope["method"]
        entry.pool = self.services.activity.stoppable
        try:
            try:
                await self._dispatch(scope, receive, tracking_send, path, method)
            except asyncio.CancelledError:
                why = entry.stopped_here()
                if why is None:
                    entry.outcome, entry.message = entry.outcome or "error", entry.message or "cancelled"
                    raise
                raise why from None
            finally:
                entry.answering()
        except ServiceError as exc:
            if status == 0:
                await self._error(scope, receive, tracking_send, exc, entry)
            else:  # the answer had begun (a stream): it ends here, cut
                entry.outcome, entry.message = "error", error_message(exc, "en")
        except Exception as exc:
            frames = traceback.format_list(traceback.extract_tb(exc.__traceback__)[-4:])
            log.error("unexpected %s on %s %s\n%s", type(exc).__name__, method, path, "".join(frames).rstrip())
            if status == 0:
                await self._error(scope, receive, tracking_send, ServiceError("internal"), entry)
        finally:
            refused = scope.get(REFUSED)
            if refused is not None:  # the protocol answered (its body unreadable, stalled): that answer is logged
                status, rid = refused
                entry.outcome, entry.message = "refused", "the request body was refused before it was read"
            self.access.write(entry, rid, method, path, status, started)

    @staticmethod
    def _request_id(scope: Scope, entry: RequestLog) -> str:
        """The client's own id when it is a well-formed one and no credential (its own key, or anything
        shaped like one: it is written to the log), else a new one. A bearer credential is the request's
        secret from here on, whatever the route (an unknown one quotes its path, which may hold it)."""
        given: str | None = None
        bearer: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"authorization":
                bearer = value.decode("latin-1").removeprefix("Bearer ").strip()
        if bearer:
            entry.secrets = (bearer,)
        if given is not None and _REQUEST_ID.match(given) and not holds_secret(given, *((bearer,) if bearer else ())):
            return given
        return random_hex(64)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, path: str, method: str) -> None:
        if path.startswith("/api/static/") and method in ("GET", "HEAD"):
            child = dict(scope, root_path=scope.get("root_path", "") + "/api/static")
            try:
                await self.static(child, receive, send)
            except HTTPException as exc:  # StaticFiles raises its 404 (and 405) instead of answering
                raise NotFound("not_found", method=method, path=path) from exc
            return
        lookup = path[:-1] if len(path) > 1 and path.endswith("/") else path
        found = self.router.match(lookup)
        if found is None:
            raise NotFound("not_found", method=method, path=path)
        route, params = found
        handler = route.handlers.get(method)
        if handler is None and method == "HEAD":  # wherever GET works (RFC 9110); the server sends no body
            handler = route.handlers.get("GET")
        if handler is None:
            raise MethodNotAllowed("method_not_allowed", method=method, path=path, headers={"Allow": route.allow})
        scope["path_params"] = params
        response = await handler(Request(scope, receive), self.services)
        await response(scope, receive, send)

    async def _error(self, scope: Scope, receive: Receive, send: Send, error: ServiceError, entry: RequestLog) -> None:
        path = scope["path"]
        language = "en"
        if not is_openai_path(path):
            language = self.settings.language
            for name, value in scope["headers"]:
                if name == b"accept-language":
                    language = pick_language(value.decode("latin-1"), language)
                    break
        if error.status >= 400:
            entry.message = error_message(error, "en")
        if isinstance(error, StoreUnavailable) and error.reason:
            log.warning("store unavailable: %s", error.reason)
        await error_response(error, path, language)(scope, receive, send)


class CORS(CORSMiddleware):
    """Starlette's CORS, with origins compared as the standard has them: without regard to case, and a
    refused preflight answered in its door's shape (the envelope, OpenAI's error under /v1) with a
    request id, as every other answer is, not Starlette's plain text."""

    def __init__(self, app: ASGIApp, language: str, **options: Any):
        super().__init__(app, **options)
        self.language = language

    def is_allowed_origin(self, origin: str) -> bool:
        return bool(super().is_allowed_origin(origin.lower()))

    def preflight_response(self, request_headers: Any) -> Any:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        language = pick_language(request_headers.get("accept-language"), self.language)
        cors = {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}

        async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
            answer = error_response(BadRequest("cors_refused", what=refused), scope["path"], language)
            request_id = random_hex(64)
            answer.headers.update({**cors, "X-Request-Id": request_id})
            log.info("CORS preflight refused (%s) for %s: 400 (request id %s)", refused, quote(scope["path"]),
                     request_id)  # fmt: skip
            await answer(scope, receive, send)

        return refuse


def create_app(settings: Settings, store: Store | None = None) -> ASGIApp:
    app = App(settings, store)
    if not settings.cors_origins:  # only when asked for: it costs every request a look at its headers
        return app
    return CORS(
        app,
        settings.language,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Content-Type", "Accept-Language", "Authorization", "X-Request-Id"],
        expose_headers=["X-Request-Id", "Retry-After"],
        max_age=600,
    )


def app_from_environment() -> ASGIApp:
    """The factory worker processes call: settings from the environment the parent prepared."""
    from .cli import setup_logging
    from .http_limits import configure

    settings = Settings()
    setup_logging(settings)  # a spawned worker starts with no logging set up
    configure(settings.max_header_bytes, 100, settings.header_timeout_seconds, settings.language)
    return create_app(settings)
