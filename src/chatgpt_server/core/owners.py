"""Conversations belong to the credential that created them; the store keeps only a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..stores import Store


class Owners:
    """Keyed hashes of credentials. The key is ``CHATGPT_SERVER_SECRET_KEY`` if set; otherwise one is
    generated once and kept in the store, so every instance sharing the store uses the same key."""

    def __init__(self, store: Store, key: bytes | None):
        self._store = store
        self._key = key

    async def key(self) -> bytes:
        if self._key is None:
            self._key = await self._store.shared_secret(secrets.token_bytes(32))
        return self._key

    async def of(self, credential: str) -> str:
        key = self._key or await self.key()
        return hmac.new(key, credential.encode(), hashlib.sha256).hexdigest()[:40]
