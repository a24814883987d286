"""Outbound HTTP, shared by every upstream call, and its error mapping.

Upstream POSTs (every turn) go through ``wire.Wire``, a lean HTTP/1.1 client, unless a proxy is set;
aiohttp serves proxied calls, the few GETs (keys, JWKS) and the legacy sign-in with its cookies.
aiohttp rather than httpx: with 32 concurrent requests httpx's pool was the bottleneck in our
measurements, aiohttp's was not. Redirects are never followed: an upstream that answers 3xx is a 502
naming that upstream, so an allowed host can never send a prompt (or a user's extra headers) to a
host that is not allowed.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import functools
import html
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..errors import BadGateway, GatewayTimeout, ServiceError
from ..redact import (
    MIN_SECRET,
    SECRETISH,
    TAIL_FROM,
    fragment_spans,
    has_secretish_word,
    lower,
    masked,
    secret_forms,
    spelled_otherwise,
)
from ..settings import Settings, netloc_of
from .wire import ConnectFailed, CutOff, Disconnected, NotHTTP, Wire, WireResponse

Answer = aiohttp.ClientResponse | WireResponse  # an upstream's answer, from either client

_SPACE = re.compile(r"\s")


@functools.lru_cache(maxsize=1024)  # the same few upstream URLs, on every request
def host_of(url: str) -> str:
    """host[:port] of a URL (IPv6 in brackets); never its userinfo, path or query."""
    try:
        parts = urlsplit(url)
        if parts.hostname:
            return netloc_of(parts.scheme, parts.hostname, parts.port)
    except ValueError:
        pass
    return "upstream"


@functools.lru_cache(maxsize=256)  # the same few keys on every request
def masking(secret: str) -> re.Pattern[bytes]:
    """The credential in every spelling ``secret_forms`` gives, for text passed on untouched (the
    Chat Completions pass-through)."""
    forms = sorted((re.escape(f.encode()) for f in secret_forms(secret, MIN_SECRET)), key=len, reverse=True)
    return re.compile(b"|".join(forms) or b"(?!)", re.IGNORECASE)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except (RecursionError, ValueError):  # nested past the interpreter's limit; an int too long to print
        return "(unreadable)"


def scrub(value: Any, *secrets: str, limit: int = 300) -> str:
    """An upstream's words made safe to show: no credential (the request's own in any letter case,
    whole, cut, or its last 8 characters, and anything shaped like a key or bearer token), no control
    characters, one line, bounded. Total: any value gives a string, in time linear in its size."""
    text = _text_of(value)
    if "&" in text:  # an HTML error page may spell the key as character references (&#115;&#107;...)
        text = html.unescape(text)
    window = limit * 8
    if len(text) > window:
        # Cut where no credential is split (they hold no white space): before the run the cut falls in.
        cut = text[:window]
        if not text[window].isspace():
            found = _SPACE.search(cut[::-1])
            cut = cut[: len(cut) - found.end()] if found else ""
        text = cut
    text = masked(text, *secrets)
    if spelled_otherwise(text, *secrets):  # nothing to cut out where the key is not spelled as sent
        return "(words that spelled the credential otherwise, left out)"
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[:limit] + "…"


def shown_label(value: str | None, secret: str) -> str | None:
    """An upstream's id or model name, as shown to the client: scrubbed if it looks like (or holds)
    the credential; the common case is one search of a short string."""
    if not value:
        return value
    low = lower(value)
    if ((len(secret) >= TAIL_FROM and secret[-8:].lower() in low)
            or fragment_spans(low, secret)  # the whole secret, or a run of it an echo cut
            or (has_secretish_word(value) and SECRETISH.search(value))):  # fmt: skip
        return scrub(value, secret, limit=len(value))
    return value


def retry_after(value: str | None) -> dict[str, str] | None:
    """A Retry-After header worth passing on: a number of seconds (ASCII digits) or an HTTP date in
    its one standard form (IMF-fixdate, as RFC 9110 has senders write it); nothing else."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 10:
        return {"Retry-After": value}
    if value.isascii() and len(value) == 29 and _imf_fixdate(value) == value:
        return {"Retry-After": value}
    return None


def _imf_fixdate(value: str) -> str | None:
    """``value`` read as a date and written back as IMF-fixdate (None if it is no date)."""
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return email.utils.format_datetime(when.astimezone(datetime.UTC), usegmt=True)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class HTTPClient:
    """Owns the aiohttp session; every upstream call goes through ``request``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        proxy = settings.proxy
        socks = bool(proxy and proxy.startswith("socks"))
        # An http(s) proxy is named on each request; a SOCKS one lives in the connector.
        self.proxy: str | None = None if socks else proxy
        self._socks: str | None = proxy if socks else None
        self._session: aiohttp.ClientSession | None = None
        # Upstream POSTs go through the lean client unless a proxy is set (aiohttp speaks to proxies).
        self.wire: Wire | None = None if proxy else Wire()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._make_session()
        return self._session

    def _make_session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if self._socks:
            from aiohttp_socks import ProxyConnector

            socks = self._socks
            connector = ProxyConnector.from_url(
                socks.replace("socks5h://", "socks5://"), rdns=socks.startswith("socks5h")
            )
        else:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
            max_line_size=65536,
            max_field_size=65536,
        )

    def cookie_session(self) -> aiohttp.ClientSession:
        """A session with its own cookie jar (for the legacy sign-in), sharing our connection pool."""
        return aiohttp.ClientSession(
            connector=self.session.connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: allow cookies from IP-address hosts
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if self.proxy:
            kwargs.setdefault("proxy", self.proxy)
        kwargs["allow_redirects"] = False
        return self.session.request(method, url, **kwargs)

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def post(http: HTTPClient, url: str, data: bytes, headers: dict[str, str], host: str) -> Any:
    """POST to an upstream. A failure below HTTP, and a redirect (never followed: it could send the
    prompt and the caller's headers anywhere), come back as our errors; any other answer is the
    caller's to read and release."""
    try:
        if http.wire is not None:
            response = await http.wire.post(url, data, headers)
        else:
            response = await http.request("POST", url, data=data, headers=headers)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, host, 0) from exc
    if is_redirect(response.status):
        response.release()
        raise redirect_error(host)
    return response


def is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304  # 304 redirects nowhere: an answer in error, as any other


def redirect_error(host: str) -> BadGateway:
    return BadGateway("upstream_redirect", host=host)


def transport_error(exc: BaseException, host: str, seconds: float, *, idle: bool = False) -> ServiceError:
    """A failure below HTTP (connect, reset, timeout) as the precise error a client sees."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        key = "upstream_idle_timeout" if idle else "upstream_timeout"
        return GatewayTimeout(key, host=host, seconds=round(seconds, 3))
    if isinstance(exc, aiohttp.ClientPayloadError | CutOff):
        return BadGateway("upstream_bad_reply", host=host, detail="the reply was cut off")
    if idle and isinstance(exc, NotHTTP | aiohttp.ClientResponseError):  # reached: its answer broke off
        return BadGateway("upstream_bad_reply", host=host, detail="the rest of the answer is not valid HTTP")
    detail = type(exc).__name__
    if isinstance(exc, ConnectFailed):
        detail = f"connection failed ({exc.strerror or 'refused'})"
    elif isinstance(exc, Disconnected):
        detail = "the server closed the connection"
    elif isinstance(exc, NotHTTP):
        detail = "the answer is not valid HTTP"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        detail = f"connection failed ({exc.os_error.strerror or type(exc.os_error).__name__})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        detail = "the server closed the connection"
    elif isinstance(exc, aiohttp.ClientOSError):
        detail = f"connection error ({exc.strerror or 'reset'})"
    elif isinstance(exc, aiohttp.ClientResponseError):
        detail = "the answer is not valid HTTP"
    return BadGateway("upstream_unreachable", host=host, detail=detail)


TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, CutOff)
STREAM_CUT = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, CutOff, Disconnected)  # cut mid-answer
_draining: set[asyncio.Task[None]] = set()


async def read_limited(response: Answer, limit: int, host: str) -> bytes:
    """A whole (non-streamed) body, refusing one larger than ``limit``."""
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise BadGateway("upstream_too_large", host=host, limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            response.close()
            raise BadGateway("upstream_too_large", host=host, limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


ERROR_BODY = 65536  # what is read of an error answer: its words and code are at its start


async def read_error(response: Answer) -> bytes:
    """The first ``ERROR_BODY`` bytes of an answer read for its error (a status other than success, a
    wrong content type); the rest is not waited for. A long error page still says what went wrong:
    its status decides, never its size."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY:
            response.close()
            break
    return b"".join(chunks)[:ERROR_BODY]


def under_limit(chunk: bytes, received: int, limit: int) -> bytes:
    """The part of ``chunk`` (the last piece read; ``received`` counts it) that ends at ``limit``."""
    over = received - limit
    return chunk[: max(0, len(chunk) - over)] if over > 0 else chunk


def finish_response(response: Answer, *, complete: bool) -> None:
    """Let go of a streamed response without waiting on it.

    Given up on: close the connection, which is what tells the upstream to stop writing. Read to its
    end: the connection goes back to the pool once the last bytes of the body (the chunked encoding's
    terminator, which some servers send a few milliseconds after the final event) have arrived; that
    wait happens in the background, never in front of the reply.
    """
    if not complete:
        response.close()
    elif response.content.at_eof():
        response.release()
    else:
        task = asyncio.get_running_loop().create_task(_drain(response))
        _draining.add(task)
        task.add_done_callback(_draining.discard)


DRAIN_LIMIT = 64 * 1024  # what may follow the end of a stream before its connection is given up


async def _drain(response: Answer) -> None:
    """Read (and drop) what follows the end of a stream, so the connection can be reused; an upstream
    that keeps sending past ``DRAIN_LIMIT`` or 5 s loses the connection instead."""
    try:
        left = DRAIN_LIMIT
        async with asyncio.timeout(5):
            async for chunk in response.content.iter_any():
                left -= len(chunk)
                if left < 0:
                    response.close()
                    return
        response.release()
    except (*TRANSPORT_ERRORS, asyncio.CancelledError):
        response.close()
