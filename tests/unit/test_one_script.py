"""Issue 19's scripts on fakeredis: a submit's records and messages in one command
(record_create.lua with RecordStore's Sends), a success's result and record in one
(record_succeed.lua)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from bo_queue import BOQueue
from bo_queue.core.message import Message
from bo_queue.core.records import Sends
from bo_queue.states import TaskState


class Counting:
    """A pipeline stand-in that keeps the commands queued on it, then runs them."""

    def __init__(self, client: fakeredis.FakeRedis) -> None:
        self.pipe = client.pipeline(transaction=False)
        self.commands: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> Any:
            self.commands.append(name)
            return getattr(self.pipe, name)(*args, **kwargs)

        return queue


def test_a_batch_is_one_command_with_records_outbox_and_pushes_in_order(
    bq: BOQueue, fake: fakeredis.FakeRedis
) -> None:
    sends = Sends()
    records = []
    for i in range(3):
        message = Message(handler="h", payload={"i": i}, queue="default")
        bq.send(f"t{i}", message, sends)  # what Core.send writes, collected
        records.append({"id": f"t{i}", "handler": "h", "queue": "default", "state": "QUEUED",
                        "created_at": 100.0 + i, "tags": (), "priority": 2})
    pipe = Counting(fake)
    bq.records.create_many(pipe, records, sends)
    assert pipe.commands == ["eval"]  # one command for the whole batch
    assert pipe.pipe.execute() == [3]

    for i in range(3):
        info = bq.records.get(f"t{i}")
        assert info is not None and info.state is TaskState.QUEUED and info.tags == ()
        assert 0 < fake.ttl(f"unit:task:t{i}") <= bq.records.ttl_s
    assert fake.zrange("unit:state:QUEUED", 0, -1, withscores=True) == [
        ("t0", 100.0), ("t1", 101.0), ("t2", 102.0)]
    assert [e[1]["id"] for e in fake.xrange("unit:events")] == ["t0", "t1", "t2"]
    assert set(fake.hkeys("unit:outbox")) == {"t0", "t1", "t2"}
    # the first sent is the first a worker's BRPOP takes, as with one LPUSH each
    queued = fake.lrange(bq.keys.broker_prefix + "default", 0, -1)
    assert [json.loads(m)["headers"]["id"] for m in reversed(queued)] == ["t0", "t1", "t2"]


def test_links_follow_the_script_and_a_plain_record_sends_nothing(
    bq: BOQueue, fake: fakeredis.FakeRedis
) -> None:
    pipe = Counting(fake)
    bq.records.create(pipe, {"id": "c", "handler": "h", "queue": "q", "state": "PENDING",
                             "created_at": 1.0, "tags": ("x",), "parent_id": "p"})
    assert pipe.commands == ["eval", "sadd", "eval", "sadd", "eval"]  # record, 2 links
    pipe.pipe.execute()
    assert fake.smembers("unit:tag:x") == {"c"} and fake.smembers("unit:task:p:children") == {"c"}
    assert fake.hlen("unit:outbox") == 0 and fake.keys("*broker*") == []


@pytest.mark.parametrize("stored_before", [None, "FAILURE", "SUCCESS"])
def test_a_success_stores_its_result_and_ends_its_record_in_one_script(
    bq: BOQueue, fake: fakeredis.FakeRedis, stored_before: str | None
) -> None:
    bq.redis.hset("unit:task:s", mapping={"id": "s", "handler": "h", "queue": "q",
                                          "state": "RUNNING", "attempts": 1,
                                          "priority": 2, "created_at": 1.0})
    key = "unit:results:celery-task-meta-s"
    if stored_before:
        fake.set(key, json.dumps({"status": stored_before, "result": "earlier"}))
    meta = json.dumps({"status": "SUCCESS", "result": {"ok": 1}, "task_id": "s"})
    assert bq.records.succeed("s", key, meta, 60, finished_at=5.0, progress=1.0)
    stored = json.loads(fake.get(key))
    # not over a success already stored (Celery's rule), over anything else
    assert stored["result"] == ("earlier" if stored_before == "SUCCESS" else {"ok": 1})
    assert 0 < fake.ttl(key) <= 60 or stored_before == "SUCCESS"
    info = bq.records.get("s")
    assert info is not None and info.state is TaskState.SUCCEEDED and info.progress == 1.0
    assert fake.zscore("unit:state:SUCCEEDED", "s") is not None
    assert [json.loads(r)["outcome"] for r in fake.lrange("unit:task:s:runs", 0, -1)] == [
        "SUCCEEDED"]
    # a second delivery's success changes nothing: the record has ended
    assert not bq.records.succeed("s", key, meta, 60, finished_at=6.0)
