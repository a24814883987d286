"""A stand-in for auth.openai.com as programs use it with a ChatGPT account (upstreams.md §5).

A real HTTP server, as strict as the real one:

- ``GET /.well-known/jwks.json`` serves the RSA keys tokens are signed with (``rotate_key``);
- the device-code flow: ``POST /api/accounts/deviceauth/usercode`` → poll
  ``POST /api/accounts/deviceauth/token`` (403 while pending, 200 once approved, only once) →
  ``POST /oauth/token`` (form-encoded authorization_code grant, PKCE verifier checked, codes single-use);
- refresh: ``POST /oauth/token`` with a JSON refresh_token grant; refresh tokens rotate and are
  single-use: presenting a used one answers ``refresh_token_reused`` and revokes the whole grant.

Tests play the person with ``POST /_test/approve`` (or ``approve``), create accounts without the device
flow with ``mint``, build bad tokens with ``forge``, and steer the grant with ``expire_refresh`` /
``invalidate``. ``verify_access`` is what the Codex stand-in checks bearer tokens with.

Set ``issuer`` to the served URL right after serving, before minting: tokens carry it as ``iss``,
and the device flow's redirect URI is ``{issuer}/deviceauth/callback``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
ACCESS_AUDIENCE = "https://api.openai.com/v1"
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"
PLANS = ("free", "plus", "pro", "team", "business", "enterprise", "edu")
FORGERIES = ("foreign_key", "none", "hs256_public_key", "expired", "wrong_audience", "wrong_issuer", "unknown_kid")
SCOPE = "openid profile email offline_access"

ErrorStyle = Literal["nested", "flat"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def pkce_challenge(verifier: str) -> str:
    """S256: base64url(sha256(verifier)), unpadded."""
    return b64url(hashlib.sha256(verifier.encode()).digest())


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": _uint(numbers.n),
                "e": _uint(numbers.e)}  # fmt: skip

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def encode_jwt(claims: dict[str, Any], alg: str, key: rsa.RSAPrivateKey | bytes | None, kid: str | None) -> str:
    """A JWT, built by hand so tests can also build the ones a real issuer never would (alg none, HS256)."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(claims))}".encode()
    if alg == "none":
        signature = b""
    elif alg == "HS256":
        assert isinstance(key, bytes)
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    elif alg == "RS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError(f"unsupported alg {alg}")
    return f"{signing_input.decode()}.{b64url(signature)}"


@dataclass
class Tokens:
    access_token: str
    id_token: str
    refresh_token: str
    expires_at: float  # the access token's exp
    grant_id: str = ""


@dataclass
class Grant:
    """One sign-in: an account, its current refresh token and every token it was issued."""

    id: str
    email: str
    account_id: str
    plan: str
    user_id: str
    refresh_token: str
    used_refresh: set[str] = field(default_factory=set)
    access_jtis: set[str] = field(default_factory=set)
    revoked: bool = False  # whole grant revoked: refresh answers refresh_token_invalidated, access tokens refused
    refresh_expired: bool = False  # refresh answers refresh_token_expired (access tokens stay valid until exp)
    refreshes: int = 0


@dataclass
class DeviceCode:
    device_auth_id: str
    user_code: str
    created: float
    approved: dict[str, str] | None = None  # email, account_id, plan, user_id


@dataclass
class AuthCode:
    code: str
    challenge: str
    verifier: str
    account: dict[str, str]
    created: float
    redeemed_grant: str | None = None


@dataclass
class ChatGPTAuthStandIn:
    issuer: str = "https://auth.openai.com"
    interval: str = "1"  # the device flow's poll interval, as the real service sends it: a string of seconds
    code_ttl_s: float = 900  # device codes
    auth_code_ttl_s: float = 600  # authorization codes
    access_lifetime_s: float = 3600
    device_enabled: bool = True
    rotate_refresh: bool = True  # False: a refresh answers without refresh_token and the old one stays valid
    refresh_delay: float = 0.0  # seconds a refresh call waits before it is decided (concurrency tests)
    exchange_delay: float = 0.0  # seconds an authorization code's exchange waits before it is decided
    refresh_outages: int = 0  # the next refreshes answered 500 (the issuer failing), the grant untouched
    # The next refreshes answered with (status, error) as given, the grant untouched; "{presented}" in the
    # error stands for the refresh token sent (an issuer that echoes it); a dict is the whole body.
    refresh_answers: list[tuple[int, str | dict[str, Any]]] = field(default_factory=list, repr=False)
    error_style: ErrorStyle = "nested"  # shape of /oauth/token errors (see _token_error)
    keys: list[SigningKey] = field(default_factory=list, repr=False)  # the JWKS; the last one signs
    jwks_calls: int = 0
    jwks_down: bool = False  # the keys endpoint answers 503 (the issuer's keys out of reach)
    refresh_calls: list[tuple[float, str | None]] = field(default_factory=list, repr=False)  # (time, grant id or None)
    token_calls: list[dict[str, Any]] = field(default_factory=list, repr=False)  # every /oauth/token body as parsed
    polls: list[tuple[float, str]] = field(default_factory=list, repr=False)  # (time, device_auth_id) per token poll
    grants: dict[str, Grant] = field(default_factory=dict, repr=False)
    devices: dict[str, DeviceCode] = field(default_factory=dict, repr=False)  # device_auth_id -> code
    codes: dict[str, AuthCode] = field(default_factory=dict, repr=False)
    _refresh_index: dict[str, str] = field(
        default_factory=dict, repr=False
    )  # every refresh token ever issued -> grant id
    _access_index: dict[str, str] = field(default_factory=dict, repr=False)  # access token jti -> grant id

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys.append(SigningKey(f"kid-{uuid.uuid4().hex[:12]}", new_rsa_key()))

    @property
    def key(self) -> SigningKey:
        return self.keys[-1]

    @property
    def redirect_uri(self) -> str:
        return f"{self.issuer}/deviceauth/callback"

    def rotate_key(self, drop_old: bool = False) -> SigningKey:
        """A new signing key and kid; the JWKS lists it (and the old ones unless ``drop_old``)."""
        new = SigningKey(f"kid-{uuid.uuid4().hex[:12]}", new_rsa_key())
        if drop_old:
            self.keys.clear()
        self.keys.append(new)
        return new

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    # -- tokens ------------------------------------------------------------------------------------
    @staticmethod
    def _user_id(email: str) -> str:
        return "user-" + hashlib.sha256(email.encode()).hexdigest()[:24]

    def _auth_claim(self, account: dict[str, str]) -> dict[str, Any]:
        return {"chatgpt_account_id": account["account_id"], "chatgpt_plan_type": account["plan"],
                "chatgpt_user_id": account["user_id"], "user_id": account["user_id"]}  # fmt: skip

    def access_claims(self, account: dict[str, str], lifetime_s: float | None = None) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": [ACCESS_AUDIENCE],
            "sub": account["user_id"],
            "iat": now,
            "nbf": now,
            "exp": now + int(self.access_lifetime_s if lifetime_s is None else lifetime_s),
            "jti": uuid.uuid4().hex,
            "scp": SCOPE.split(),
            "client_id": CLIENT_ID,
            AUTH_CLAIM: self._auth_claim(account),
            PROFILE_CLAIM: {"email": account["email"], "email_verified": True},
        }

    def _id_token(self, account: dict[str, str]) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": CLIENT_ID, "sub": account["user_id"], "iat": now, "exp": now + 3600,
            "auth_time": now, "email": account["email"], "email_verified": True, AUTH_CLAIM: self._auth_claim(account),
        }  # fmt: skip
        return encode_jwt(claims, "RS256", self.key.private, self.key.kid)

    def _issue(self, grant: Grant, lifetime_s: float | None = None, *, key: rsa.RSAPrivateKey | None = None,
               kid: str | None = None, alg: str = "RS256") -> Tokens:  # fmt: skip
        account = {"email": grant.email, "account_id": grant.account_id, "plan": grant.plan, "user_id": grant.user_id}
        claims = self.access_claims(account, lifetime_s)
        grant.access_jtis.add(claims["jti"])
        self._access_index[claims["jti"]] = grant.id
        signer: rsa.RSAPrivateKey | bytes | None = key or self.key.private
        if alg == "HS256":
            signer = self.key.public_pem()
        elif alg == "none":
            signer = None
        access = encode_jwt(claims, alg, signer, kid if kid is not None else self.key.kid)
        return Tokens(access, self._id_token(account), grant.refresh_token, float(claims["exp"]), grant.id)

    def _new_grant(self, account: dict[str, str]) -> Grant:
        grant = Grant(f"grant-{uuid.uuid4().hex[:12]}", account["email"], account["account_id"], account["plan"],
                      account["user_id"], f"rt_{secrets.token_urlsafe(32)}")  # fmt: skip
        self.grants[grant.id] = grant
        self._refresh_index[grant.refresh_token] = grant.id
        return grant

    def mint(self, email: str, account_id: str, plan: str = "plus", user_id: str | None = None,
             lifetime_s: float = 3600, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None,
             alg: str = "RS256") -> Tokens:  # fmt: skip
        """A new grant for an account, as if it had signed in; ``key``/``kid``/``alg`` sign its first access
        token otherwise than the issuer would (its refresh token still works)."""
        account = {"email": email, "account_id": account_id, "plan": plan, "user_id": user_id or self._user_id(email)}
        return self._issue(self._new_grant(account), lifetime_s, key=key, kid=kid, alg=alg)

    def forge(self, kind: str, email: str = "forged@example.com", account_id: str = "acct-forged",
              plan: str = "plus") -> str:  # fmt: skip
        """An access token ``verify_access`` must refuse. ``kind`` is one of FORGERIES:
        foreign_key (another RSA key, the real kid), none (alg none, no signature), hs256_public_key
        (HS256 keyed with the issuer's public key PEM: the classic confusion attack), expired,
        wrong_audience (the id token's audience), wrong_issuer, unknown_kid (right key, kid not in JWKS)."""
        account = {"email": email, "account_id": account_id, "plan": plan, "user_id": self._user_id(email)}
        claims = self.access_claims(account)
        kid: str | None = self.key.kid
        if kind == "foreign_key":
            return encode_jwt(claims, "RS256", new_rsa_key(), kid)
        if kind == "none":
            return encode_jwt(claims, "none", None, kid)
        if kind == "hs256_public_key":
            return encode_jwt(claims, "HS256", self.key.public_pem(), kid)
        if kind == "expired":
            claims["iat"] = claims["nbf"] = claims["exp"] - 7200
            claims["exp"] = int(time.time()) - 60
        elif kind == "wrong_audience":
            claims["aud"] = CLIENT_ID
        elif kind == "wrong_issuer":
            claims["iss"] = "https://auth.example.com"
        elif kind == "unknown_kid":
            kid = "kid-unknown"
        else:
            raise ValueError(f"unknown forgery {kind!r}; one of {FORGERIES}")
        # Signed by the real key: only the claim (or kid) is wrong. Its jti belongs to no grant either,
        # so these are refused for two reasons; "expired" etc. are checked first.
        return encode_jwt(claims, "RS256", self.key.private, kid)

    def check_access(self, token: str) -> tuple[dict[str, Any] | None, str]:
        """(claims, "") for an access token this issuer would accept; (None, reason) otherwise, reason one of
        invalid_token, token_expired, token_revoked."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None, "invalid_token"
        key = next((k for k in self.keys if k.kid == header.get("kid")), None)
        if key is None or header.get("alg") != "RS256":
            return None, "invalid_token"
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.private.public_key(), algorithms=["RS256"], audience=ACCESS_AUDIENCE,
                issuer=self.issuer, options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            return None, "token_expired"
        except jwt.PyJWTError:
            return None, "invalid_token"
        grant = self.grants.get(self._access_index.get(str(claims.get("jti")), ""))
        if grant is None:
            return None, "invalid_token"
        if grant.revoked:
            return None, "token_revoked"
        return claims, ""

    def verify_access(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token signed by a key in the JWKS, unexpired, for the API audience, from
        this issuer, of a grant that is not revoked; else None."""
        return self.check_access(token)[0]

    # -- steering ----------------------------------------------------------------------------------
    def grant_of(self, ref: str | Tokens) -> Grant:
        """A grant by id, by any refresh token it was issued, or by its Tokens."""
        if isinstance(ref, Tokens):
            ref = ref.grant_id
        grant_id = ref if ref in self.grants else self._refresh_index.get(ref, "")
        return self.grants[grant_id]

    def expire_refresh(self, grant: str | Tokens) -> None:
        """Its refresh token now answers refresh_token_expired (access tokens live until their exp)."""
        self.grant_of(grant).refresh_expired = True

    def invalidate(self, grant: str | Tokens) -> None:
        """Revoke the whole grant: refresh answers refresh_token_invalidated, its access tokens are refused."""
        self.grant_of(grant).revoked = True

    def approve(self, user_code: str, email: str, account_id: str, plan: str = "plus",
                user_id: str | None = None) -> bool:  # fmt: skip
        """The person types the code at {issuer}/codex/device and signs in as ``email``."""
        for device in self.devices.values():
            if device.user_code == user_code and device.approved is None:
                device.approved = {"email": email, "account_id": account_id, "plan": plan,
                                   "user_id": user_id or self._user_id(email)}  # fmt: skip
                return True
        return False

    # -- the HTTP app ------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.jwks_endpoint)
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_post("/api/accounts/deviceauth/usercode", self.usercode)
        app.router.add_post("/api/accounts/deviceauth/token", self.device_token)
        app.router.add_post("/oauth/token", self.oauth_token)
        app.router.add_post("/_test/approve", self.approve_endpoint)
        return app

    async def jwks_endpoint(self, request: web.Request) -> web.Response:
        self.jwks_calls += 1
        if self.jwks_down:
            return _json(503, {"error": "unavailable"})
        return _json(200, self.jwks())

    async def discovery(self, request: web.Request) -> web.Response:
        return _json(200, {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
                           "token_endpoint": f"{self.issuer}/oauth/token",
                           "authorization_endpoint": f"{self.issuer}/oauth/authorize",
                           "id_token_signing_alg_values_supported": ["RS256"]})  # fmt: skip

    async def usercode(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None:
            return _error(400, "invalid_request", "Expected a JSON body.")
        if body.get("client_id") != CLIENT_ID:
            return _error(400, "invalid_client", "Unknown or missing client_id.")
        if not self.device_enabled:
            return _error(404, "deviceauth_not_enabled", "Device code sign-in is not enabled for this account.")
        device = DeviceCode(f"deviceauth_{secrets.token_urlsafe(18)}", _user_code(), time.time())
        self.devices[device.device_auth_id] = device
        return _json(200, {"device_auth_id": device.device_auth_id, "user_code": device.user_code,
                           "interval": self.interval})  # fmt: skip

    async def device_token(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if (
            body is None
            or not isinstance(body.get("device_auth_id"), str)
            or not isinstance(body.get("user_code"), str)
        ):
            return _error(400, "invalid_request", "device_auth_id and user_code are required.")
        self.polls.append((time.time(), body["device_auth_id"]))
        device = self.devices.get(body["device_auth_id"])
        if device is None or device.user_code != body["user_code"]:
            return _error(404, "deviceauth_not_found", "Unknown device authorization.")
        if time.time() - device.created > self.code_ttl_s:
            del self.devices[device.device_auth_id]
            return _error(410, "deviceauth_expired", "The device code has expired. Start again.")
        if device.approved is None:
            return _error(403, "deviceauth_authorization_pending", "Authorization is pending: the user has not "
                                                                   "entered the code yet.")  # fmt: skip
        del self.devices[device.device_auth_id]  # answered once
        verifier = secrets.token_urlsafe(48)
        code = AuthCode(f"ac_{secrets.token_urlsafe(24)}", pkce_challenge(verifier), verifier, device.approved,
                        time.time())  # fmt: skip
        self.codes[code.code] = code
        return _json(200, {"authorization_code": code.code, "code_challenge": code.challenge,
                           "code_verifier": verifier})  # fmt: skip

    async def approve_endpoint(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None or not all(isinstance(body.get(k), str) for k in ("user_code", "email", "account_id")):
            return _error(400, "invalid_request", "user_code, email and account_id are required.")
        plan = body.get("plan", "plus")
        if plan not in PLANS:
            return _error(400, "invalid_request", f"plan must be one of {PLANS}")
        ok = self.approve(body["user_code"], body["email"], body["account_id"], plan, body.get("user_id"))
        return _json(200, {"ok": True}) if ok else _error(404, "deviceauth_not_found", "Unknown user code.")

    def _token_error(self, status: int, code: str, message: str) -> web.Response:
        """nested: {"error": {"message", "type", "param", "code"}} (what codex-rs reads first);
        flat: {"error": "<code>", "error_description"} (RFC 6749's shape). Both carry the code."""
        if self.error_style == "flat":
            return _json(status, {"error": code, "error_description": message})
        return _error(status, code, message)

    async def oauth_token(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
        elif content_type == "application/json":
            parsed = await _json_body(request)
            if parsed is None:
                return self._token_error(400, "invalid_request", "The JSON body could not be parsed.")
            body = parsed
        else:
            return self._token_error(400, "invalid_request", f"Unsupported content type {content_type!r}.")
        self.token_calls.append({"content_type": content_type, "body": body})
        grant_type = body.get("grant_type")
        if grant_type == "authorization_code":
            if content_type != "application/x-www-form-urlencoded":
                return self._token_error(400, "invalid_request", "authorization_code must be form-encoded.")
            if self.exchange_delay:
                await asyncio.sleep(self.exchange_delay)
            return self._exchange(body)
        if grant_type == "refresh_token":
            presented = body.get("refresh_token")
            grant_id = self._refresh_index.get(presented) if isinstance(presented, str) else None
            self.refresh_calls.append((time.time(), grant_id))  # every attempt, even a malformed one
            if self.refresh_delay:
                await asyncio.sleep(self.refresh_delay)
            if self.refresh_outages:
                self.refresh_outages -= 1
                return web.json_response({"error": "server_error"}, status=500)
            if self.refresh_answers:
                status, error = self.refresh_answers.pop(0)
                if isinstance(error, dict):
                    return web.json_response(error, status=status)
                return web.json_response({"error": error.replace("{presented}", str(presented))}, status=status)
            if content_type != "application/json":
                return self._token_error(400, "invalid_request", "Send the refresh_token grant as JSON.")
            return await self._refresh(body)
        return self._token_error(400, "unsupported_grant_type", f"Unsupported grant_type {grant_type!r}.")

    def _token_reply(self, tokens: Tokens, with_refresh: bool = True) -> web.Response:
        reply: dict[str, Any] = {
            "id_token": tokens.id_token,
            "access_token": tokens.access_token,
            "token_type": "Bearer",
            "expires_in": int(self.access_lifetime_s),
            "scope": SCOPE,
        }
        if with_refresh:
            reply["refresh_token"] = tokens.refresh_token
        return _json(200, reply)

    def _exchange(self, body: dict[str, Any]) -> web.Response:
        if body.get("client_id") != CLIENT_ID:
            return self._token_error(400, "invalid_client", "Unknown or missing client_id.")
        for name in ("code", "redirect_uri", "code_verifier"):
            if not body.get(name):
                return self._token_error(400, "invalid_request", f"Missing required parameter: {name}.")
        code = self.codes.get(body["code"])
        if code is None:
            return self._token_error(400, "invalid_grant", "Invalid authorization code.")
        if code.redeemed_grant is not None:
            # RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
            self.grants[code.redeemed_grant].revoked = True
            return self._token_error(400, "invalid_grant", "The authorization code has already been used.")
        if time.time() - code.created > self.auth_code_ttl_s:
            return self._token_error(400, "invalid_grant", "The authorization code has expired.")
        if body["redirect_uri"] != self.redirect_uri:
            return self._token_error(400, "invalid_grant", "redirect_uri does not match.")
        if not hmac.compare_digest(pkce_challenge(body["code_verifier"]), code.challenge):
            return self._token_error(400, "invalid_grant", "code_verifier does not match the code_challenge.")
        grant = self._new_grant(code.account)
        code.redeemed_grant = grant.id
        return self._token_reply(self._issue(grant))

    async def _refresh(self, body: dict[str, Any]) -> web.Response:
        presented = body.get("refresh_token")
        if body.get("client_id") != CLIENT_ID:
            return self._token_error(400, "invalid_client", "Unknown or missing client_id.")
        if not isinstance(presented, str) or not presented:
            return self._token_error(400, "invalid_request", "Missing required parameter: refresh_token.")
        grant = self.grants.get(self._refresh_index.get(presented, ""))
        if grant is None:
            return self._token_error(401, "refresh_token_invalidated", "Your refresh token is not valid. "
                                                                       "Please sign in again.")  # fmt: skip
        if grant.revoked:
            return self._token_error(401, "refresh_token_invalidated", "Your refresh token has been invalidated. "
                                                                       "Please sign in again.")  # fmt: skip
        if presented != grant.refresh_token:
            grant.revoked = True  # a replayed refresh token may mean a stolen one: the whole grant goes
            return self._token_error(401, "refresh_token_reused", "Your refresh token has already been used to "
                                     "generate a new access token. Please try signing in again.")  # fmt: skip
        if grant.refresh_expired:
            return self._token_error(401, "refresh_token_expired", "Your refresh token has expired. "
                                                                   "Please sign in again.")  # fmt: skip
        grant.refreshes += 1
        if self.rotate_refresh:
            grant.used_refresh.add(grant.refresh_token)
            grant.refresh_token = f"rt_{secrets.token_urlsafe(32)}"
            self._refresh_index[grant.refresh_token] = grant.id
        return self._token_reply(self._issue(grant), with_refresh=self.rotate_refresh)


def _user_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return (
        "".join(secrets.choice(alphabet) for _ in range(4)) + "-" + "".join(secrets.choice(alphabet) for _ in range(5))
    )


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                    "code": code}})  # fmt: skip


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    if request.content_type != "application/json":
        return None
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None
