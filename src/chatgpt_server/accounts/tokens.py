"""Verifying ChatGPT account tokens: RS256 JWTs checked against the issuer's published keys.

Claims are trusted only after the signature, the issuer and the audience check out. Keys come from
``{issuer}/.well-known/jwks.json``, cached, and fetched again when a token names a key we do not know
(at most once every ``REFETCH_S``, so a flood of made-up key ids cannot hammer the issuer; every
``NEW_KEY_REFETCH_S`` for a token issued after the last fetch, which may be signed with a key new since: until
that fetch such a token has no verdict, never "not the issuer's"). Verified
claims are cached per token, so a request pays a dictionary lookup, not an RSA verification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from ..upstreams.chatgpt_web import jwt_claims
from ..upstreams.http import TRANSPORT_ERRORS, HTTPClient, read_limited

ACCESS_AUDIENCE = "https://api.openai.com/v1"
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"
REFETCH_S = 30.0
NEW_KEY_REFETCH_S = 2.0
ISSUED_LEEWAY_S = 60.0  # the issuer's clock and ours may differ by this much (as the expiry's leeway)
CACHE_MAX = 4096

log = logging.getLogger("chatgpt_server.accounts")


class Unverifiable(Exception):
    """The keys could not be fetched (or not yet): the token can be neither trusted nor refused."""

    def __init__(self, reason: str, retry_after_s: float = REFETCH_S):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified token says about its account."""

    account_id: str
    user_id: str
    email: str
    plan: str
    exp: float
    iat: float | None = None  # when the issuer minted it: tells a sign-in's tokens from an older one's

    @property
    def key(self) -> str:
        return f"{self.account_id}:{self.user_id}"


def identity_of(claims: dict[str, Any]) -> Identity | None:
    auth = claims.get(AUTH_CLAIM)
    auth = auth if isinstance(auth, dict) else {}
    profile = claims.get(PROFILE_CLAIM)
    profile = profile if isinstance(profile, dict) else {}
    account = auth.get("chatgpt_account_id")
    user = auth.get("chatgpt_user_id") or auth.get("user_id") or claims.get("sub")
    email = profile.get("email") or claims.get("email") or ""
    plan = auth.get("chatgpt_plan_type") or ""
    exp = claims.get("exp")
    if not isinstance(account, str) or not account or not isinstance(user, str) or not user:
        return None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    iat = claims.get("iat")
    minted = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    return Identity(account[:200], user[:200], str(email)[:320], str(plan)[:40], float(exp), minted)


class Verifier:
    def __init__(self, http: HTTPClient, issuer: str, timeout_s: float = 10.0):
        self.http = http
        self.issuer = issuer
        self.timeout_s = timeout_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = -REFETCH_S
        self._fetched_wall = 0.0  # when the keys were last fetched, by the clock tokens' iat is on
        self._failed: str | None = None  # why the last fetch failed (None: it did not)
        self._lock = asyncio.Lock()
        self._verified: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    async def verify(self, token: str, audience: str = ACCESS_AUDIENCE, refetch: bool = False) -> dict[str, Any] | None:
        """The claims of a token whose signature, issuer and audience check out (expired or not: the
        caller decides what expiry means), None for one that does not; ``Unverifiable`` if the keys
        cannot be had. ``refetch``: a key not known is fetched even within ``REFETCH_S`` of the last
        fetch (for a token the issuer just gave us, which may be signed with a key new since)."""
        cache_key = audience + "\0" + token
        if cache_key in self._verified:
            self._verified.move_to_end(cache_key)
            return self._verified[cache_key]
        import jwt  # here, not at the top: PyJWT brings cryptography (~10 MB) to processes that need it

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return self._remember(cache_key, None)
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            return self._remember(cache_key, None)
        key = await self._key(kid, refetch, token)
        if key is None:  # not remembered: the issuer may publish this key a moment later
            return None
        try:
            claims = jwt.decode(token, key=key, algorithms=["RS256"], audience=audience, issuer=self.issuer,
                                options={"verify_exp": False, "require": ["exp"]}, leeway=60)  # fmt: skip
        except jwt.PyJWTError:
            return self._remember(cache_key, None)
        return self._remember(cache_key, claims if isinstance(claims, dict) else None)

    def _remember(self, key: str, claims: dict[str, Any] | None) -> dict[str, Any] | None:
        self._verified[key] = claims
        if len(self._verified) > CACHE_MAX:
            self._verified.popitem(last=False)
        return claims

    async def _key(self, kid: str, refetch: bool = False, token: str = "") -> Any:
        if kid in self._keys:
            return self._keys[kid]
        # A token issued after the last fetch may be signed with a key new since (the issuer rotated):
        # "no such key" is a verdict on it only once the keys were fetched after it was issued.
        issued = (jwt_claims(token) or {}).get("iat")
        # Unverified: an iat from the future (a forger's) counts as none, so it cannot buy fetches.
        issued = issued if isinstance(issued, int | float) and issued <= time.time() + ISSUED_LEEWAY_S else None
        async with self._lock:  # newer than the keys as they are once the lock is ours (a waiter's fetch counts)
            newer = issued is not None and issued > self._fetched_wall - ISSUED_LEEWAY_S
            since = time.monotonic() - self._fetched_at
            if kid not in self._keys and (refetch or since >= REFETCH_S or (newer and since >= NEW_KEY_REFETCH_S)):
                await self._fetch()
                newer = False  # fetched now: what the issuer publishes is known
        if kid not in self._keys and self._failed is not None:
            # Until a fetch succeeds, a key we do not know may be one the issuer has: no verdict.
            raise Unverifiable(self._failed)
        if kid not in self._keys and newer:
            raise Unverifiable("a key newer than the keys last fetched, fetched again in moments", NEW_KEY_REFETCH_S)
        return self._keys.get(kid)

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()  # a failed fetch counts too: an issuer that is down is not hammered
        wall = time.time()
        try:
            await self._fetch_keys()
        except Unverifiable as exc:
            self._failed = str(exc)
            log.warning("the issuer's keys could not be fetched (%s): its tokens are refused with 503 until they "
                        "are, in %.0f s at the earliest", exc, REFETCH_S)  # fmt: skip
            raise
        self._failed = None
        self._fetched_wall = wall

    async def _fetch_keys(self) -> None:
        url = self.issuer + "/.well-known/jwks.json"
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.request("GET", url)
                try:
                    if response.status != 200:
                        raise Unverifiable(f"JWKS answered HTTP {response.status}")
                    document = orjson.loads(await read_limited(response, 1 << 20, "issuer"))
                finally:
                    response.release()
        except Unverifiable:
            raise
        except (*TRANSPORT_ERRORS, orjson.JSONDecodeError, TimeoutError) as exc:
            raise Unverifiable(type(exc).__name__) from exc
        except Exception as exc:  # a BadGateway from read_limited
            raise Unverifiable(type(exc).__name__) from exc
        import jwt

        listed = document.get("keys") if isinstance(document, dict) else None
        keys: dict[str, Any] = {}
        for jwk in listed if isinstance(listed, list) else []:
            try:
                if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and isinstance(jwk.get("kid"), str):
                    keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256").key
            except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError):
                continue  # a key of the wrong shape is not a key
        self._keys = keys
