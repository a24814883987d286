"""Is a key good, before something is stored under it without any upstream call?

The Conversations API (and the reads of stored responses) stores and reads under the caller's key
without calling an upstream, so an invalid key would otherwise get a store of its own. The key is
checked once with the upstream (``GET {base}/models``, as every chat-completions server offers) and
the answer remembered for a while, in memory, by a hash of the key. An upstream that cannot say (it
has no such route, or is down) does not stop the caller: only a clear 401 or 403 does.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from ..errors import Unauthorized
from .http import TRANSPORT_ERRORS, HTTPClient, host_of

GOOD_FOR_S = 600.0
UNSURE_FOR_S = 60.0
MAX_KEYS = 10_000


class KeyCheck:
    def __init__(self, http: HTTPClient, timeout_s: float = 10.0):
        self.http = http
        self.timeout_s = timeout_s
        self._until: dict[bytes, float] = {}

    async def check(self, key: str, base_url: str) -> None:
        digest = hashlib.sha256(f"{base_url}\0{key}".encode()).digest()
        if self._until.get(digest, 0.0) > time.monotonic():
            return
        await self._ask(key, base_url, digest)

    async def check_any(self, key: str, base_urls: list[str]) -> None:
        """For routes that name no model (Conversations, stored responses, the model list): the key
        is good if one of the configured upstreams accepts it. Upstreams are asked in order, and
        only until one says yes, so a key seen working anywhere is not sent elsewhere."""
        if self._until.get(self._any(key), 0.0) > time.monotonic():
            return
        first: Unauthorized | None = None
        for base_url in base_urls:
            try:
                return await self.check(key, base_url)
            except Unauthorized as exc:
                first = first or exc
        if first is not None:
            raise first

    @staticmethod
    def _any(key: str) -> bytes:
        return hashlib.sha256(f"*\0{key}".encode()).digest()

    async def _ask(self, key: str, base_url: str, digest: bytes) -> None:
        status = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.request("GET", base_url + "/models",
                                                   headers={"Authorization": f"Bearer {key}"})  # fmt: skip
                status = response.status
                response.release()
        except (*TRANSPORT_ERRORS, TimeoutError):
            status = 0
        if status in (401, 403):
            raise Unauthorized(
                "upstream_unauthorized", host=host_of(base_url), detail="invalid_api_key", code="invalid_api_key"
            )  # as the upstream's own 401 is passed on
        if len(self._until) >= MAX_KEYS:
            self._until.clear()
        until = time.monotonic() + (GOOD_FOR_S if status == 200 else UNSURE_FOR_S)
        self._until[digest] = until
        self._until[self._any(key)] = max(until, self._until.get(self._any(key), 0.0))
