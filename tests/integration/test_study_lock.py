"""workers.study_lock on a real Redis: a step's lock outlives its lease while the step
runs (and its bound while the step says it is alive), lapses within that lease once the
process holding it is `kill -9`ed, is given up by a step that stays past its bound, and
is taken for lost once renewals have failed for a lease."""

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

from bo_queue.testing import RedisServer, wait_until
from workers.study_lock import LockLost, StudyLock

ROOT = Path(__file__).resolve().parents[2]
# The lease these tests give (the production one is worker_outage_s, 60 s): renewed every
# third of it, so a renewing thread may run late by 1.3 s on a loaded machine.
LEASE_S = 2.0

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


def test_a_step_that_says_it_is_alive_holds_the_lock_past_its_bound(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    name = key()
    step = StudyLock(client, name, hold_s=LEASE_S, lease_s=LEASE_S)
    other = StudyLock(client, name, hold_s=60, lease_s=LEASE_S)
    assert step.acquire(blocking=False)
    try:
        for _ in range(8):  # generations, one every quarter bound: two bounds in all
            time.sleep(LEASE_S / 4)
            step.keep()
        assert not other.acquire(blocking=False)
    finally:
        step.release()
        client.close()


def test_a_lock_whose_renewals_fail_for_a_lease_is_taken_for_lost() -> None:
    """Redis gone (its server stopped): the step cannot know whether its lease ran out
    there, so after a lease without a renewal its next keep() says the lock is lost."""
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.2,
                                      socket_connect_timeout=0.2)
        step = StudyLock(client, key(), hold_s=60, lease_s=LEASE_S)
        before = time.monotonic()  # the lease counts from no earlier than this
        assert step.acquire(blocking=False)
        server.stop()
        try:

            def lost() -> bool:
                try:
                    step.keep()
                except LockLost:
                    return True
                return False

            wait_until(lost, timeout=10 * LEASE_S, what="keep() to say the lock is lost")
            assert time.monotonic() - before >= LEASE_S  # not before a lease could pass
        finally:
            step.release()  # Redis is gone: the release fails, logged, not raised
            client.close()
