"""A stand-in for the web sign-in flow (upstreams.md §3): the web app and the identity service, as two
real HTTP servers that need their cookies between steps and redirect as described.

Accounts: ``accounts[email] = password``; the password ``"<captcha>"`` makes the identity service
ask for a captcha, ``"<sso>"`` marks an account that signs in through Google. ``refuse`` makes step 2
answer OAuthSignin; ``country_block`` makes step 3 end on unsupported_country.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .chatgpt_web import mint

SESSION_COOKIE = "__Secure-next-auth.session-token"


def _page(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=f"<html><body>{body}</body></html>", content_type="text/html")


@dataclass
class SignInStandIn:
    accounts: dict[str, str] = field(default_factory=dict)
    web_url: str = ""
    identity_url: str = ""
    refuse: bool = False
    country_block: bool = False
    resume_origin: str = ""  # set: the password step sends the browser to this origin's resume (a hostile flow)
    resume_hosts: list[str] = field(default_factory=list)  # the Host of every resume request
    sign_ins: dict[str, int] = field(default_factory=dict)
    session_calls: int = 0
    token_ttl: float = 3600
    _csrf: set[str] = field(default_factory=set)
    _states: dict[str, dict[str, Any]] = field(default_factory=dict)  # state -> login progress
    _codes: dict[str, str] = field(default_factory=dict)  # code -> email
    _sessions: dict[str, str] = field(default_factory=dict)  # session token -> email
    seen_queries: list[str] = field(default_factory=list)

    def revoke_sessions(self) -> None:
        self._sessions.clear()

    # -- the web app -----------------------------------------------------------------------------
    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/auth/csrf", self.csrf)
        app.router.add_post("/api/auth/signin/auth0", self.signin)
        app.router.add_get("/api/auth/callback/auth0", self.callback)
        app.router.add_get("/api/auth/session", self.session)
        app.router.add_get("/api/auth/error", self.error_page)
        return app

    async def csrf(self, request: web.Request) -> web.Response:
        token = secrets.token_hex(16)
        self._csrf.add(token)
        response = web.json_response({"csrfToken": token})
        response.set_cookie("__Host-next-auth.csrf-token", token, httponly=True)
        return response

    async def signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        cookie = request.cookies.get("__Host-next-auth.csrf-token")
        if request.query.get("prompt") != "login" or form.get("json") != "true":
            return web.json_response({"url": f"{self.web_url}/api/auth/signin?error=Configuration"})
        if not cookie or form.get("csrfToken") != cookie or cookie not in self._csrf:
            return web.json_response({"url": f"{self.web_url}/api/auth/signin?csrf=true"})
        if self.refuse:
            return web.json_response({"url": f"{self.web_url}/api/auth/signin?csrf=true&error=OAuthSignin"})
        state = secrets.token_urlsafe(12)
        self._states[state] = {"step": "authorize"}
        return web.json_response({"url": f"{self.identity_url}/authorize?client_id=standin&state={state}"})

    async def callback(self, request: web.Request) -> web.Response:
        email = self._codes.pop(request.query.get("code", ""), None)
        if email is None:
            raise web.HTTPFound(f"{self.web_url}/api/auth/error?error=Callback")
        session = secrets.token_urlsafe(24)
        self._sessions[session] = email
        self.sign_ins[email] = self.sign_ins.get(email, 0) + 1
        response = web.HTTPFound("/")
        response.set_cookie(SESSION_COOKIE, session, httponly=True)
        raise response

    async def session(self, request: web.Request) -> web.Response:
        self.session_calls += 1
        email = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if email is None:
            return web.json_response({})  # signed out: the real endpoint answers an empty object
        return web.json_response({"user": {"email": email}, "expires": "2099-01-01T00:00:00Z",
                                  "accessToken": mint(email, ttl=self.token_ttl)})  # fmt: skip

    async def error_page(self, request: web.Request) -> web.Response:
        return _page(403, f"Sign-in error: {request.query.get('error')}")

    # -- the identity service --------------------------------------------------------------------
    def identity_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/authorize", self.authorize)
        app.router.add_get("/u/login/identifier", self.identifier_page)
        app.router.add_post("/u/login/identifier", self.identifier)
        app.router.add_get("/u/login/password", self.password_page)
        app.router.add_post("/u/login/password", self.password)
        app.router.add_get("/authorize/resume", self.resume)
        return app

    def _progress(self, request: web.Request) -> dict[str, Any] | None:
        self.seen_queries.append(request.query_string)
        state = request.query.get("state", "")
        progress = self._states.get(state)
        if progress is None or request.cookies.get("auth0") != progress.get("cookie"):
            return None
        return progress

    async def authorize(self, request: web.Request) -> web.Response:
        state = request.query.get("state", "")
        if state not in self._states:
            return _page(400, "invalid state")
        if self.country_block:
            raise web.HTTPFound(f"{self.web_url}/api/auth/error?error=unsupported_country")
        cookie = secrets.token_hex(8)
        self._states[state]["cookie"] = cookie
        response = web.HTTPFound(f"/u/login/identifier?state={state}")
        response.set_cookie("auth0", cookie, httponly=True)
        raise response

    async def identifier_page(self, request: web.Request) -> web.Response:
        if self._progress(request) is None:
            return _page(400, "session expired")
        return _page(200, f"<form method=post action='?state={request.query['state']}'>Email</form>")

    async def identifier(self, request: web.Request) -> web.Response:
        progress = self._progress(request)
        form = await request.post()
        if progress is None or form.get("state") != request.query.get("state") or form.get("action") != "default":
            return _page(400, "session expired")
        progress["username"] = form.get("username")
        raise web.HTTPFound(f"/u/login/password?state={request.query['state']}")

    async def password_page(self, request: web.Request) -> web.Response:
        if self._progress(request) is None:
            return _page(400, "session expired")
        return _page(200, "<form method=post>Password</form>")

    async def password(self, request: web.Request) -> web.Response:
        progress = self._progress(request)
        form = await request.post()
        if progress is None or form.get("state") != request.query.get("state"):
            return _page(400, "session expired")
        email = str(form.get("username", ""))
        if email != progress.get("username"):
            return _page(400, "session expired")
        expected = self.accounts.get(email)
        if expected == "<captcha>":
            return _page(400, "Please solve the captcha challenge to continue.")
        if expected == "<sso>":
            return _page(400, "This account uses a social connection: continue with Google.")
        if expected is None or form.get("password") != expected:
            return _page(400, "Wrong email or password")
        resume = secrets.token_urlsafe(12)
        self._states[resume] = {"cookie": progress["cookie"], "email": email}
        raise web.HTTPFound(
            f"{self.resume_origin}/authorize/resume?state={resume}",
            text=f"Found. Redirecting to /authorize/resume?state={resume}",
        )

    async def resume(self, request: web.Request) -> web.Response:
        self.resume_hosts.append(request.host)
        progress = self._progress(request)
        if progress is None or "email" not in progress:
            return _page(400, "invalid state")
        code = secrets.token_urlsafe(12)
        self._codes[code] = progress["email"]
        raise web.HTTPFound(f"{self.web_url}/api/auth/callback/auth0?code={code}&state={request.query['state']}")
