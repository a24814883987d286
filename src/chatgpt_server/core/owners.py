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
        # The same few credentials come again and again: their hashes, kept (by the credential) for
        # a dictionary lookup instead of an HMAC per request. Bounded; cleared when full.
        self._known: dict[str, str] = {}

    async def key(self) -> bytes:
        if self._key is None:
            self._key = await self._store.shared_secret(secrets.token_bytes(32))
        return self._key

    async def of(self, credential: str) -> str:
        found = self._known.get(credential)
        if found is not None:
            return found
        key = self._key or await self.key()
        owner = hmac.new(key, credential.encode(), hashlib.sha256).hexdigest()[:40]
        if len(self._known) >= 4096:
            self._known.clear()
        self._known[credential] = owner
        return owner
