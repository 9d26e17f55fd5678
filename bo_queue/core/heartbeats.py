"""Worker heartbeat cards: one JSON card per worker in the `workers` hash, rewritten
every tick by workers/lifecycle.py; read here by the kernel (placement checks), the
monitor (bq.monitor.workers) and the outbox's loss detection (silent workers).

A card: {"at": unix time of the beat, "queues", "concurrency", "pid", "started_at",
"capabilities", "offers", "versions", "active", "held", "stopping"}. Older workers wrote a
bare timestamp.

A dead worker's messages come back at once (`restore_orphans`), not after the visibility
timeout: kombu keeps every message a worker holds unacknowledged in its `unacked` hash
(delivery tag -> [message, exchange, routing key]) and `unacked_index` (tag -> when it was
delivered), and each card lists the tags its worker holds ("held", gathered before the
card's "at"). A tag delivered before every live card was written and listed by none
of them belongs to no live worker: its worker stopped heartbeating (killed, its host
lost, or cut off from Redis for longer than the timeout), so it is put back on its queue.
Counted cards: the live ones, and those of workers in a warm shutdown ("stopping": its
heartbeat stops while the pool finishes the running tasks) until they are `gone`. A live
card without "held" (an older worker) stops the restore: its tags are unknown.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from bo_queue.core import scripts
from bo_queue.core.keys import Keys

log = logging.getLogger(__name__)

Card = dict[str, Any]
# Cards and kombu's delivery times come from the clocks of different hosts.
CLOCK_SKEW_S = 2.0
PRIORITIES = 10  # the priority lists of each queue (broker_transport_options)


def parse(raw: str) -> Card | None:
    """A card as stored, or None if it cannot be read (no "at")."""
    try:
        card = json.loads(raw)
    except ValueError:
        return None
    if isinstance(card, int | float):  # a bare timestamp, as older workers wrote
        return {"at": float(card)}
    return card if isinstance(card, dict) and isinstance(card.get("at"), int | float) else None


class Heartbeats:
    """The cards of every worker of a namespace, and which of them are alive."""

    def __init__(self, client: redis.Redis, keys: Keys, timeout_s: float) -> None:
        self.redis = client
        self.key = keys.workers
        self.timeout_s = timeout_s
        self.broker_prefix = keys.broker_prefix
        self.unacked = keys.broker_prefix + "unacked"
        self.unacked_index = keys.broker_prefix + "unacked_index"
        self._restore = scripts.register(client, "unacked_restore.lua")

    def beat(self, hostname: str, card: Card, at: float | None = None) -> None:
        """Write `hostname`'s card, stamped `at` (default now; a card listing the tags
        its worker holds is stamped from before they were gathered)."""
        stamp = time.time() if at is None else at
        self.redis.hset(self.key, hostname, json.dumps({**card, "at": stamp}))

    def remove(self, hostname: str) -> None:
        self.redis.hdel(self.key, hostname)

    def has(self, hostname: str) -> bool:
        """Whether a card of `hostname` is there (a warm shutdown removes its own)."""
        return bool(self.redis.hexists(self.key, hostname))

    def cards(self) -> dict[str, Card | None]:
        """Every card by hostname (None: unreadable)."""
        raw: dict[str, str] = self.redis.hgetall(self.key)  # type: ignore[assignment]
        return {hostname: parse(text) for hostname, text in raw.items()}

    def alive(self, card: Card | None, now: float | None = None) -> bool:
        """Whether `card` was written within the heartbeat timeout."""
        return card is not None and (now or time.time()) - card["at"] <= self.timeout_s

    def gone(self, card: Card | None, now: float | None = None) -> bool:
        """Whether `card` is long past alive (10 timeouts, at least a minute: its worker
        was killed) or unreadable: the monitor forgets such cards."""
        limit = max(60.0, 10 * self.timeout_s)
        return card is None or (now or time.time()) - card["at"] > limit

    def live(self) -> list[Card]:
        """The cards of live workers (queues, capabilities, offers, versions)."""
        now = time.time()
        return [card for card in self.cards().values() if card and self.alive(card, now)]

    def counted(self, card: Card | None, now: float) -> bool:
        """Whether `card`'s worker may still hold messages: alive, or in a warm shutdown
        (its pool finishing the running tasks) and not yet gone."""
        if card is not None and card.get("stopping"):
            return not self.gone(card, now)
        return self.alive(card, now)

    def reap_silent(self, me: str) -> list[str]:
        """Remove the cards of workers silent for longer than the heartbeat timeout
        (killed: a warm shutdown removes its own, and its "stopping" card counts until it
        is gone); the ones removed by this call, so each is reported once."""
        now = time.time()
        silent = [hostname for hostname, card in self.cards().items()
                  if hostname != me and not self.counted(card, now)]
        if not silent:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for hostname in silent:
                pipe.hdel(self.key, hostname)
            removed = pipe.execute()
        return [hostname for hostname, n in zip(silent, removed, strict=True) if n]

    def forget(self, hostnames: list[str]) -> None:
        """Drop the cards of workers long gone."""
        if hostnames:
            self.redis.hdel(self.key, *hostnames)

    def orphans(self) -> list[str]:
        """The delivery tags in kombu's unacked index that no counted card lists and
        that were delivered before every live card was written (see the module)."""
        now = time.time()
        with self.redis.pipeline(transaction=True) as pipe:  # one snapshot
            pipe.hgetall(self.key)
            pipe.zrange(self.unacked_index, 0, -1, withscores=True)
            raw, delivered = pipe.execute()
        cards = [card for card in map(parse, raw.values())
                 if card is not None and self.counted(card, now)]
        if not delivered or any("held" not in card for card in cards):
            return []
        held = {tag for card in cards for tag in card["held"]}
        # a stopping worker takes no new messages: only live cards bound the delivery time
        live = [card["at"] for card in cards if not card.get("stopping")]
        before = min(live, default=now) - CLOCK_SKEW_S
        return [tag for tag, at in delivered if at < before and tag not in held]

    def restore_orphans(self) -> list[str]:
        """Put the messages of dead workers (`orphans`) back on their queues, each at the
        head of its priority list, atomically (lua/unacked_restore.lua); the task ids of
        those put back by this call."""
        tags = self.orphans()
        entries: list[str | None] = self.redis.hmget(self.unacked, tags) if tags else []  # type: ignore[assignment]
        lists, args, ids = [], [], {}
        for tag, entry in zip(tags, entries, strict=True):
            if entry is None:  # acknowledged meanwhile
                continue
            try:
                message, _exchange, routing_key = json.loads(entry)
                properties = message["properties"]
                message["headers"]["redelivered"] = True  # as kombu marks a restore
                properties["delivery_info"]["redelivered"] = True
                priority = min(max(int(properties.get("priority") or 0), 0), PRIORITIES - 1)
            except (ValueError, TypeError, KeyError) as exc:
                log.error("cannot put back unacknowledged message %s: %r", tag, exc)
                continue
            # direct exchanges named after their queue, as Celery declares them: the
            # routing key is the queue (kombu_redis.Channel._q_for_pri)
            lists.append(self.broker_prefix + routing_key + (f":{priority}" if priority else ""))
            args += [tag, entry, json.dumps(message)]
            ids[tag] = str(message["headers"].get("id", tag))
        if not lists:
            return []
        restored: list[str] = self._restore(keys=[self.unacked, self.unacked_index, *lists],
                                            args=args)
        return [ids[tag] for tag in restored]
