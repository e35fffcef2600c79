"""API keys: `GAN_API_KEY` and/or `GAN_API_KEYS_FILE` (one key per line, `#` comments).

Keys are kept only as SHA-256 digests and compared with `hmac.compare_digest` against every key, so neither
the time taken nor an early exit tells a caller how much of a key was right. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from service.settings import Settings

MIN_KEY_LENGTH = 16


class ApiKeyError(ValueError):
    pass


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if presented is None:
            return False
        digest, ok = _digest(presented), False
        for known in self._digests:  # no early exit
            ok |= hmac.compare_digest(digest, known)
        return ok


def read_keys_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ApiKeyError(f"GAN_API_KEYS_FILE {path}: cannot read it ({error.strerror})") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ApiKeyError(f"GAN_API_KEYS_FILE {path}: holds no key (one key per line, # for comments)")
    return keys


def key_ring(settings: Settings) -> KeyRing | None:
    """The keys the settings name, or None when authentication is off (neither setting given)."""
    keys = [settings.api_key.get_secret_value()] if settings.api_key is not None else []
    if settings.api_keys_file is not None:
        keys += read_keys_file(settings.api_keys_file)
    if not keys:
        return None
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise ApiKeyError(
                f"API key #{number} is not usable: keys need at least {MIN_KEY_LENGTH} characters and no spaces"
            )
    return KeyRing(keys)


def admin_ring(settings: Settings, users: KeyRing | None) -> KeyRing | None:
    """The model-control key (GAN_ADMIN_KEY), or None: control is off. It must not also be a user key."""
    if settings.admin_key is None:
        return None
    key = settings.admin_key.get_secret_value()
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise ApiKeyError(
            f"GAN_ADMIN_KEY is not usable: keys need at least {MIN_KEY_LENGTH} characters and no spaces"
        )
    if users is not None and users.accepts(key):
        raise ApiKeyError("GAN_ADMIN_KEY is also an API key: model control needs a key of its own")
    return KeyRing([key])


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """`Authorization: Bearer <key>` or `X-API-Key: <key>` from raw ASGI headers."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None
