"""workers.study_lock on a real Redis: a step's lock outlives its short lease while the
step runs, lapses within that lease once the process holding it is `kill -9`ed, and is
given up by a step that stays past its bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from workers.study_lock import LockLost, StudyLock

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 1.0  # the lease these tests give: the production one is 15 s

# A process that takes the lock and keeps it (its renewing thread runs), until killed.
HOLDER = """
import sys, time
import redis
from workers.study_lock import StudyLock
lock = StudyLock(redis.Redis.from_url(sys.argv[1]), sys.argv[2], hold_s=600,
                 lease_s=float(sys.argv[3]))
assert lock.acquire(blocking=False)
print("held", flush=True)
time.sleep(600)
"""


def key() -> str:
    return f"test-lock:{uuid.uuid4().hex}"


def test_a_running_step_keeps_its_lock_past_its_lease(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    name = key()
    holder = StudyLock(client, name, hold_s=60, lease_s=LEASE_S)
    other = StudyLock(client, name, hold_s=60, lease_s=LEASE_S)
    assert holder.acquire(blocking=False)
    try:
        time.sleep(3 * LEASE_S)  # the step at work, three leases long
        assert not other.acquire(blocking=False)
        assert 0 < client.pttl(name) <= LEASE_S * 1000
        holder.keep()  # still its own: no LockLost
    finally:
        holder.release()
    assert other.acquire(blocking=False)  # released: the next step takes it at once
    other.release()
    client.close()


def test_a_killed_holders_lock_lapses_within_its_lease(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    name = key()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, name, str(LEASE_S)], stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        waiter = StudyLock(client, name, hold_s=60, lease_s=LEASE_S)
        time.sleep(3 * LEASE_S)
        assert not waiter.acquire(blocking=False)  # renewed by the live holder
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert waiter.acquire(blocking=True)
        waited = time.monotonic() - killed
        waiter.release()
    finally:
        process.kill()
        process.wait(10)
        client.close()
    assert waited <= LEASE_S + 0.5, waited  # its lease, not the 195 s a step may take


def test_a_step_past_its_bound_gives_the_study_up(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    name = key()
    stuck = StudyLock(client, name, hold_s=LEASE_S, lease_s=LEASE_S / 2)
    assert stuck.acquire(blocking=False)
    try:
        other = StudyLock(client, name, hold_s=60, lease_s=LEASE_S)
        assert other.acquire(blocking=True)  # no keep(): it lapses after hold_s + a lease
        with pytest.raises(LockLost):
            stuck.keep()
        other.release()
    finally:
        stuck.release()  # its lock is gone: a warning, no error
        client.close()
