"""Waiting for results in the Celery result backend, and `then()` callbacks.

Celery's Redis backend SETs each result under `celery-task-meta-<id>` and PUBLISHes it on
a channel of the same name. We read that directly (JSON only) rather than through
AsyncResult.get(), whose shared result consumer is not safe across threads.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from bo_queue.errors import (
    TaskCancelledError,
    TaskError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
)
from bo_queue.states import TaskState, from_celery_state

log = logging.getLogger(__name__)

READY_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RECHECK_S = 0.5  # a wait re-reads the stored result at least this often
# What stopped a run at its time limit: the soft limit (workers.runner raises our own
# error) or the hard one (Celery's, or billiard's, in the worker's main process).
TIME_LIMIT_TYPES = frozenset({"TaskTimeoutError", "SoftTimeLimitExceeded", "TimeLimitExceeded"})
OnSuccess = Callable[[Any], None]
OnFailure = Callable[[TaskError], None]


def _message(exc_info: Any) -> str:
    if not isinstance(exc_info, dict):
        return str(exc_info)
    message = exc_info.get("exc_message", "")
    if isinstance(message, list | tuple):
        return " ".join(str(part) for part in message)
    return str(message)


def state_of(meta: dict[str, Any]) -> TaskState:
    """The final state a stored result says the task ended in."""
    if meta["status"] == "REVOKED" and _message(meta.get("result") or {}) == "expired":
        return TaskState.EXPIRED
    return from_celery_state(meta["status"])


def final_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """Record fields as the stored result has them (the record catches up a moment later)."""
    state = state_of(meta)
    fields: dict[str, Any] = {"state": state, "finished_at": meta.get("date_done")}
    if state is TaskState.SUCCEEDED:
        fields["progress"] = 1.0
    elif state is TaskState.FAILED:
        info = meta.get("result") or {}
        name = info.get("exc_type", "Exception") if isinstance(info, dict) else "Exception"
        fields["error"] = f"{name}: {_message(info)}"
    return {k: v for k, v in fields.items() if v is not None}


def outcome(task_id: str, meta: dict[str, Any]) -> Any:
    """The result of a finished task, or the TaskError that says how it ended."""
    status = meta["status"]
    if status == "SUCCESS":
        return meta.get("result")
    exc_info = meta.get("result") or {}
    if not isinstance(exc_info, dict):
        exc_info = {"exc_type": "Exception", "exc_message": str(exc_info)}
    if state_of(meta) is TaskState.EXPIRED:
        raise TaskExpiredError(task_id, f"task {task_id} expired before it started")
    if status == "REVOKED":
        raise TaskCancelledError(task_id, _message(exc_info) or "cancelled")
    module = exc_info.get("exc_module")
    name = exc_info.get("exc_type", "Exception")
    remote_type = f"{module}.{name}" if module and module != "builtins" else name
    message = _message(exc_info)
    if name in TIME_LIMIT_TYPES:
        if name != "TaskTimeoutError":  # Celery's says only the limit, if anything
            message = f"task {task_id} ran past its time limit ({name}: {message})"
        raise TaskTimeoutError(task_id, message, remote_type, meta.get("traceback"))
    raise TaskFailedError(task_id, remote_type, message, meta.get("traceback"))


class ResultWaiter:
    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.redis = client
        self.prefix = key_prefix
        # Idle pub/sub connections, shared by whichever thread waits next (a connection
        # per thread would grow with every short-lived thread that ever called get()).
        self._idle: queue.LifoQueue[redis.client.PubSub] = queue.LifoQueue(maxsize=8)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
        self.redis.close()

    def key(self, task_id: str) -> str:
        return self.prefix + task_id

    def fetch(self, task_id: str) -> dict[str, Any] | None:
        """The stored meta if the task is finished, else None."""
        return ready_meta(self.redis.get(self.key(task_id)))

    def fetch_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        raws = self.redis.mget([self.key(t) for t in task_ids]) if task_ids else []
        return [ready_meta(raw) for raw in raws]

    def wait(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """Block until the task is finished (meta) or the timeout passes (None). The caller
        has looked at the stored result already: this one reads it once its subscription
        is confirmed (whatever was published before that is stored by then), then listens."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            pubsub = self._idle.get_nowait()
        except queue.Empty:
            return self._wait(_pubsub(self.redis, confirmations=True), task_id, deadline)
        try:
            return self._wait(pubsub, task_id, deadline)
        except redis.ConnectionError:
            # An idle connection may have died with its server (a Sentinel failover, a
            # restart): once more, on a new one (to the new master).
            return self._wait(_pubsub(self.redis, confirmations=True), task_id, deadline)

    def _wait(self, pubsub: redis.client.PubSub, task_id: str,
              deadline: float | None) -> dict[str, Any] | None:
        channel = self.key(task_id)
        healthy = True
        try:
            pubsub.subscribe(channel)
            meta = None
            while meta is None:
                left = RECHECK_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return None
                message = pubsub.get_message(timeout=min(left, RECHECK_S))
                if message is None:  # quiet for a while: the stored result is the truth
                    meta = self.fetch(task_id)
                elif _text(message["channel"]) != channel:
                    continue  # the last wait's unsubscribe confirmed, or its late message
                elif message["type"] == "subscribe":
                    # SUBSCRIBE returned before Redis processed it: a result published
                    # before this confirmation was missed, but it is stored.
                    meta = self.fetch(task_id)
                elif message["type"] == "message":
                    meta = ready_meta(message["data"])
            return meta
        except redis.RedisError:
            healthy = False  # a broken connection: the next wait opens a new one
            raise
        finally:
            self._release(pubsub, channel, healthy)

    def _release(self, pubsub: redis.client.PubSub, channel: str, healthy: bool) -> None:
        try:
            if healthy:
                pubsub.unsubscribe(channel)  # type: ignore[no-untyped-call]
                self._idle.put_nowait(pubsub)
                return
        except (redis.RedisError, queue.Full):
            pass
        pubsub.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pubsub(client: redis.Redis, confirmations: bool = False) -> redis.client.PubSub:
    """A pub/sub connection; `confirmations`: get_message returns (un)subscribe
    confirmations too, rather than None for them."""
    pubsub: redis.client.PubSub = client.pubsub(  # type: ignore[no-untyped-call]
        ignore_subscribe_messages=not confirmations
    )
    return pubsub


def ready_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    """The stored (or published) result meta of a finished task; None if not finished."""
    if raw is None:
        return None
    meta: dict[str, Any] = json.loads(raw)
    return meta if meta.get("status") in READY_STATUSES else None


class CallbackDispatcher:
    """One daemon thread that runs `then()` callbacks in the producer as results arrive.

    The thread owns its pub/sub connection (redis-py's PubSub is not thread-safe);
    other threads hand it work through a queue.
    """

    def __init__(self, waiter: ResultWaiter) -> None:
        self.waiter = waiter
        self._requests: queue.SimpleQueue[tuple[str, OnSuccess, OnFailure | None]] = (
            queue.SimpleQueue()
        )
        self._pending: dict[str, list[tuple[OnSuccess, OnFailure | None]]] = {}
        self._stop = threading.Event()
        self._checked_at = 0.0
        self._thread = threading.Thread(target=self._run, name="bo-queue-callbacks", daemon=True)
        self._thread.start()

    def watch(self, task_id: str, on_success: OnSuccess, on_failure: OnFailure | None) -> None:
        self._requests.put((task_id, on_success, on_failure))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        pubsub = _pubsub(self.waiter.redis)
        try:
            while not self._stop.is_set():
                try:
                    self._step(pubsub)
                except redis.RedisError:
                    log.exception("result listener lost Redis; retrying")
                    time.sleep(0.5)
                    pubsub.close()
                    pubsub = _pubsub(self.waiter.redis)
                    if self._pending:
                        pubsub.subscribe(*[self.waiter.key(t) for t in self._pending])
                        self._check(list(self._pending), pubsub)
        finally:
            pubsub.close()

    def _step(self, pubsub: redis.client.PubSub) -> None:
        added: list[str] = []
        while not self._requests.empty():
            task_id, ok, err = self._requests.get()
            if task_id not in self._pending:
                added.append(task_id)
            self._pending.setdefault(task_id, []).append((ok, err))
        if added:
            pubsub.subscribe(*[self.waiter.key(t) for t in added])
            self._check(added, pubsub)  # results stored before we subscribed
        if not pubsub.subscribed:
            time.sleep(0.02)
            return
        if self._pending and time.monotonic() - self._checked_at > RECHECK_S:
            # As in ResultWaiter.wait: a result published before our SUBSCRIBE took effect
            # was missed; the stored results are the truth.
            self._checked_at = time.monotonic()
            self._check(list(self._pending), pubsub)
            if not pubsub.subscribed:
                return
        message = pubsub.get_message(timeout=0.02)
        if message is not None:
            meta = ready_meta(message["data"])
            if meta is not None:
                task_id = _text(message["channel"])[len(self.waiter.prefix) :]
                self._fire(task_id, meta, pubsub)

    def _check(self, task_ids: list[str], pubsub: redis.client.PubSub) -> None:
        for task_id, meta in zip(task_ids, self.waiter.fetch_many(task_ids), strict=True):
            if meta is not None:
                self._fire(task_id, meta, pubsub)

    def _fire(self, task_id: str, meta: dict[str, Any], pubsub: redis.client.PubSub) -> None:
        callbacks = self._pending.pop(task_id, [])
        if not callbacks:
            return
        pubsub.unsubscribe(self.waiter.key(task_id))  # type: ignore[no-untyped-call]
        for on_success, on_failure in callbacks:
            try:
                try:
                    value = outcome(task_id, meta)
                except TaskError as exc:
                    if on_failure is not None:
                        on_failure(exc)
                else:
                    on_success(value)
            except Exception:
                log.exception("a then() callback for task %s raised", task_id)
