"""The calls to the issuer (upstreams.md §5): device-code sign-in, the code exchange, refresh.

Every call goes through the one HTTP client (so through ``CHATGPT_SERVER_PROXY``), never follows a
redirect, and maps what the issuer answers to the one error tree; nothing a token endpoint returns
is echoed to a client or a log.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from ..errors import BadGateway, NotFound, ServiceError
from ..upstreams.http import (
    TRANSPORT_ERRORS,
    HTTPClient,
    host_of,
    post,
    read_limited,
    scrub,
    transport_error,
)

FATAL_REFRESH = ("refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated", "invalid_grant")
# OAuth's words for a refusal that is this server's setting or request, or the issuer's trouble, not the
# grant's end (RFC 6749 5.2): a 502 and a later try, never "sign in again" for good.
NOT_THE_GRANTS = ("invalid_client", "invalid_request", "unauthorized_client", "unsupported_grant_type",
                  "invalid_scope", "server_error", "temporarily_unavailable")  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeviceCode:
    device_auth_id: str
    user_code: str
    interval: float


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    id_token: str
    refresh_token: str | None


class RefreshRefused(ServiceError):
    """The issuer will not refresh this grant again: the account must sign in again."""

    status = 401

    def __init__(self, code: str):
        super().__init__("account_signin_again", code=code)
        self.code = code


class OAuth:
    def __init__(self, http: HTTPClient, issuer: str, client_id: str, timeout_s: float = 20.0):
        self.http = http
        self.issuer = issuer
        self.client_id = client_id
        self.timeout_s = timeout_s
        self.host = host_of(issuer)

    @property
    def verification_uri(self) -> str:
        return self.issuer + "/codex/device"

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await post(self.http, self.issuer + path, body, {"Content-Type": content_type}, self.host)
                try:
                    raw = await read_limited(response, 1 << 20, self.host)
                finally:
                    response.release()
        except TimeoutError as exc:
            raise transport_error(exc, self.host, self.timeout_s) from exc
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, self.host, self.timeout_s) from exc
        try:
            parsed = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            parsed = {}
        return response.status, parsed if isinstance(parsed, dict) else {}

    def _json(self, value: dict[str, Any]) -> bytes:
        return orjson.dumps(value)

    async def start_device(self) -> DeviceCode:
        status, body = await self._post("/api/accounts/deviceauth/usercode", self._json({"client_id": self.client_id}),
                                        "application/json")  # fmt: skip
        if status == 404:
            raise NotFound("device_signin_disabled", host=self.host)
        if status != 200:
            raise BadGateway("upstream_error", host=self.host, status=status, detail=_error_code(body) or "device code")
        device, code = body.get("device_auth_id"), body.get("user_code") or body.get("usercode")
        if not isinstance(device, str) or not isinstance(code, str) or not device or not code:
            raise BadGateway("upstream_bad_reply", host=self.host, detail="no device_auth_id or user_code")
        try:
            interval = float(body.get("interval", 5))
        except (TypeError, ValueError):
            interval = 5.0
        return DeviceCode(device[:512], code[:64], min(max(interval, 0.0), 60.0))

    async def poll_device(self, device: DeviceCode) -> tuple[str, str] | None:
        """None while the person has not finished; then (authorization code, code verifier)."""
        status, body = await self._post(
            "/api/accounts/deviceauth/token",
            self._json({"device_auth_id": device.device_auth_id, "user_code": device.user_code}),
            "application/json",
        )
        said = _error_code(body, device.device_auth_id, device.user_code)
        if status in (403, 404) and said != "deviceauth_not_found":
            return None
        if status in (404, 410) or said in ("deviceauth_expired", "deviceauth_not_found"):
            raise NotFound("device_code_expired")
        if status != 200:
            raise BadGateway("upstream_error", host=self.host, status=status, detail=said or "device poll")
        code, verifier = body.get("authorization_code"), body.get("code_verifier")
        if not isinstance(code, str) or not isinstance(verifier, str):
            raise BadGateway("upstream_bad_reply", host=self.host, detail="no authorization_code")
        return code, verifier

    async def exchange(self, code: str, verifier: str) -> TokenSet:
        form = urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.issuer + "/deviceauth/callback",
            "client_id": self.client_id, "code_verifier": verifier,
        }).encode()  # fmt: skip
        status, body = await self._post("/oauth/token", form, "application/x-www-form-urlencoded")
        if status != 200:
            raise BadGateway("upstream_error", host=self.host, status=status, detail=_error_code(body, code, verifier)
                             or "token")  # fmt: skip
        return self._tokens(body)

    async def refresh(self, refresh_token: str) -> TokenSet:
        body = self._json({"client_id": self.client_id, "grant_type": "refresh_token", "refresh_token": refresh_token})
        status, answer = await self._post("/oauth/token", body, "application/json")
        if status == 200:
            return self._tokens(answer)
        code = _error_code(answer, refresh_token)
        # Only what says the grant is over ends it (the account must sign in again, by a person): another
        # refusal (invalid_client, invalid_request: this server's setting or request) is an error to retry.
        if code in FATAL_REFRESH:
            raise RefreshRefused(code)
        if status == 401 and code not in NOT_THE_GRANTS:  # refused, in words not our own fault's
            raise RefreshRefused(code or "refresh_token_invalidated")
        raise BadGateway("upstream_error", host=self.host, status=status, detail=code or "refresh")

    def _tokens(self, body: dict[str, Any]) -> TokenSet:
        access, id_token, refresh = body.get("access_token"), body.get("id_token"), body.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise BadGateway("upstream_bad_reply", host=self.host, detail="no access_token")
        return TokenSet(access, id_token if isinstance(id_token, str) else "",
                        refresh if isinstance(refresh, str) and refresh else None)  # fmt: skip


def _error_code(body: dict[str, Any], *sent: str) -> str:
    """The issuer's error code, scrubbed of the credentials the request carried (an issuer that echoes
    one must not put it in a client's error or the log)."""
    error = body.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return scrub(code, *sent, limit=60) if isinstance(code, str) else ""
    return scrub(error, *sent, limit=60) if isinstance(error, str) else ""
