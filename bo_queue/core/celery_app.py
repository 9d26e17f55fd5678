"""The one factory that builds a Celery app from Settings, producers and workers alike."""

from __future__ import annotations

from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError, TaskRevokedError
from kombu import Exchange, Queue

from bo_queue.config import Settings, is_sentinel, parse_sentinel_url, redis_tls_options
from bo_queue.core.connections import sentinel_kwargs
from bo_queue.core.keys import Keys
from bo_queue.states import Priority


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, minus the SUBSCRIBE it makes for every task sent.

    bo_queue reads results itself (bo_queue.core.results), so nobody would read those
    subscriptions, and Redis would buffer every result published to them until it
    disconnects the producer for exceeding its pub/sub output limit.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def success(self, task_id: str, result: Any, request: Any) -> tuple[str, str, int]:
        """What `store_result` writes for a success, to write it ourselves with the
        task's record (workers.runner): (key, encoded meta, retention in s, 0 for none)."""
        return self._stored(task_id, result, states.SUCCESS, request)

    def revoked(self, task_id: str, reason: str) -> tuple[str, str, int]:
        """What `mark_as_revoked(task_id, reason)` writes (Celery's store_result of a
        TaskRevokedError, REVOKED, no request), as `success` gives it. Core._revoking
        writes it, SET and PUBLISHed in one MULTI as RedisBackend._set does, unless
        `succeeded` says otherwise."""
        return self._stored(task_id, TaskRevokedError(reason), states.REVOKED, None)

    def _stored(self, task_id: str, result: Any, state: str,
                request: Any) -> tuple[str, str, int]:
        """Celery's encoding of a result meta for its Redis key: (key, encoded meta,
        retention in s, 0 for none). (The ignores: celery-types lacks these attributes
        of RedisBackend.)"""
        meta = self._get_result_meta(  # type: ignore[attr-defined]
            result=self.encode_result(result, state), state=state, traceback=None,
            request=request)
        meta["task_id"] = task_id
        encoded: str | bytes = self.encode(meta)
        value = encoded.decode() if isinstance(encoded, bytes) else encoded
        if len(value) > self._MAX_STR_VALUE_SIZE:  # type: ignore[attr-defined]
            raise BackendStoreError("value too large for Redis backend")
        key: str | bytes = self.get_key_for_task(task_id)
        expires = int(self.expires or 0)  # type: ignore[attr-defined]
        return key.decode() if isinstance(key, bytes) else key, value, expires

    def succeeded(self, stored: bytes | str | None) -> bool:
        """Whether a stored result (GET of its key) is a success: Celery's _store_result
        then writes nothing over it."""
        if not stored:  # as Celery's _get_task_meta_for: PENDING
            return False
        raw = stored.encode() if isinstance(stored, str) else stored
        return bool(self.decode_result(raw)["status"] == states.SUCCESS)


class SentinelResultBackend(ResultBackend, SentinelBackend):
    """Celery's Sentinel result backend (the master its sentinels name), with
    ResultBackend's changes: no SUBSCRIBE, and `success` for the worker's one-script
    finish."""


def sentinel_conf(settings: Settings) -> dict[str, Any]:
    """The master's name and the sentinels' own options, for every component that reads
    Celery's config: kombu (workers, producers' control commands, Flower's queue view)
    from broker_transport_options, the result backend from its transport options, and
    redbeat (beat, bq.schedules) from its own `redis-sentinel://` scheme and options
    (the URL only picks that branch; every sentinel comes from the options)."""
    conf: dict[str, Any] = {"broker": {}, "backend": {}}
    on_sentinel = {"master_name": settings.sentinel_master,
                   "sentinel_kwargs": sentinel_kwargs(settings)}
    if is_sentinel(settings.redis_url):
        conf["broker"] = on_sentinel
        target = parse_sentinel_url(settings.redis_url)
        host, port = target.sentinels[0]  # redbeat logs it: one address, no password
        conf["redbeat_redis_url"] = f"redis-sentinel://{host}:{port}/{target.db}"
        conf["redbeat_redis_options"] = {
            "sentinels": target.sentinels, "service_name": settings.sentinel_master,
            "db": target.db, "password": target.password, "username": target.username,
            "sentinel_kwargs": sentinel_kwargs(settings),
            "socket_timeout": max(settings.connect_timeout_s, 10.0),
        }
    if is_sentinel(settings.results_url):
        conf["backend"] = on_sentinel
    return conf


def tls_conf(settings: Settings) -> dict[str, Any]:
    """Celery, redbeat and Flower settings for rediss:// URLs, from the URLs' own TLS
    options (bo_queue.config.TLS_PARAMS). The URLs keep them too, for the redis-py clients
    bo_queue builds from the URL alone; both say the same."""
    conf: dict[str, Any] = {}
    broker = redis_tls_options(settings.redis_url)
    if broker is not None:
        # the broker (kombu), Flower's queue lengths, and redbeat (beat, bq.schedules)
        conf.update(broker_use_ssl=broker, redbeat_redis_use_ssl=broker)
    results = redis_tls_options(settings.results_url)
    if results is not None:
        conf["redis_backend_use_ssl"] = results
    return conf


def make_celery(settings: Settings) -> Celery:
    keys = Keys(settings.namespace)
    visibility = settings.visibility_timeout_s
    sentinel = sentinel_conf(settings)
    backend = "SentinelResultBackend" if is_sentinel(settings.results_url) else "ResultBackend"
    app = Celery(
        f"bo_queue.{settings.namespace}",
        broker=settings.redis_url,
        backend=f"{__name__}:{backend}+{settings.results_url}",
        set_as_current=False,
    )
    app.conf.update(
        # JSON only, on the wire and in the backend: pickle is never accepted.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # At-least-once: a message is acknowledged only after its task ran, and comes
        # back if the worker dies; each worker process holds one message at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A worker that loses Redis lets its running tasks finish (their record and
        # result writes wait for Redis, see BOQueue(ride_out_outages_s)); Celery 6 would
        # terminate them by default. Their messages come back if their ack is lost.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # The Redis transport: 10 priority lists per queue (0 served first), every key
        # under the namespace, and one visibility timeout in all three places Celery reads.
        broker_transport_options={
            "visibility_timeout": visibility,
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "global_keyprefix": keys.broker_prefix,
            "socket_connect_timeout": settings.connect_timeout_s,
            # A lost worker's unacknowledged messages come back once they are older than
            # the visibility timeout, at the next sweep: every restore_sweep_s, not
            # kombu's default of every 10 x 10 s.
            "unacked_restore_interval": settings.restore_sweep_s,
            "unacked_restore_throttle": 1,
            # kombu's restore sweep runs under a lock that expires after 300 s by
            # default: a Redis that crashed mid-sweep (the lock is in its AOF) would
            # block every sweep for five minutes after it is back
            "unacked_mutex_expire": max(10, 3 * settings.restore_sweep_s),
            **sentinel["broker"],
        },
        result_backend_transport_options={
            "visibility_timeout": visibility,
            "global_keyprefix": keys.results_prefix,
            **sentinel["backend"],
        },
        visibility_timeout=visibility,
        redis_socket_connect_timeout=settings.connect_timeout_s,
        broker_connection_timeout=settings.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.default_queue,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in settings.queues],
        task_default_priority=Priority.NORMAL.broker_priority,
        result_expires=settings.result_expires_s,
        result_extended=True,
        # Events for Flower and the monitor. No "task-sent" event: it doubles the cost of
        # a submit (kombu opens a client per publish) and the task record says the same.
        worker_send_task_events=True,
        task_send_sent_event=False,
        # No STARTED write to the backend: the task record says RUNNING, and the write
        # would carry the whole payload (result_extended) on every run.
        task_track_started=False,
        enable_utc=True,
        timezone="UTC",
        # celery beat: schedules in Redis (celery-redbeat), under the namespace; one beat
        # holds the lock at a time and a second one waits to take over.
        redbeat_redis_url=sentinel.get("redbeat_redis_url", settings.redis_url),
        redbeat_redis_options=sentinel.get("redbeat_redis_options", {}),
        redbeat_key_prefix=f"{settings.namespace}:redbeat:",
        redbeat_lock_timeout=10,
        beat_max_loop_interval=1,  # dynamic schedules are seen within a second
        **tls_conf(settings),
    )
    return app
