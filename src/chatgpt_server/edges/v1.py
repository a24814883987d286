"""What the OpenAI-shaped doors share: the caller's credential and owner, the upstream that serves a
model, list paging, and the SDK's retry after a refused account token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..core.activity import current_log
from ..core.turns import OpenTurn, TurnSpec
from ..errors import BadRequest, Unauthorized
from ..upstreams.base import Target
from .http import authorization
from .openai_items import invalid
from .original_request import MAX_KEY, MAX_MODEL, header_safe

if TYPE_CHECKING:
    from ..accounts.service import Credential
    from ..app import Services

MAX_LIMIT = 100
_DIGITS = re.compile(r"[0-9]{1,4}")


def model_name(body: dict[str, Any]) -> str:
    """The request's model: missing, or present and not a name, each said as such."""
    model = body.get("model")
    if model is None or model == "":
        raise BadRequest("missing_param", param="model")
    if not isinstance(model, str) or len(model) > 256 or not model.isprintable():
        raise invalid("model", "expected a model name of at most 256 printable characters")
    return model


def api_key(request: Request) -> str:
    """The caller's credential, from ``Authorization: Bearer``: it is what the upstream gets, and
    what every stored response and conversation belongs to."""
    auth = authorization(request)
    if auth[:7].lower() != "bearer " or not auth[7:].strip():
        raise Unauthorized("missing_api_key")
    key = auth[7:].strip()
    if not header_safe(key) or len(key) > MAX_KEY:
        raise Unauthorized("malformed_api_key")
    current_log().secrets = (key,)  # a message that quotes the client never quotes its key
    return key


def scoped_target(request: Request, base_url: str, key: str) -> Target:
    """A chat upstream with the caller's key, and the organization and project the client named (the
    SDK's ``organization=`` and ``project=``): a key of several is billed and scoped as asked."""
    scope: list[str | None] = []
    for name in ("openai-organization", "openai-project"):
        values = request.headers.getlist(name)
        if len(values) > 1 or (values and (not header_safe(values[0]) or len(values[0]) > MAX_MODEL)):
            raise invalid(name, "expected one printable ASCII value of at most 256 characters")
        scope.append(values[0].strip() or None if values else None)
    return Target("chat", base_url, key, organization=scope[0], project=scope[1])


@dataclass(slots=True)
class Caller:
    owner: str
    target: Target
    credential: Credential | None = None  # a stored ChatGPT account's, for a retry after a 401


async def owner_of(request: Request, services: Services) -> str:
    """The owner of a caller's records, whichever upstream their key is for: a verified account
    token belongs to the account; any other key, once one of the configured upstreams has not
    refused it, to itself."""
    key = api_key(request)
    identity = await services.accounts.identify_owner(key) if key.count(".") == 2 else None
    if identity is not None:
        return await services.owners.of("account\0" + identity.key)
    await services.keys.check_any(key, services.models.chat_bases())
    return await services.owners.of(key)


async def caller_for(request: Request, services: Services, model: str) -> Caller:
    key = api_key(request)
    route = services.models.route(model)
    if route.upstream == "codex":
        scoped_target(request, route.base_url, key)  # checked as on every door; a ChatGPT account has no project
        credential = await services.accounts.credential(key)
        target = Target("codex", route.base_url, credential.access_token, account_id=credential.account_id)
        return Caller(credential.owner, target, credential)
    identity = await services.accounts.identify_owner(key) if key.count(".") == 2 else None
    if identity is not None:
        owner = await services.owners.of("account\0" + identity.key)
    else:
        await services.keys.check(key, route.base_url)  # only the upstream this model goes to
        owner = await services.owners.of(key)
    return Caller(owner, scoped_target(request, route.base_url, key))


async def open_turn(services: Services, spec: TurnSpec, caller: Caller) -> OpenTurn:
    return await services.accounts.open_turn(services.turns, spec, caller.credential)


@dataclass(frozen=True, slots=True)
class Page:
    after: str | None
    limit: int
    descending: bool


def page_of(request: Request, default_order: str = "desc") -> Page:
    query = request.query_params
    limit_raw = query.get("limit", "20")
    if not _DIGITS.fullmatch(limit_raw) or not 1 <= int(limit_raw) <= MAX_LIMIT:
        raise invalid("limit", f"expected an integer from 1 to {MAX_LIMIT}")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise invalid("order", "expected asc or desc")
    after = query.get("after") or None
    if after is not None and (len(after) > 256 or not header_safe(after)):
        raise invalid("after", "not an id")
    return Page(after, int(limit_raw), order == "desc")


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
