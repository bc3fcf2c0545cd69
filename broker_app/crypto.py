"""Token encryption at rest: AES-256-GCM with a key ring.

Ciphertext format: ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``. The key id is
the first 8 hex digits of SHA-256 of the key, so every ciphertext names the key that made
it. The first key of TOKEN_ENCRYPTION_KEYS encrypts; every key decrypts. Associated data
binds a ciphertext to its row and field (``<connection id>:<field>``): copied to another
row it no longer decrypts, and any tampering fails authentication.

Rotation: put a new key first, keep the old ones after it, run
``manage.py rotate_token_keys`` (re-encrypts every row under the first key), then drop
the retired keys once ``rotate_token_keys --check`` reports none left.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dromos.errors import ApiError

VERSION = "v1"
logger = logging.getLogger(__name__)


class DecryptionError(ApiError):
    """A ciphertext could not be decrypted (unknown key, tampered, or bound elsewhere).

    An API call that hits one answers 500 with a JSON error that names neither key nor value."""

    status_code, code = 500, "token_unreadable"


def _b64decode(value: str) -> bytes:
    padded = value + "=" * (-len(value) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def parse_keys(raw: str) -> list[bytes]:
    keys = []
    for index, item in enumerate(part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            key = _b64decode(item)
        except (binascii.Error, ValueError):
            raise ImproperlyConfigured(f"TOKEN_ENCRYPTION_KEYS entry {index + 1} is not url-safe base64") from None
        if len(key) != 32:
            raise ImproperlyConfigured(
                f"TOKEN_ENCRYPTION_KEYS entry {index + 1} must decode to 32 bytes (Fernet.generate_key() format)"
            )
        keys.append(key)
    if not keys:
        raise ImproperlyConfigured("TOKEN_ENCRYPTION_KEYS holds no key")
    ids: dict[str, bytes] = {}
    for key in keys:
        if ids.setdefault(key_id(key), key) != key:  # 32-bit id collision: vanishingly rare, but fatal
            raise ImproperlyConfigured("two TOKEN_ENCRYPTION_KEYS entries share a key id; generate another key")
    return keys


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class KeyRing:
    def __init__(self, keys: list[bytes]) -> None:
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self.primary_id = key_id(keys[0])
        self._primary = self._ciphers[self.primary_id]

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def encrypt(self, plaintext: str, *, aad: str) -> str:
        nonce = os.urandom(12)
        sealed = self._primary.encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{VERSION}.{self.primary_id}.{body}"

    def decrypt(self, ciphertext: str, *, aad: str) -> str:
        try:
            version, kid, body = ciphertext.split(".", 2)
        except ValueError:
            raise DecryptionError("malformed ciphertext") from None
        if version != VERSION:
            raise DecryptionError("unknown ciphertext version")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(f"ciphertext made with unknown key {kid}")
        try:
            raw = _b64decode(body)
            return cipher.decrypt(raw[:12], raw[12:], aad.encode("utf-8")).decode("utf-8")
        except (InvalidTag, ValueError, binascii.Error):
            raise DecryptionError("ciphertext failed authentication") from None

    @staticmethod
    def key_of(ciphertext: str) -> str | None:
        parts = ciphertext.split(".", 2)
        return parts[1] if len(parts) == 3 else None

    @property
    def primary_prefix(self) -> str:
        """Every ciphertext made by the current primary key starts with this."""
        return f"{VERSION}.{self.primary_id}."

    def is_current(self, ciphertext: str) -> bool:
        return not ciphertext or ciphertext.startswith(self.primary_prefix)

    def reencrypt(self, ciphertext: str, *, aad: str) -> str:
        """The same plaintext under the primary key (unchanged when already there)."""
        if self.is_current(ciphertext):
            return ciphertext
        return self.encrypt(self.decrypt(ciphertext, aad=aad), aad=aad)


@lru_cache(maxsize=1)
def _ring_for(raw: str) -> KeyRing:
    return KeyRing(parse_keys(raw))


def keyring() -> KeyRing:
    return _ring_for(settings.TOKEN_ENCRYPTION_KEYS)


def client_secret_aad(provider_id: object) -> str:
    """Associated data binding a provider's client secret to its row."""
    return f"provider:{provider_id}:client_secret"


def private_key_aad(provider_id: object) -> str:
    """Associated data binding a provider's app private key (issue 18) to its row."""
    return f"provider:{provider_id}:private_key"


def webhook_secret_aad(endpoint_id: object) -> str:
    """Associated data binding a webhook endpoint's signing secret to its row."""
    return f"webhook:{endpoint_id}:secret"


def encrypt(plaintext: str | None, *, aad: str) -> str:
    if not plaintext:
        return ""
    return keyring().encrypt(plaintext, aad=aad)


def decrypt(ciphertext: str | None, *, aad: str) -> str | None:
    if not ciphertext:
        return None
    try:
        return keyring().decrypt(ciphertext, aad=aad)
    except DecryptionError as exc:
        # The associated data names the row and field; never the key or the value.
        logger.error("stored ciphertext does not decrypt", extra={"aad": aad, "reason": exc.message})
        raise


def digest(value: str) -> str:
    """A one-way fingerprint for lookups and comparisons (states, nonces, refresh tokens)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
