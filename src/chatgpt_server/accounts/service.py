"""Stored ChatGPT accounts: signed in once (device code), kept signed in, shared by every instance.

An account lives in the conversation store as a record (kind "account", keyed by the verified
``chatgpt_account_id`` and user), its tokens sealed with AES-GCM. Refresh tokens are single-use, so
exactly one refresh per account may be in flight across all instances: the refresher first takes a
lease on the record (a compare-and-set on its version), and saves the rotated refresh token together
with the new access token, by the same compare-and-set, before the new token is used. Everyone else
waits for the record to change.

Which account a request belongs to is decided only from a token whose signature verifies against
the issuer's keys: an email or an account id alone grants nothing, and a token that cannot be
verified is bound to itself, as any other credential is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from ..core.locks import KeyedLocks
from ..core.owners import Owners
from ..core.turns import OpenTurn, Turns, TurnSpec
from ..errors import BadGateway, BadRequest, NotFound, ServiceError, ServiceUnavailable, Unauthorized
from ..settings import Settings
from ..stores import Record, Store
from ..upstreams.base import Target
from ..upstreams.chatgpt_web import check_not_expired, jwt_claims
from ..upstreams.http import HTTPClient, host_of
from .oauth import DeviceCode, OAuth, RefreshRefused, TokenSet
from .tokens import AUTH_CLAIM, Identity, Unverifiable, Verifier, identity_of

if TYPE_CHECKING:
    from .crypto import Sealer

T = TypeVar("T")
log = logging.getLogger("chatgpt_server.accounts")

LEASE_S = 60.0  # longer than a refresh can take (its timeout is 20 s)
WAIT_POLL_S = 0.05
KNOWN_S = 10.0  # how long a decrypted current token is reused without reading the record again
STILL_GOOD_S = 30.0  # a token this far from expiring is used when its early refresh failed (clock skew aside)
RETRY_REFRESH_S = 30.0  # after a failed early refresh, the next try waits this long (requests use the token)


@dataclass(frozen=True, slots=True)
class Credential:
    owner: str
    access_token: str
    account_id: str | None
    account_key: str | None  # set when the token belongs to a stored account (refreshable)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(0.0, min(epoch, 253402300799))))


class Accounts:
    def __init__(self, settings: Settings, store: Store, http: HTTPClient, owners: Owners):
        self.settings = settings
        self.store = store
        self.owners = owners
        self.verifier = Verifier(http, settings.chatgpt_auth_issuer)
        self.oauth = OAuth(http, settings.chatgpt_auth_issuer, settings.chatgpt_client_id)
        self._sealer_made: Sealer | None = None
        self.holder = secrets.token_hex(8)  # this process, as a lease holder
        self._refreshing = KeyedLocks()
        # key -> (until, access token, when it is due for a refresh, when the stored sign-in's token was minted)
        self._known: dict[str, tuple[float, str, float, Any]] = {}
        self._refresh_failed: dict[str, float] = {}  # key -> when an early refresh may be tried again

    # -- which credential a request uses --------------------------------------------------------
    async def identify(self, token: str, refetch: bool = False) -> Identity | None:
        """The account of a token whose signature verifies; None for any other token. One that says it
        is the issuer's, while the issuer's keys are out of reach, is neither: a 503, since bound to
        itself (as a token not ours is) its conversations would be lost to its account for good."""
        try:
            claims = await self.verifier.verify(token, refetch=refetch)
        except Unverifiable as exc:
            if (jwt_claims(token) or {}).get("iss") != self.verifier.issuer:
                return None
            raise ServiceUnavailable("issuer_keys_unavailable", headers={"Retry-After": str(int(exc.retry_after_s))},
                                     host=host_of(self.verifier.issuer)) from exc  # fmt: skip
        return identity_of(claims) if claims is not None else None

    async def credential(self, token: str) -> Credential:
        identity = await self.identify(token)
        if identity is None:  # forged, unsigned, or not the issuer's: bound to the token itself
            check_not_expired(token)
            return Credential(await self.owners.of(token), token, _claimed_account(token), None)
        owner = await self.owners.of("account\0" + identity.key)
        now = time.time()
        known = self._known.get(identity.key)
        if (known is not None and known[0] > now and known[2] > now
                and _of_the_grant(identity, known[3])):  # fmt: skip
            self._check_presented(identity, now)
            return Credential(owner, known[1], identity.account_id, identity.key)
        record = await self.store.get_record("account", identity.key)
        if record is None or not _of_the_grant(identity, record.body.get("grantIat")):
            # Not stored, or a token of an older sign-in (perhaps revoked since): only itself, never
            # a key to the account's current token.
            if identity.exp <= now:
                raise Unauthorized("token_expired", when=_when(identity.exp))
            return Credential(owner, token, identity.account_id, None)
        self._check_presented(identity, now)
        access = await self.current(identity.key, record)
        return Credential(owner, access, identity.account_id, identity.key)

    async def identify_owner(self, token: str) -> Identity | None:
        """The account a token may act for on routes that call no backend (records read, listed, added to,
        deleted), checked as a turn checks it: past its grace period it is refused, and a token of an
        earlier sign-in of a stored account (one revoked after a leak, say) is refused too, since no
        backend will judge it here. None for a token that is no account's."""
        identity = await self.identify(token)
        if identity is None:
            return None
        now = time.time()
        self._check_presented(identity, now)
        known = self._known.get(identity.key)
        if known is not None and known[0] > now:
            grant_iat = known[3]
        else:
            record = await self.store.get_record("account", identity.key)
            if record is None:  # not stored: the token is only itself, good until it expires (as on a turn)
                if identity.exp <= now:
                    raise Unauthorized("token_expired", when=_when(identity.exp))
                return identity
            grant_iat = record.body.get("grantIat")
        if not _of_the_grant(identity, grant_iat):
            raise Unauthorized("account_token_superseded", email=identity.email or "?")
        return identity

    def _check_presented(self, identity: Identity, now: float) -> None:
        grace = self.settings.account_grace_days * 86_400
        if identity.exp + grace <= now:
            raise Unauthorized("token_expired", when=_when(identity.exp))

    async def after_unauthorized(self, credential: Credential) -> Credential | None:
        """The backend refused the token: refresh once (if the account is stored) and say what to use."""
        if credential.account_key is None:
            return None
        self._known.pop(credential.account_key, None)
        access = await self.refresh(credential.account_key, stale=credential.access_token)
        return Credential(credential.owner, access, credential.account_id, credential.account_key)

    async def open_turn(self, turns: Turns, spec: TurnSpec, credential: Credential | None) -> OpenTurn:
        """Open a turn; a stored account's token that the backend refuses is refreshed once, and the
        turn tried once more with the new token."""
        try:
            return await turns.open(spec)
        except Unauthorized as exc:
            if credential is None or exc.key != "upstream_unauthorized":
                raise
            fresh = await self.after_unauthorized(credential)
            if fresh is None:
                raise
            target = spec.target
            spec.target = Target(target.upstream, target.url, fresh.access_token, target.organization, target.headers,
                                 fresh.account_id)  # fmt: skip
            return await turns.open(spec)

    # -- the stored tokens ---------------------------------------------------------------------
    def _sealer(self) -> Sealer:
        """Made when first needed (cryptography is ~10 MB a process that serves no account needs not load)."""
        if self._sealer_made is None:
            secret = self.settings.secret_bytes()
            if secret is None:
                raise BadRequest("accounts_need_secret_key")
            from .crypto import Sealer

            self._sealer_made = Sealer(secret)
        return self._sealer_made

    def _open(self, key: str, body: dict[str, Any]) -> dict[str, str]:
        plain = self._sealer().open(str(body.get("sealed", "")), "account:" + key)
        if plain is None:
            raise Unauthorized("account_unreadable", email=body.get("email", "?"))
        tokens: dict[str, str] = orjson.loads(plain)
        return tokens

    async def current(self, key: str, record: Record | None = None) -> str:
        """The account's access token, refreshed first if it is within the margin of expiring."""
        record = record or await self.store.get_record("account", key)
        if record is None:
            raise NotFound("account_unknown")
        body = record.body
        if body.get("status") != "active":
            raise Unauthorized("account_signin_again", email=body.get("email", "?"), code=body.get("reason", ""))
        exp = float(body.get("exp") or 0)
        if self._refresh_at(body) > time.time():
            access = self._open(key, body)["access"]
            self._known[key] = (time.time() + KNOWN_S, access, self._refresh_at(body), body.get("grantIat"))
            return access
        still_good = exp - STILL_GOOD_S > time.time()
        if still_good and self._refresh_failed.get(key, 0.0) > time.time():
            return self._open(key, body)["access"]  # the issuer failed moments ago: not every request waits on it
        try:
            access = await self.refresh(key)
        except (Unauthorized, NotFound):
            raise  # signed out, or removed: the token it had is no good either
        except ServiceError as exc:
            # The issuer failed (5xx, unreachable, busy) while the token still works: an early refresh
            # is no reason to fail the request. It is tried again RETRY_REFRESH_S later.
            if not still_good:
                raise
            if len(self._refresh_failed) > 10_000:
                self._refresh_failed.clear()
            self._refresh_failed[key] = time.time() + RETRY_REFRESH_S
            log.warning("refresh of %s failed, its token still works: %s", body.get("email", "?"), exc.key)
            return self._open(key, body)["access"]
        self._refresh_failed.pop(key, None)
        return access

    def _refresh_at(self, body: dict[str, Any]) -> float:
        """When the stored token is refreshed: the margin before its expiry, or, for a token a refresh
        gave, half its life if that is shorter (an issuer whose tokens live less than the margin would
        otherwise have every request refresh, one after the other)."""
        exp = float(body.get("exp") or 0)
        issued = float(body.get("refreshedAt") or 0)
        margin = float(self.settings.token_margin_seconds)
        if issued and exp - issued < margin:
            margin = max(0.0, (exp - issued) / 2)
        return exp - margin

    async def refresh(self, key: str, stale: str | None = None) -> str:
        """Exactly one refresh per account in flight, across instances; returns the new access token
        (or the one another refresher just saved)."""
        release = await self._refreshing.acquire(key)  # one coroutine per process goes to the store
        # A refresh spends the single-use refresh token: it runs to the saving of the new one.
        return await _to_the_end(self._refresh(key, stale), release)

    async def _refresh(self, key: str, stale: str | None) -> str:
        deadline = time.monotonic() + LEASE_S
        while True:
            record = await self.store.get_record("account", key)
            if record is None:
                raise NotFound("account_unknown")
            body = record.body
            email = body.get("email", "?")
            if body.get("status") != "active":
                raise Unauthorized("account_signin_again", email=email, code=body.get("reason", ""))
            tokens = self._open(key, body)
            fresh = self._refresh_at(body) > time.time()
            if fresh and tokens["access"] != stale:
                self._known[key] = (time.time() + KNOWN_S, tokens["access"], self._refresh_at(body),
                                    body.get("grantIat"))  # fmt: skip
                return tokens["access"]
            lease = body.get("lease") or {}
            if lease.get("holder") not in (None, self.holder) and float(lease.get("until", 0)) > time.time():
                if time.monotonic() > deadline:
                    raise ServiceUnavailable("account_busy", email=email)
                await asyncio.sleep(WAIT_POLL_S)
                continue
            leased = _with(record, {**body, "lease": {"holder": self.holder, "until": time.time() + LEASE_S}})
            if not await self.store.put_record(leased, record.version):
                continue  # someone else changed it first: look again
            return await self._rotate(key, leased, record.version + 1, tokens)

    async def _rotate(self, key: str, leased: Record, version: int, tokens: dict[str, str]) -> str:
        body = leased.body
        try:
            fresh = await self.oauth.refresh(tokens["refresh"])
        except RefreshRefused as exc:
            signed_out = {**body, "status": "signin_required", "reason": exc.code, "lease": None}
            self._known.pop(key, None)
            if not await self._save(key, leased, version, signed_out):
                return await self._superseded(key)  # signed in again meanwhile: that sign-in's token
            raise Unauthorized("account_signin_again", email=body.get("email", "?"), code=exc.code) from exc
        except ServiceError:
            if not await self._save(key, leased, version, {**body, "lease": None}):
                return await self._superseded(key)
            raise
        exp = _exp_of(fresh.access_token)
        try:
            claims = await self.verifier.verify(fresh.access_token, refetch=True)
        except Exception as exc:  # no verdict (the keys out of reach, say): the grant is spent, so what it
            # gave is kept as it always was (it is what the issuer answered our own refresh with)
            log.warning("the refreshed token of %s could not be checked (%s): kept", body.get("email", "?"), exc)
        else:
            identity = identity_of(claims) if claims is not None else None
            if identity is not None and identity.key == key:
                exp = identity.exp
            else:
                # Not a token of this account: never used or stored as one (sending it would show another
                # account's conversations, or none); the grant it came from is the issuer's to explain.
                signed_out = {**body, "status": "signin_required", "reason": "refreshed_token_unverified",
                              "lease": None}  # fmt: skip
                self._known.pop(key, None)
                if not await self._save(key, leased, version, signed_out):
                    return await self._superseded(key)
                raise BadGateway("upstream_bad_reply", host=self.oauth.host,
                                 detail="the refreshed access token is not this account's")  # fmt: skip
        new_body = {
            **body,
            "sealed": self._seal(key, fresh, tokens),
            "exp": exp,
            "lease": None,
            "refreshedAt": time.time(),
        }
        if not await self._save(key, leased, version, new_body):
            return await self._superseded(key)
        self._known[key] = (time.time() + KNOWN_S, fresh.access_token, self._refresh_at(new_body), body.get("grantIat"))
        return fresh.access_token

    async def _superseded(self, key: str) -> str:
        """The token of the sign-in that replaced the one a refresh was for (never refreshed here: this
        runs under the account's refresh lock)."""
        record = await self.store.get_record("account", key)
        if record is None:
            raise NotFound("account_unknown")
        body = record.body
        if body.get("status") != "active":
            raise Unauthorized("account_signin_again", email=body.get("email", "?"), code=body.get("reason", ""))
        return self._open(key, body)["access"]

    async def _save(self, key: str, base: Record, version: int, body: dict[str, Any]) -> bool:
        """Write ``body`` over the record we leased; if the lease was lost (it expired and another
        instance took it), write over whatever is there: our tokens are the newest. Unless the account
        was signed in again (or removed) meanwhile: what this refresh of the old grant found, tokens or a
        refusal, is then no news, and nothing is written (False)."""
        record = _with(base, body)
        for _ in range(5):
            if await self.store.put_record(record, version):
                return True
            current = await self.store.get_record("account", key)
            if current is None or _sign_in_of(current.body) != _sign_in_of(base.body):
                return False
            record, version = _with(current, body), current.version
        raise ServiceUnavailable("account_busy", email=body.get("email", "?"))

    def _seal(self, key: str, fresh: TokenSet, old: dict[str, str]) -> str:
        plain = {
            "access": fresh.access_token,
            "id": fresh.id_token or old.get("id", ""),
            "refresh": fresh.refresh_token or old["refresh"],
        }
        return self._sealer().seal(orjson.dumps(plain), "account:" + key)

    # -- signing in ----------------------------------------------------------------------------
    async def keep(self, tokens: TokenSet) -> dict[str, Any]:
        """Store (or update) the account these fresh tokens belong to; its public description."""
        self._sealer()
        identity = await self.identify(tokens.access_token, refetch=True)  # the issuer's, just now
        if identity is None:
            raise BadRequest("account_token_unverified")
        if tokens.refresh_token is None:
            raise BadRequest("account_no_refresh_token")
        key = identity.key
        now = time.time()
        sealed = self._seal(key, tokens, {"refresh": tokens.refresh_token})
        body = {
            "email": identity.email, "plan": identity.plan, "accountId": identity.account_id,
            "userId": identity.user_id, "exp": identity.exp, "status": "active", "sealed": sealed,
            "lease": None, "signedInAt": now, "grantIat": identity.iat,
        }  # fmt: skip
        for _ in range(5):
            current = await self.store.get_record("account", key)
            if current is None:  # at a random version: a refresh of a removed sign-in cannot match it
                fresh = Record("account", key, "", body, None, now, now, secrets.randbelow(1 << 30) + 1)
                if await self.store.put_record(fresh, None):
                    break
            elif await self.store.put_record(_with(current, body), current.version):
                break
        self._known.pop(key, None)
        return describe(body)

    async def start_device(self) -> dict[str, Any]:
        sealer = self._sealer()
        device = await self.oauth.start_device()
        now = time.time()
        expires = now + 15 * 60
        record_id = _device_key(device.device_auth_id)
        body = {"code": sealer.seal(device.user_code.encode(), "device:" + record_id), "interval": device.interval,
                "expiresAt": expires}  # fmt: skip
        await self.store.put_record(Record("device", record_id, "", body, None, now, now), None)
        return {
            "userCode": device.user_code,
            "verificationUri": self.oauth.verification_uri,
            "deviceAuthId": device.device_auth_id,
            "interval": device.interval,
            "expiresAt": int(expires),
        }

    async def poll_device(self, device_auth_id: str) -> dict[str, Any]:
        sealer = self._sealer()
        record_id = _device_key(device_auth_id)
        record = await self.store.get_record("device", record_id)
        if record is None or float(record.body.get("expiresAt", 0)) < time.time():
            if record is not None:
                await self.store.delete_record("device", record_id)
            raise NotFound("device_code_unknown")
        code = sealer.open(str(record.body.get("code")), "device:" + record_id)
        if code is None:
            raise NotFound("device_code_unknown")
        if record.body.get("signedIn"):  # a poll whose answer its client did not get: this is it
            await self.store.delete_record("device", record_id)
            told = sealer.open(str(record.body["signedIn"]), "device:" + record_id)
            if told is None:
                raise NotFound("device_code_unknown")
            result: dict[str, Any] = orjson.loads(told)
            return result
        interval = float(record.body.get("interval", 5))
        now = time.time()
        if now - float(record.body.get("polledAt", 0)) < interval:  # never faster than the issuer allows
            return {"status": "pending", "interval": interval}
        polled = Record(record.kind, record.id, "", {**record.body, "polledAt": now}, None, record.created_at, now,
                        record.version)  # fmt: skip
        if not await self.store.put_record(polled, record.version):  # another poll of it just went
            return {"status": "pending", "interval": interval}
        # The issuer hands out the single-use authorization code once: from the poll on, the sign-in
        # runs to the stored account even if this request is stopped.
        device = DeviceCode(device_auth_id, code.decode(), interval)
        return await _to_the_end(self._signed_in(device, polled, record.version + 1))

    async def _signed_in(self, device: DeviceCode, polled: Record, version: int) -> dict[str, Any]:
        got = await self.oauth.poll_device(device)
        if got is None:
            return {"status": "pending", "interval": device.interval}
        tokens = await self.oauth.exchange(*got)
        account = await self.keep(tokens)
        result = {**account, "status": "signed_in", "accessToken": tokens.access_token}
        # Kept (sealed, for the device code's short life) for a poll retried by a client that did not
        # get this answer, and given to the first one.
        sealed = self._sealer().seal(orjson.dumps(result), "device:" + polled.id)
        await self.store.put_record(_with(polled, {**polled.body, "signedIn": sealed}), version)
        return result

    # -- listing --------------------------------------------------------------------------------
    async def _stored(self) -> list[Record]:
        out: list[Record] = []
        after: str | None = None
        while True:
            page = await self.store.list_records("account", "", after, 100, False)
            out += page
            if len(page) < 100:
                return out
            after = page[-1].id

    async def all(self) -> list[dict[str, Any]]:
        return [describe(record.body) for record in await self._stored()]

    async def forget(self, email: str) -> int:
        removed = 0
        for record in await self._stored():
            if str(record.body.get("email", "")).lower() == email.lower():
                removed += await self.store.delete_record("account", record.id)
        return removed

    async def token_of(self, email: str | None) -> str:
        """The current access token (refreshed if due) of the stored account with this email, or of the
        only one stored when none is named: for ``chatgpt-server token``, the terminal's way to it."""
        stored = await self._stored()
        records = [r for r in stored if email is None or str(r.body.get("email", "")).lower() == email.lower()]
        if not records:
            raise NotFound("account_unknown" if stored else "accounts_none")
        if len(records) > 1:
            raise BadRequest("account_ambiguous", count=len(records))
        return await self.current(records[0].id, records[0])

    async def current_for(self, token: str) -> str | None:
        """The token route's refresh: a verified token of a stored account gets the account's
        current access token; anything else gets None."""
        identity = await self.identify(token)
        if identity is None:
            return None
        record = await self.store.get_record("account", identity.key)
        if record is None or not _of_the_grant(identity, record.body.get("grantIat")):
            return None
        self._check_presented(identity, time.time())
        return await self.current(identity.key, record)


def describe(body: dict[str, Any]) -> dict[str, Any]:
    """An account as shown to people: never a token."""
    return {
        "email": body.get("email"),
        "plan": body.get("plan"),
        "accountId": body.get("accountId"),
        "expiresAt": int(float(body.get("exp") or 0)),
        "status": body.get("status"),
    }


def _of_the_grant(identity: Identity, grant_iat: Any) -> bool:
    """Whether a token is of the sign-in the account is stored with (or a refresh of it): minted no
    earlier than that sign-in's token, both by the issuer's clock. Accounts stored before this was kept
    say nothing, and every token of theirs is taken."""
    if not isinstance(grant_iat, int | float) or identity.iat is None:
        return True
    return identity.iat >= grant_iat


def _sign_in_of(body: dict[str, Any]) -> tuple[Any, Any]:
    """What tells one sign-in of an account from the next."""
    return body.get("signedInAt"), body.get("grantIat")


def _with(record: Record, body: dict[str, Any]) -> Record:
    return Record(record.kind, record.id, record.owner, body, record.tip, record.created_at, time.time(),
                  record.version, record.gen)  # fmt: skip


def _exp_of(token: str) -> float:
    claims = jwt_claims(token) or {}
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else time.time() + 3600


def _claimed_account(token: str) -> str | None:
    """The account id a token claims, unverified: only ever sent back to the backend that verifies it."""
    auth = (jwt_claims(token) or {}).get(AUTH_CLAIM)
    account = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return account if isinstance(account, str) and 0 < len(account) <= 200 and account.isprintable() else None


def _device_key(device_auth_id: str) -> str:
    return hashlib.sha256(device_auth_id.encode()).hexdigest()[:40]


# Work that spends a single-use credential (a refresh token, an authorization code), in flight: it runs
# to its end even when the request that began it is cancelled (its client left, the shutdown), and the
# shutdown waits for it (``spent``), or what the issuer gave for it would be lost with the process.
_spending: set[asyncio.Future[Any]] = set()


async def _to_the_end(work: Coroutine[Any, Any, T], done: Callable[[], None] | None = None) -> T:
    task = asyncio.ensure_future(work)
    _spending.add(task)

    def finished(future: asyncio.Future[T]) -> None:
        if done is not None:
            done()
        _spending.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: nobody may be waiting any more

    task.add_done_callback(finished)
    return await asyncio.shield(task)


async def spent(timeout_s: float) -> None:
    """At shutdown: wait, at most ``timeout_s``, for the refreshes and sign-ins still in flight."""
    if _spending:
        await asyncio.wait(list(_spending), timeout=timeout_s)
