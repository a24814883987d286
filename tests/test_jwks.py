"""The account-token verifier against an issuer whose key set (JWKS) is of every wrong shape, over real
HTTP: a token is then unverified (None) or the keys unavailable (``Unverifiable``), never another
exception; and an issuer that keeps failing is asked at most once per ``REFETCH_S``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from chatgpt_server.accounts.tokens import Unverifiable, Verifier
from chatgpt_server.settings import Settings
from chatgpt_server.upstreams.http import HTTPClient

from .harness import ThreadedApps
from .standins.chatgpt_auth import ChatGPTAuthStandIn

GOOD_KEY = {"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}
HOSTILE_JWKS: dict[str, bytes] = {
    "keys_int": b'{"keys": 7}',
    "keys_string": b'{"keys": "kid-1"}',
    "keys_object": b'{"keys": {"kid-1": {"kty": "RSA"}}}',
    "keys_null": b'{"keys": null}',
    "no_keys": b"{}",
    "a_list": b"[1, 2]",
    "key_n_number": orjson.dumps({"keys": [{**GOOD_KEY, "n": 12345}]}),
    "key_n_not_base64": orjson.dumps({"keys": [{**GOOD_KEY, "n": "!!!"}]}),
    "key_e_huge": orjson.dumps({"keys": [{**GOOD_KEY, "e": "A" * 5000}]}),
    "key_kid_list": orjson.dumps({"keys": [{**GOOD_KEY, "kid": ["a"]}]}),
    "key_alg_odd": orjson.dumps({"keys": [{**GOOD_KEY, "alg": {"x": 1}}]}),
    "not_json": b"<html>",
    "deep": b'{"keys": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "empty": b"",
}


class Issuer:
    def __init__(self) -> None:
        self.document = b"{}"
        self.status = 200
        self.calls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.jwks)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.Response(status=self.status, body=self.document, content_type="application/json")


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[Issuer, str]]:
    apps = ThreadedApps()
    found = Issuer()
    url = apps.serve(found.app())
    yield found, url
    apps.close()


def verify_with(url: str, tokens: list[str]) -> list[Any]:
    """Each token's outcome: its claims, None, or the exception class it raised."""

    async def body() -> list[Any]:
        http = HTTPClient(Settings())
        verifier = Verifier(http, url, timeout_s=5)
        out: list[Any] = []
        try:
            for token in tokens:
                try:
                    out.append(await verifier.verify(token))
                except Unverifiable:
                    out.append(Unverifiable)
        finally:
            await http.close()
        return out

    return asyncio.run(body())


@pytest.mark.parametrize("name", sorted(HOSTILE_JWKS))
def test_a_key_set_of_any_shape_leaves_the_token_unverified(issuer: tuple[Issuer, str], name: str) -> None:
    found, url = issuer
    found.document, found.status = HOSTILE_JWKS[name], 200
    auth = ChatGPTAuthStandIn(issuer=url)
    token = auth.mint("jwks@example.com", "acct-jwks").access_token
    assert verify_with(url, [token]) in ([None], [Unverifiable])


def test_a_failing_issuer_is_asked_once_per_refetch_interval(issuer: tuple[Issuer, str]) -> None:
    found, url = issuer
    found.document, found.status = b"down", 503
    auth = ChatGPTAuthStandIn(issuer=url)
    tokens = [auth.forge("unknown_kid") for _ in range(20)]  # each names a kid the issuer might have added
    calls = found.calls
    outcomes = verify_with(url, tokens)
    assert outcomes[0] is Unverifiable and all(o in (None, Unverifiable) for o in outcomes)
    assert found.calls == calls + 1


def test_the_issuers_own_keys_verify(issuer: tuple[Issuer, str]) -> None:
    """The same route, serving a good key set, verifies (so the tests above fail for the right reason)."""
    found, url = issuer
    auth = ChatGPTAuthStandIn(issuer=url)
    found.document, found.status = orjson.dumps(auth.jwks()), 200
    claims = verify_with(url, [auth.mint("jwks@example.com", "acct-jwks").access_token])[0]
    assert isinstance(claims, dict) and claims["iss"] == url
