"""Secrets at rest: AES-GCM with a key derived from ``CHATGPT_SERVER_SECRET_KEY``.

The key is never stored: without the setting, nothing that needs encryption is stored at all (an
encrypted value next to its key would protect nothing).
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"chatgpt-server accounts v1"


class Sealer:
    def __init__(self, secret: bytes):
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"chatgpt-server", info=_INFO).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, plain: bytes, context: str) -> str:
        """Encrypted, bound to ``context`` (the record it belongs to), as URL-safe text."""
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, plain, context.encode())).decode()

    def open(self, sealed: str, context: str) -> bytes | None:
        """The plain bytes, or None if the value was not sealed by this key for this context."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode())
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except (InvalidTag, ValueError):
            return None
