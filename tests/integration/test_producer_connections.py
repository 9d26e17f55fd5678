"""What a producer does to Redis, counted on a private server (no workers, no other tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
        queued = [client.llen(key) for key in client.keys("quiet:broker:default*")]
        assert sum(queued) == 41  # the messages did go out
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


def test_a_submit_is_one_round_trip(quiet: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record, the outbox entry and the message go in one request to Redis a submit,
    one a batch (kombu's producer is not on this path): a MULTI when tags add commands, a
    single EVAL for a plain batch."""
    client = redis.Redis(port=quiet.port)
    with BOQueue(redis_url=quiet.url, namespace="quiet") as bq:
        bq.submit("t.local_only", {})  # connections and scripts set up
        execs = _calls(client, "exec")
        requests: list[int] = []
        write = redis.connection.Connection.send_packed_command

        def counted(self: redis.connection.Connection, *args: Any, **kwargs: Any) -> None:
            requests.append(1)
            write(self, *args, **kwargs)

        monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counted)
        for i in range(10):
            bq.submit("t.local_only", {"i": i}, tags=("a",), priority="high")
        bq.submit_many({"handler": "t.local_only", "payload": {"i": i}} for i in range(50))
        monkeypatch.undo()
        assert len(requests) == 11
        assert _calls(client, "exec") - execs == 10  # the tagged submits; the batch: EVAL
        queued = [client.llen(key) for key in client.keys("quiet:broker:default*")]
        assert sum(queued) == 61 and client.hlen("quiet:outbox") == 61
    client.close()
