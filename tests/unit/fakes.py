"""Helpers for the unit tests: a BOQueue whose every Redis client is fakeredis."""

from __future__ import annotations

import fakeredis

from bo_queue import BOQueue
from bo_queue.core.delays import DelayedSubmissions
from bo_queue.core.records import RecordStore

# Nothing listens here; BOQueue never connects at construction, and the tests swap in
# fakeredis before any command is sent.
UNREACHABLE_URL = "redis://127.0.0.1:1/0"


def attach_fakeredis(bq: BOQueue, server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """Point every Redis client a BOQueue uses at one fake server."""
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    bq.redis = client
    bq.records = RecordStore(
        client, bq.keys, bq.settings.result_expires_s, on_settled=bq._on_settled
    )
    bq.delays = DelayedSubmissions(client, bq.keys)
    # Celery's result backend (bytes client, as Celery uses it) and our reader of it.
    bq.app.backend.client = fakeredis.FakeRedis(server=server)
    bq.results.redis = fakeredis.FakeRedis(server=server)
    bq._raw_redis = fakeredis.FakeRedis(server=server)  # bytes, for study models
    return client
