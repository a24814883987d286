"""Conversations belong to the credential that created them; the store keeps only a keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from ..stores import Store

log = logging.getLogger("chatgpt_server")
# What the store's mark of the key is made of: a keyed hash of a constant, which tells keys apart
# without keeping anything that helps find one.
MARK_OF = b"chatgpt-server: the key conversations are owned under"


class Owners:
    """Keyed hashes of credentials. The key is ``CHATGPT_SERVER_SECRET_KEY`` if set; otherwise one is
    generated once and kept in the store, so every instance sharing the store uses the same key."""

    def __init__(self, store: Store, key: bytes | None):
        self._store = store
        self._key = key
        self._checked = False
        # The same few credentials come again and again: their hashes, kept (by the credential) for
        # a dictionary lookup instead of an HMAC per request. Bounded; cleared when full.
        self._known: dict[str, str] = {}

    async def key(self) -> bytes:
        """The key; the first time, also checked against the mark the store keeps of the key its
        conversations were stored under: a key set or changed since leaves them out of reach, and an
        operator must hear of it (the requests would only get 404s)."""
        if self._key is None:
            self._key = await self._store.shared_secret(secrets.token_bytes(32))
        if not self._checked:
            mark = hmac.new(self._key, MARK_OF, hashlib.sha256).digest()[:16]
            if await self._store.shared_secret(mark, "owner_key_mark") != mark:
                log.error(
                    "CHATGPT_SERVER_SECRET_KEY is not the key this store's conversations were stored under (it "
                    "was set or changed since): those conversations, and the accounts it encrypts, are out of "
                    "reach (404) until the key they were stored under is set again"
                )
            self._checked = True
        return self._key

    async def of(self, credential: str) -> str:
        found = self._known.get(credential)
        if found is not None:
            return found
        key = self._key if self._checked and self._key is not None else await self.key()
        owner = hmac.new(key, credential.encode(), hashlib.sha256).hexdigest()[:40]
        if len(self._known) >= 4096:
            self._known.clear()
        self._known[credential] = owner
        return owner
