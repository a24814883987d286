"""The token endpoint: an access token from email and password, by the web app's sign-in flow.

Tokens are cached **in memory only**: an access token and the session token behind it are bearer
credentials, and a cache on disk or in a shared store would need an encryption key kept next to it.
Signing in is rare (a token lives for days), so each instance signing in once for itself costs
little. An entry is given back only to a caller presenting the same email *and* password (compared
by keyed hash; the password itself is never kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import orjson

from ..core.locks import KeyedLocks
from ..errors import BadGateway, BadRequest, Forbidden, ServiceError, TooManyRequests, Unauthorized
from ..settings import Settings
from ..upstreams.chatgpt_web import expiry
from ..upstreams.http import TRANSPORT_ERRORS, HTTPClient, host_of, redirect_error, transport_error

MAX_HOPS = 10

SESSION_COOKIE = "__Secure-next-auth.session-token"
_STATE = re.compile(r"state=([A-Za-z0-9._~%-]+)")
_SSO = ("google", "microsoft", "windowslive", "apple", "social connection", "sso")


@dataclass
class CachedToken:
    verifier: str
    access_token: str
    session_token: str | None
    expires_at: float


@dataclass
class Page:
    status: int
    url: str
    headers: Any
    text: str

    def json(self, step: int) -> dict[str, Any]:
        try:
            value = orjson.loads(self.text)
        except orjson.JSONDecodeError as exc:
            raise BadGateway("signin_changed", step=step, detail="the answer is not JSON") from exc
        if not isinstance(value, dict):
            raise BadGateway("signin_changed", step=step, detail="the answer is not a JSON object")
        return value

    def location(self) -> str | None:
        where = self.headers.get("Location")
        return urljoin(self.url, where) if where else None


def _decode(raw: bytes, charset: str | None) -> str:
    """A page's text in the charset it names, else UTF-8 (a name Python does not know is not an error)."""
    try:
        return raw.decode(charset or "utf-8", "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


class SignIn:
    """One run of the flow with its own cookie jar."""

    def __init__(self, upstream: HTTPClient, settings: Settings, timeout_s: float):
        self.upstream = upstream
        self.web = settings.chatgpt_web_url
        self.identity = _origin(settings.auth_url)
        self.allowed = {_origin(self.web), self.identity}
        self.timeout_s = timeout_s
        self.session = upstream.cookie_session()

    async def close(self) -> None:
        await self.session.close()

    async def fetch(self, step: int, method: str, url: str, *, follow: bool = True, **kw: Any) -> Page:
        """One step. Redirects are followed by hand (with ``follow``), and only within the web app and
        the identity service: a redirect anywhere else is a 502 naming the host that sent it."""
        if self.upstream.proxy:
            kw.setdefault("proxy", self.upstream.proxy)
        try:
            async with asyncio.timeout(self.timeout_s):
                for _ in range(MAX_HOPS):
                    async with self.session.request(method, url, allow_redirects=False, **kw) as resp:
                        text = _decode(await resp.content.read(1 << 20), resp.charset)
                        page = Page(resp.status, str(resp.url), resp.headers, text)
                    where = page.location()
                    if not follow or page.status not in (301, 302, 303, 307, 308) or where is None:
                        break
                    if _origin(where) not in self.allowed:
                        raise redirect_error(host_of(url))
                    method, url = ("GET" if page.status in (301, 302, 303) else method), where
                    if method == "GET":
                        kw.pop("data", None)
                else:
                    raise redirect_error(host_of(url))
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, host_of(url), self.timeout_s) from exc
        if "unsupported_country" in page.text or "unsupported_country" in (page.location() or page.url):
            raise Forbidden("signin_country")
        return page

    async def run(self, email: str, password: str) -> tuple[str, str | None]:
        """All eight steps; returns (access token, session token)."""
        csrf = (await self.fetch(1, "GET", f"{self.web}/api/auth/csrf")).json(1).get("csrfToken")
        if not isinstance(csrf, str):
            raise BadGateway("signin_changed", step=1, detail="no csrfToken")
        page = await self.fetch(
            2, "POST", f"{self.web}/api/auth/signin/auth0?prompt=login",
            data={"callbackUrl": "/", "csrfToken": csrf, "json": "true"},
        )  # fmt: skip
        authorize = page.json(2).get("url")
        if not isinstance(authorize, str) or not authorize.startswith("http"):
            raise BadGateway("signin_changed", step=2, detail="no authorize url")
        if "error=OAuthSignin" in authorize or "error=" in urlsplit(authorize).query:
            raise TooManyRequests("signin_refused", step=2)
        if _origin(authorize) not in self.allowed:
            raise BadGateway("signin_changed", step=2, detail=f"the flow leads to {host_of(authorize)}")
        page = await self.fetch(3, "GET", authorize)
        state = _state_of(page)
        if page.status != 200 or not state:
            raise BadGateway("signin_changed", step=3, detail=f"no login state (HTTP {page.status})")
        identity = _origin(page.url)
        if identity != self.identity:
            # The password goes only to the identity service we were configured to trust.
            detail = f"the flow leads to {host_of(identity)}, not CHATGPT_SERVER_AUTH_URL"
            raise BadGateway("signin_changed", step=3, detail=detail)
        page = await self.fetch(
            4, "POST", f"{identity}/u/login/identifier?state={state}",
            data={"state": state, "username": email, "action": "default"},
        )  # fmt: skip
        self._check_login_page(4, page)
        page = await self.fetch(
            5, "POST", f"{identity}/u/login/password?state={state}", follow=False,
            data={"state": state, "username": email, "password": password, "action": "default"},
        )  # fmt: skip
        self._check_login_page(5, page)
        resume = page.location() or _resume_in(page.text, identity)
        if page.status not in (301, 302, 303) or not resume or "/authorize/resume" not in resume:
            raise BadGateway("signin_changed", step=5, detail=f"no redirect to /authorize/resume (HTTP {page.status})")
        # Each hop stays where it belongs (the resume on the identity service, the callback on the web
        # app): a redirect elsewhere would have us call, and take a session cookie from, any host.
        if _origin(resume) != identity:
            raise redirect_error(host_of(identity))
        callback = (await self.fetch(6, "GET", resume, follow=False)).location()
        if not callback or "/api/auth/callback" not in callback:
            raise BadGateway("signin_changed", step=6, detail="no redirect to the callback")
        if _origin(callback) != _origin(self.web):
            raise redirect_error(host_of(identity))
        page = await self.fetch(7, "GET", callback, follow=False)
        session_token = self.session_token()
        if not session_token:
            raise BadGateway("signin_changed", step=7, detail=f"no {SESSION_COOKIE} cookie")
        return await self.access_token(session_token), self.session_token()

    async def access_token(self, session_token: str) -> str:
        """Step 8: the session endpoint turns a session token into an access token."""
        page = await self.fetch(8, "GET", f"{self.web}/api/auth/session", cookies={SESSION_COOKIE: session_token})
        token = page.json(8).get("accessToken") if page.status == 200 else None
        if not isinstance(token, str) or not token:
            raise BadGateway("signin_changed", step=8, detail="no accessToken in the session")
        return token

    def session_token(self) -> str | None:
        for cookie in self.session.cookie_jar:
            if cookie.key == SESSION_COOKIE:
                return cookie.value
        return None

    @staticmethod
    def _check_login_page(step: int, page: Page) -> None:
        if page.status < 400:
            return
        text = page.text.lower()
        if "captcha" in text:
            raise Forbidden("signin_captcha", step=step)
        if any(word in text for word in _SSO):
            raise BadRequest("signin_sso")
        if page.status in (400, 401, 403) and step == 5:
            raise Unauthorized("signin_wrong_password", step=step)
        raise BadGateway("signin_changed", step=step, detail=f"HTTP {page.status}")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _state_of(page: Page) -> str | None:
    found = parse_qs(urlsplit(page.url).query).get("state")
    if found:
        return found[0]
    match = _STATE.search(page.text)
    return match.group(1) if match else None


def _resume_in(text: str, identity: str) -> str | None:
    match = re.search(r"(/authorize/resume\?state=[A-Za-z0-9._~%-]+)", text)
    return identity + match.group(1) if match else None


def _nothing() -> None:
    return None


class TokenService:
    """Get (cached while valid) or refresh access tokens; one sign-in at a time per account."""

    def __init__(self, settings: Settings, upstream: HTTPClient):
        self.settings = settings
        self.upstream = upstream
        self._cache: dict[str, CachedToken] = {}
        self._locks = KeyedLocks()
        self._key = secrets.token_bytes(32)  # for this process's keyed hashes only

    def _hash(self, *parts: str) -> str:
        return hmac.new(self._key, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    async def token(
        self, email: str, password: str, refresh: bool, before_sign_in: Callable[[], None] = _nothing
    ) -> str:
        """The account's access token: from the cache, from its kept session, or by signing in with the
        password (``before_sign_in`` first: it may refuse)."""
        account = self._hash(email.lower())
        verifier = self._hash(email.lower(), password)
        release = await self._locks.acquire(account)
        try:
            cached = self._cache.get(account)
            if cached and not hmac.compare_digest(cached.verifier, verifier):
                cached = None  # another password: sign in, which checks it upstream
            if cached and not refresh and cached.expires_at - self.settings.token_margin_seconds > time.time():
                return cached.access_token
            # Asked to refresh, or a "get" whose token is about to expire: a kept session gives a fresh
            # token without signing in with the password again (which meets captchas and rate limits).
            if cached and cached.session_token:
                try:
                    return await self._refresh(account, cached)
                except ServiceError:
                    pass  # the kept session is gone: sign in again
            before_sign_in()
            return await self._sign_in(account, verifier, email, password)
        finally:
            release()

    async def _refresh(self, account: str, cached: CachedToken) -> str:
        assert cached.session_token
        flow = SignIn(self.upstream, self.settings, self.settings.timeout_ms / 1000)
        try:
            access = await flow.access_token(cached.session_token)
            session = flow.session_token() or cached.session_token
        finally:
            await flow.close()
        self._keep(account, cached.verifier, access, session)
        return access

    async def _sign_in(self, account: str, verifier: str, email: str, password: str) -> str:
        flow = SignIn(self.upstream, self.settings, self.settings.timeout_ms / 1000)
        try:
            access, session = await flow.run(email, password)
        finally:
            await flow.close()
        self._keep(account, verifier, access, session)
        return access

    def _keep(self, account: str, verifier: str, access: str, session: str | None) -> None:
        expires_at = expiry(access) or time.time() + 3600
        self._cache[account] = CachedToken(verifier, access, session, expires_at)
