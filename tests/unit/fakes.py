"""Helpers for the unit tests: a BOQueue whose every Redis client is fakeredis."""

from __future__ import annotations

from typing import Any

import fakeredis
import fakeredis.aioredis

from bo_queue import BOQueue
from bo_queue.aio import AsyncBOQueue

# Nothing listens here; BOQueue never connects at construction, and every client it uses
# is a fakeredis one given to its constructor.
UNREACHABLE_URL = "redis://127.0.0.1:1/0"


def fake_bq(server: fakeredis.FakeServer, **options: Any) -> BOQueue:
    """A BOQueue on one fake server: its text client, its bytes client (study models) and
    Celery's result backend (bytes, as Celery uses it) with our reader of it."""
    options.setdefault("namespace", "unit")
    return BOQueue(
        redis_url=UNREACHABLE_URL,
        client=fakeredis.FakeRedis(server=server, decode_responses=True),
        raw_client=fakeredis.FakeRedis(server=server),
        results_client=fakeredis.FakeRedis(server=server),
        **options,
    )


def fake_aq(bq: BOQueue, server: fakeredis.FakeServer) -> AsyncBOQueue:
    """An AsyncBOQueue over `bq` (as the API's Namespaces makes one) whose asyncio clients
    are fakeredis's on the same server: a text one and a bytes one for the results. They
    connect on first use, on the loop that awaits them; close it on that loop."""
    return AsyncBOQueue.over(
        bq, client=fakeredis.aioredis.FakeRedis(server=server, decode_responses=True),
        results_client=fakeredis.aioredis.FakeRedis(server=server))
