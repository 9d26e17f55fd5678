"""Worker heartbeat cards: one JSON card per worker in the `workers` hash, rewritten
every tick by workers/lifecycle.py; read here by the kernel (placement checks), the
monitor (bq.monitor.workers) and the outbox's loss detection (silent workers).

A card: {"at": unix time of the beat, "queues", "concurrency", "pid", "started_at",
"capabilities", "offers", "versions", "active"}. Older workers wrote a bare timestamp.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bo_queue.core.keys import Keys

Card = dict[str, Any]


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

    def beat(self, hostname: str, card: Card) -> None:
        """Write `hostname`'s card, stamped now."""
        self.redis.hset(self.key, hostname, json.dumps({**card, "at": time.time()}))

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

    def reap_silent(self, me: str) -> list[str]:
        """Remove the cards of workers silent for longer than the heartbeat timeout
        (killed: a warm shutdown removes its own); the ones removed by this call, so each
        is reported once."""
        now = time.time()
        silent = [hostname for hostname, card in self.cards().items()
                  if hostname != me and not self.alive(card, now)]
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
