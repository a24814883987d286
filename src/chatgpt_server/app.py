"""Builds the application: routes, error mapping, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .api import docs, gpt, health, token
from .api.envelope import CatchAll, on_http_exception, on_service_error
from .conversation.owners import Owners
from .conversation.service import ChatService
from .errors import ServiceError, StoreUnavailable
from .settings import Settings
from .stores import Store, open_store
from .upstreams.http import Upstream
from .upstreams.signin import TokenService

log = logging.getLogger("chatgpt_server")
PURGE_EVERY_S = 3600


class Services:
    """What a running instance holds: built once at start-up, closed at shutdown."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.upstream = Upstream(settings)
        self.owners = Owners(store, settings.secret_key.get_secret_value().encode() if settings.secret_key else None)
        self.chat = ChatService(settings, store, self.upstream, self.owners)
        self.tokens = TokenService(settings, self.upstream)

    async def start(self) -> None:
        try:
            await self.store.open()
            await self.owners.key()
        except StoreUnavailable:
            # A network store may come back: requests get 503 until it does, then it is picked up.
            log.error("conversation store %s is unavailable; will retry on each request", self.store.kind)

    async def close(self) -> None:
        await self.upstream.close()
        await self.store.close()


async def _purge_forever(services: Services) -> None:
    days = services.settings.retention_days
    while True:
        with contextlib.suppress(ServiceError):
            removed = await services.store.purge(time.time() - days * 86_400)
            if removed:
                log.info("retention: removed %d messages older than %d days", removed, days)
        await asyncio.sleep(PURGE_EVERY_S)


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    services = Services(settings, store or open_store(settings.store_url, settings.retention_days))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        # Everything built so far lives as long as the process: keep the collector from rescanning it.
        gc.collect()
        gc.freeze()
        purge = asyncio.create_task(_purge_forever(services)) if settings.retention_days else None
        try:
            yield
        finally:
            if purge:
                purge.cancel()
            await services.close()

    routes = [
        Route("/api/v1/gpt/getInfo", gpt.get_info, methods=["POST"]),
        Route("/api/v1/token/getInfo", token.get_info, methods=["GET", "POST"]),
        Route("/api", docs.swagger_page, methods=["GET"]),
        Route("/api-json", docs.openapi_json, methods=["GET"]),
        Mount("/api/static", StaticFiles(directory=swagger_ui_path), name="swagger"),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
    ]
    middleware = [Middleware(CatchAll)]
    if settings.cors_origins:  # only when asked for: it costs every request a look at its headers
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type", "Accept-Language"],
                max_age=600,
            ),
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={ServiceError: on_service_error, HTTPException: on_http_exception},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = services
    return app
