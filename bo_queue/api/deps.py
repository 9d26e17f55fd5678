"""Request dependencies: the caller's API key -> its namespace -> a BOQueue for it (the
sync routes, in FastAPI's thread pool) or an AsyncBOQueue (the async routes, on the loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import HTTPException, Request

from bo_queue.aio import AsyncBOQueue
from bo_queue.api.keys import ApiKeys, AsyncApiKeys
from bo_queue.client import BOQueue
from bo_queue.config import Settings


class Namespaces:
    """One BOQueue per namespace, built on first use from the app's settings, and over it
    one AsyncBOQueue (`aget`), whose `sync` is that BOQueue.

    A redis.asyncio connection belongs to the loop that opened it, so the async facades
    are made lazily on the serving loop and closed there (`aclose`, in the app's
    lifespan); a new loop (Starlette's TestClient runs one per `with` block) gets new ones.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queues: dict[str, BOQueue] = {}
        self._lock = threading.Lock()
        self._admin = BOQueue(settings=settings)  # reads the key hash
        self.keys = ApiKeys(self._admin.redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: dict[str, AsyncBOQueue] = {}
        self._async_admin: AsyncBOQueue | None = None

    def get(self, namespace: str) -> BOQueue:
        with self._lock:
            if namespace not in self._queues:
                fields = self.settings.model_dump()
                fields["namespace"] = namespace
                self._queues[namespace] = BOQueue(settings=Settings(**fields))
            return self._queues[namespace]

    def aget(self, namespace: str) -> AsyncBOQueue:
        """The namespace's AsyncBOQueue on the running loop (call it on the loop)."""
        self._this_loop()
        if namespace not in self._async:
            self._async[namespace] = AsyncBOQueue.over(self.get(namespace))
        return self._async[namespace]

    def async_keys(self) -> AsyncApiKeys:
        """The key store on the running loop (call it on the loop)."""
        self._this_loop()
        if self._async_admin is None:
            self._async_admin = AsyncBOQueue.over(self._admin)
        return AsyncApiKeys(self._async_admin.redis)

    def _this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the old loop's clients cannot be used (nor closed) here
            self._loop, self._async, self._async_admin = loop, {}, None

    async def aclose(self) -> None:
        """Close the async facades' clients (on the loop that made them); the BOQueues
        under them stay open for the sync routes, until close()."""
        facades = [*self._async.values(), *filter(None, [self._async_admin])]
        self._loop, self._async, self._async_admin = None, {}, None
        for aq in facades:
            await aq.close()

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
    return namespaces.get(_namespace(request, namespaces.keys.entry(key) if key else None))


async def current_aq(request: Request) -> AsyncBOQueue:
    """current_bq for the async routes: the key looked up with an HGET awaited on the
    loop, and the caller's namespace's AsyncBOQueue."""
    key = api_key(request)
    namespaces: Namespaces = request.app.state.namespaces
    entry = await namespaces.async_keys().entry(key) if key else None
    return namespaces.aget(_namespace(request, entry))


def _namespace(request: Request, entry: dict[str, Any] | None) -> str:
    if entry is None:
        raise HTTPException(status_code=401, detail="a valid API key is required",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.key_name = str(entry.get("name") or entry["id"])
    return str(entry["namespace"])


def key_name(request: Request) -> str | None:
    """The name `current_bq` found for the caller's key (None before it ran)."""
    name = getattr(request.state, "key_name", None)
    return name if isinstance(name, str) else None
