"""Heartbeat cards (bo_queue.core.heartbeats): what a card is, which are alive, which a
worker reaps as silent (and reports once), which the monitor forgets, and which
unacknowledged messages belong to no live worker and are put back."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest

from bo_queue.core.heartbeats import Heartbeats, parse
from bo_queue.core.keys import Keys

KEYS = Keys("t")


@pytest.fixture
def beats(fake: fakeredis.FakeRedis) -> Heartbeats:
    return Heartbeats(fake, KEYS, timeout_s=10.0)


def test_parse_reads_cards_and_the_bare_timestamps_older_workers_wrote() -> None:
    assert parse(json.dumps({"at": 5.0, "queues": ["default"]})) == {"at": 5.0,
                                                                     "queues": ["default"]}
    assert parse("123.5") == {"at": 123.5}
    for unreadable in ("not json", "[]", json.dumps({"queues": []}), json.dumps({"at": "5"})):
        assert parse(unreadable) is None


def test_a_beat_is_stamped_now_and_alive(beats: Heartbeats) -> None:
    before = time.time()
    beats.beat("w1", {"queues": ["default"], "pid": 7})
    card = beats.cards()["w1"]
    assert card is not None and card["pid"] == 7 and card["at"] >= before
    assert beats.has("w1")
    assert beats.live() == [card]
    beats.remove("w1")
    assert not beats.has("w1") and beats.live() == []


def test_stale_and_unreadable_cards_are_not_alive(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, mapping={
        "fresh": json.dumps({"at": now - 5}), "stale": json.dumps({"at": now - 11}),
        "garbled": "{", "bare": str(now - 1),
    })
    assert sorted(card["at"] for card in beats.live()) == [now - 5, now - 1]


def test_reaping_removes_the_silent_once_and_never_the_reaper(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, mapping={
        "me": json.dumps({"at": now - 100}), "alive": json.dumps({"at": now}),
        "killed": json.dumps({"at": now - 100}), "garbled": "{",
    })
    assert sorted(beats.reap_silent("me")) == ["garbled", "killed"]
    assert sorted(beats.cards()) == ["alive", "me"]
    assert beats.reap_silent("alive") == ["me"]
    assert beats.reap_silent("alive") == []  # each reported once


def test_long_gone_cards_are_the_ones_the_monitor_forgets(beats: Heartbeats) -> None:
    now = time.time()
    assert beats.gone(None, now)
    assert not beats.gone({"at": now - 59}, now)  # stale, not yet gone: a minute at least
    assert beats.gone({"at": now - 101}, now)  # ten timeouts
    beats.beat("w1", {})
    beats.forget(["w1"])
    beats.forget([])
    assert beats.cards() == {}


def unacked(fake: fakeredis.FakeRedis, tag: str, delivered_at: float, priority: int = 6,
            queue: str = "default") -> str:
    """A message as kombu records it unacknowledged: its entry and its delivery time."""
    message = {"body": "e30=", "headers": {"id": f"task-{tag}"},
               "properties": {"priority": priority, "delivery_tag": tag,
                              "delivery_info": {"exchange": queue, "routing_key": queue}}}
    entry = json.dumps([message, queue, queue])
    fake.hset(KEYS.broker_prefix + "unacked", tag, entry)
    fake.zadd(KEYS.broker_prefix + "unacked_index", {tag: delivered_at})
    return entry


def test_orphans_are_the_tags_no_live_or_stopping_card_holds(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, mapping={
        "live": json.dumps({"at": now - 1, "held": ["mine"]}),
        "stopping": json.dumps({"at": now - 30, "held": ["finishing"], "stopping": True}),
        "dead": json.dumps({"at": now - 11, "held": ["lost"]}),
    })
    for tag in ("mine", "finishing", "lost", "unlisted"):
        unacked(fake, tag, now - 20)
    unacked(fake, "just-delivered", now - 0.5)  # after the live card was written
    assert sorted(beats.orphans()) == ["lost", "unlisted"]
    fake.hset(KEYS.workers, "stopping", json.dumps({"at": now - 101, "held": ["finishing"],
                                                     "stopping": True}))  # gone: killed meanwhile
    assert sorted(beats.orphans()) == ["finishing", "lost", "unlisted"]
    fake.hset(KEYS.workers, "older", json.dumps({"at": now}))  # lists no tags: unknown
    assert beats.orphans() == []


def test_restoring_puts_each_orphan_at_the_head_of_its_priority_list_once(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, "live", json.dumps({"at": now, "held": []}))
    fake.rpush(KEYS.broker_prefix + "default:6", "queued earlier")
    unacked(fake, "a", now - 20)
    unacked(fake, "b", now - 20, priority=0, queue="bo")
    assert sorted(beats.restore_orphans()) == ["task-a", "task-b"]
    assert fake.hlen(KEYS.broker_prefix + "unacked") == 0
    assert fake.zcard(KEYS.broker_prefix + "unacked_index") == 0
    first = json.loads(fake.rpop(KEYS.broker_prefix + "default:6") or "")  # BRPOP's end
    assert first["headers"] == {"id": "task-a", "redelivered": True}
    assert first["properties"]["delivery_info"]["redelivered"] is True
    assert fake.lrange(KEYS.broker_prefix + "default:6", 0, -1) == ["queued earlier"]
    assert json.loads(fake.lpop(KEYS.broker_prefix + "bo") or "")["headers"]["id"] == "task-b"
    assert beats.restore_orphans() == []  # put back once


def test_a_message_acknowledged_after_it_was_read_is_not_put_back(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, "live", json.dumps({"at": now, "held": []}))
    entry = unacked(fake, "a", now - 20)
    fake.hdel(KEYS.broker_prefix + "unacked", "a")  # acknowledged meanwhile
    unacked(fake, "b", now - 20)
    restored = beats._restore(  # the script alone: the entry read before the ack
        keys=[KEYS.broker_prefix + "unacked", KEYS.broker_prefix + "unacked_index",
              KEYS.broker_prefix + "default:6"],
        args=["a", entry, "{}"])
    assert restored == [] and fake.llen(KEYS.broker_prefix + "default:6") == 0


def test_a_stopping_card_is_reaped_only_once_gone(
    beats: Heartbeats, fake: fakeredis.FakeRedis
) -> None:
    now = time.time()
    fake.hset(KEYS.workers, mapping={
        "finishing": json.dumps({"at": now - 50, "held": ["t"], "stopping": True}),
        "killed-while-stopping": json.dumps({"at": now - 101, "held": [], "stopping": True}),
    })
    assert beats.reap_silent("me") == ["killed-while-stopping"]
    assert list(beats.cards()) == ["finishing"]
