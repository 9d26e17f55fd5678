"""Heartbeat cards (bo_queue.core.heartbeats): what a card is, which are alive, which a
worker reaps as silent (and reports once), and which the monitor forgets."""

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
