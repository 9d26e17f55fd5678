"""API keys: each maps to one namespace, so a producer sees only its own tasks and studies.

Keys are stored hashed (SHA-256; they are random 32-byte tokens, so a plain hash is enough,
no salt or slow hash needed) in one Redis hash outside every namespace, `bo_queue:api-keys`:
hash -> {"namespace", "name", "created_at"}. The plain key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from bo_queue.errors import ValidationError

KEYS_HASH = "bo_queue:api-keys"
PREFIX = "boq_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, namespace: str, name: str = "") -> str:
        """A new key for `namespace`; returns the plain key (the only time it is shown)."""
        from bo_queue.config import Settings

        Settings.load(namespace=namespace)  # the same rules as everywhere (ConfigurationError)
        key = PREFIX + secrets.token_urlsafe(32)
        entry = {"namespace": namespace, "name": name, "created_at": time.time()}
        self.redis.hset(KEYS_HASH, digest(key), json.dumps(entry))
        return key

    def namespace_of(self, key: str) -> str | None:
        entry = self.entry(key)
        return None if entry is None else str(entry["namespace"])

    def entry(self, key: str) -> dict[str, Any] | None:
        """A key's id (as `list()` shows it), namespace, name and creation time; None if
        it is not a key."""
        hashed = digest(key)
        return _entry(hashed, self.redis.hget(KEYS_HASH, hashed))

    def list(self) -> list[dict[str, Any]]:
        """Every key's digest prefix, namespace, name and creation time (never the key)."""
        entries = self.redis.hgetall(KEYS_HASH)
        return sorted(
            ({"id": str(h)[:12], **json.loads(raw)} for h, raw in entries.items()),
            key=lambda e: (e["namespace"], e["created_at"]),
        )

    def revoke(self, key_or_id: str) -> bool:
        """Revoke by the plain key or by the id `list()` shows (a digest prefix)."""
        if key_or_id.startswith(PREFIX):
            return bool(self.redis.hdel(KEYS_HASH, digest(key_or_id)))
        if len(key_or_id) < 8:
            raise ValidationError("give at least 8 characters of the key's id")
        matches = [h for h in self.redis.hkeys(KEYS_HASH) if str(h).startswith(key_or_id)]
        if len(matches) > 1:
            raise ValidationError(f"{key_or_id!r} matches {len(matches)} keys; give more of it")
        return bool(matches) and bool(self.redis.hdel(KEYS_HASH, matches[0]))


class AsyncApiKeys:
    """The lookup the API does per request, on a `redis.asyncio` client: one HGET awaited
    on the serving loop, no worker thread."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def entry(self, key: str) -> dict[str, Any] | None:
        """As ApiKeys.entry."""
        hashed = digest(key)
        return _entry(hashed, await self.redis.hget(KEYS_HASH, hashed))


def _entry(hashed: str, raw: str | bytes | None) -> dict[str, Any] | None:
    return None if raw is None else {"id": hashed[:12], **json.loads(raw)}
