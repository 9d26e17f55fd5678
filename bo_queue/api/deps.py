"""Request dependencies: the caller's API key -> its namespace -> a BOQueue for it."""

from __future__ import annotations

import threading

from fastapi import HTTPException, Request

from bo_queue.api.keys import ApiKeys
from bo_queue.client import BOQueue
from bo_queue.config import Settings


class Namespaces:
    """One BOQueue per namespace, built on first use from the app's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queues: dict[str, BOQueue] = {}
        self._lock = threading.Lock()
        self._admin = BOQueue(settings=settings)  # reads the key hash
        self.keys = ApiKeys(self._admin.redis)

    def get(self, namespace: str) -> BOQueue:
        with self._lock:
            if namespace not in self._queues:
                fields = self.settings.model_dump()
                fields["namespace"] = namespace
                self._queues[namespace] = BOQueue(settings=Settings(**fields))
            return self._queues[namespace]

    def close(self) -> None:
        for bq in self._queues.values():
            bq.close()
        self._admin.close()


def api_key(request: Request) -> str | None:
    """From `X-API-Key`, `Authorization: Bearer <key>`, or (for pages a browser opens)
    the `key` query parameter."""
    header = request.headers.get("x-api-key")
    if header:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "/dashboard" in request.url.path:  # a page a browser opens cannot send headers
        return request.query_params.get("key")
    return None


def current_bq(request: Request) -> BOQueue:
    """The caller's BOQueue; 401 without a valid key. The key's name (its id if it has
    none) is left on `request.state.key_name`, for records to say who submitted a task."""
    key = api_key(request)
    namespaces: Namespaces = request.app.state.namespaces
    entry = namespaces.keys.entry(key) if key else None
    if entry is None:
        raise HTTPException(status_code=401, detail="a valid API key is required",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.key_name = str(entry.get("name") or entry["id"])
    return namespaces.get(str(entry["namespace"]))


def key_name(request: Request) -> str | None:
    """The name `current_bq` found for the caller's key (None before it ran)."""
    name = getattr(request.state, "key_name", None)
    return name if isinstance(name, str) else None
