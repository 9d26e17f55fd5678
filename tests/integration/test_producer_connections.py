"""What a producer does to Redis, counted on a private server (no workers, no other tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bo_queue import BOQueue, handler
from bo_queue.testing import RedisServer


@handler("t.local_only")
def local_only(payload: dict[str, object], ctx: object) -> None:
    """Declared in this process, so submitting needs no worker's handler directory."""


@pytest.fixture
def quiet() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_submitting_subscribes_to_nothing(quiet: RedisServer) -> None:
    """Celery's Redis backend SUBSCRIBEs to each task's result channel when it is sent. Nobody
    would read that connection, and Redis buffers every result for it until it cuts the
    producer off; bo_queue reads results itself, so its producers must not subscribe."""
    client = redis.Redis(port=quiet.port)
    with BOQueue(redis_url=quiet.url, namespace="quiet") as bq:
        bq.submit("t.local_only", {})  # connections and scripts set up
        before = _calls(client, "subscribe")
        for i in range(20):
            bq.submit("t.local_only", {"i": i})
        bq.submit_many({"handler": "t.local_only", "payload": {"i": i}} for i in range(20))
        assert _calls(client, "subscribe") == before
        assert _calls(client, "lpush") >= 41  # the messages did go out
    client.close()


def test_tagged_submits_make_no_script_round_trips(quiet: RedisServer) -> None:
    """A pipeline holding registered scripts first asks SCRIPT EXISTS: a round trip."""
    client = redis.Redis(port=quiet.port)
    with BOQueue(redis_url=quiet.url, namespace="quiet") as bq:
        bq.submit("t.local_only", {}, tags=("warm",))
        before = _calls(client, "script|exists") + _calls(client, "script")
        for i in range(10):
            bq.submit("t.local_only", {"i": i}, tags=("a", "b"), parent_id="p")
        assert _calls(client, "script|exists") + _calls(client, "script") == before
    client.close()
