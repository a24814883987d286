"""The token door: access tokens for mode 2.

- ``GET``/``POST /api/v1/token/getInfo``, the original's route. ``type=2`` with a verified access
  token of a stored account (as ``token``, or ``Authorization: Bearer``) returns that account's
  current access token, refreshed if needed. Otherwise email and password go through the legacy
  web sign-in (``CHATGPT_SERVER_AUTH_URL``); an email and password alone never return a stored
  account's token. GET takes the query string, as the original did; POST (JSON or form) is the one
  to use, since a password in a URL ends up in proxy and server logs.
- ``POST /api/v1/token/device`` and ``POST /api/v1/token/device/poll``: device sign-in over HTTP, for
  servers without a terminal (what ``chatgpt-server login`` does).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ..core.activity import current_log
from ..core.rates import Window, caller_of
from ..errors import BadGateway, TooManyRequests
from .envelope import ok
from .http import authorization, read_json
from .original_request import device_id, header_safe, parse_token

if TYPE_CHECKING:
    from ..app import Services


def _bounded(window: Window, request: Request, key: str) -> None:
    """429 with Retry-After once the client's address has had its share of ``window``."""
    wait = window.take(caller_of(request.client.host) if request.client else "")
    if wait:
        seconds = math.ceil(wait)
        raise TooManyRequests(key, headers={"Retry-After": str(seconds)}, seconds=seconds)


def _presented(request: Request, values: dict[str, Any]) -> str | None:
    token = values.get("token")
    if isinstance(token, str) and token:
        return token
    auth = authorization(request)
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


# These wait on an issuer, and what they spend of a single-use credential runs to its end on its own
# (accounts.service): a client that leaves, or the shutdown, may stop them anywhere.
async def get_info(request: Request, services: Services) -> Response:
    log = current_log()
    log.stoppable()
    if request.method in ("GET", "HEAD"):
        values: Any = dict(request.query_params)
        status = 200
    else:
        values = await read_json(request, services.settings.max_body_bytes, form=True)
        if not isinstance(values, dict):
            values = {}
        status = 201
    log.route = "token"
    token = _presented(request, values)
    password = values.get("password")
    log.secrets = (*log.secrets, *(v for v in (token, password) if isinstance(v, str)))
    if token is not None and str(values.get("type", "")).strip() == "2" and header_safe(token):
        current = await services.accounts.current_for(token)
        if current is not None:
            log.route = "token account"
            return ok(current, status=status)
    query = parse_token(values)
    log.route = "token signin"

    def limited() -> None:
        # Each password sign-in is a call to the identity service that nobody authenticated (and a
        # guess at a password): bounded per client address. Answers from the cache are not.
        _bounded(services.password_sign_ins, request, "password_sign_ins_limited")

    try:
        access_token = await services.tokens.token(query.email, query.password, query.refresh, limited)
    except BadGateway as exc:
        if exc.key == "signin_changed":
            exc.params["detail"] = f"{exc.params.get('detail', '')}; use device sign-in (POST /api/v1/token/device)"
        raise
    return ok(access_token, status=status)


async def device_start(request: Request, services: Services) -> Response:
    current_log().route = "token device"
    current_log().stoppable()
    await read_json(request, services.settings.max_body_bytes, form=True)
    # Each start is a call to the issuer that nobody authenticated: bounded per client address.
    _bounded(services.device_starts, request, "device_sign_ins_limited")
    return ok(await services.accounts.start_device(), status=201)


async def device_poll(request: Request, services: Services) -> Response:
    current_log().route = "token device poll"
    current_log().stoppable()
    values = await read_json(request, services.settings.max_body_bytes, form=True)
    return ok(await services.accounts.poll_device(device_id(values)), status=201)
