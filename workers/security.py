"""What a worker accepts from its queues: bo_queue task messages, and nothing else.

Whoever can write to Redis can LPUSH a message straight into a queue list, bypassing
`submit` and its checks. Celery and kombu alone already refuse pickle (accept_content)
and task names no one registered, but:

- an envelope or message they cannot parse (not JSON, a body that is not base64, headers
  of the wrong type, a body that is not `[args, kwargs, options]`) raises out of the
  consumer: "Unrecoverable error", and the worker process exits. One message was enough
  to stop every worker that picked it up;
- kombu trusts `application/data` and `application/text` whatever accept_content says,
  and such a body reaches the pool, which fails on it outside any task;
- Celery registers its canvas tasks on every app (`celery.map`, `celery.starmap`,
  `celery.chunks`, `celery.group`, `celery.chain`, `celery.chord`, `celery.chord_unlock`,
  `celery.accumulate`, `celery.backend_cleanup`). `celery.map` calls any task with any
  arguments in-process, with no task record; `celery.chord_unlock` retries forever.
  bo_queue's workers never need them: dependencies and workflows are bo_queue's own, and
  a raw Celery chain or chord (benchmarks/dependencies.py) is driven by the producer and
  the Redis backend's native join, never by these tasks.

So a worker (workers.app calls `harden`) serves none of Celery's built-in tasks, takes
a message only in the shape bo_queue's producers write it (JSON in UTF-8, task protocol 2,
one payload object as the only argument), and logs and drops everything else: it is
rejected, so it neither stays in the queue nor comes back from the unacked set. Two
layers: `Consumer` checks kombu messages (`refusal`); the transport it consumes through
(the app's own Redis transport with `ChannelGuard` and `TransportGuard` mixed in) drops
list items that never become a kombu message. Unknown task names are left to Celery,
which logs "Received unregistered task", rejects the message and stores a NotRegistered
failure (a producer waiting on it learns at once). tests/reliability/test_injection.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from kombu.transport import get_transport_cls
from kombu.transport import redis as kombu_redis
from vine import promise

from bo_queue import registry
from bo_queue.core import transport

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
EMBED_LISTS = ("callbacks", "errbacks", "chain")


def harden(app: Celery) -> list[str]:
    """Make `app` (a worker's) serve no Celery built-in task and drop what it cannot
    read; returns the names of the tasks it unregistered. Registered handlers stay, and
    so do plain Celery tasks the deployment's own modules declare (imported on purpose,
    like benchmarks/plain_task.py)."""
    handlers = registry.registered()
    dropped = sorted(name for name in app.tasks
                     if name.startswith("celery.") and name not in handlers)
    for name in dropped:
        app.tasks.unregister(name)
    app.conf.worker_consumer = f"{__name__}:Consumer"
    return dropped


def guarded_transport(app: Celery) -> str | None:
    """The transport a worker consumes through: the app's own Redis transport (kombu's
    becomes bo_queue.core.transport's, which survives losing Redis) with the guards below
    mixed in; None (kombu's, unguarded) for a broker that is not Redis. A bare rediss://
    URL without TLS options keeps its transport too: kombu decides on TLS by the
    transport's name, which this replaces."""
    configured = app.conf.broker_transport
    if configured is None:
        configured = urlparse(str(app.conf.broker_url)).scheme
        if configured == "rediss" and not app.conf.broker_use_ssl:
            configured = None
    try:
        base = get_transport_cls(configured) if configured else None
    except (KeyError, ImportError, AttributeError, ValueError):
        base = None
    if not (isinstance(base, type) and issubclass(base, kombu_redis.Transport)):
        log.warning("broker transport %r: unreadable envelopes are not guarded", configured)
        return None
    if base is kombu_redis.Transport:  # and one that survives losing Redis
        base = transport.Transport
    elif base is kombu_redis.SentinelTransport:
        base = transport.SentinelTransport
    return _guarded(base)


_GUARDED: dict[type, str] = {}


def _guarded(base: type[kombu_redis.Transport]) -> str:
    """`base` with the guards, as a name kombu resolves (and logs) like any other."""
    if base not in _GUARDED:
        name = "GuardedTransport" + (str(len(_GUARDED)) if _GUARDED else "")
        channel = type(f"{name}Channel", (ChannelGuard, base.Channel), {"__module__": __name__})
        transport = type(name, (TransportGuard, base), {"Channel": channel,
                                                        "__module__": __name__})
        globals()[name] = transport
        _GUARDED[base] = f"{__name__}:{name}"
    return _GUARDED[base]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def refusal(message: Any) -> str | None:
    """Why a task message is not one bo_queue's producers would write; None if it is."""
    if message.content_type != CONTENT_TYPE:
        return f"content type {_short(message.content_type)} (only {CONTENT_TYPE} is accepted)"
    if str(message.content_encoding or "").lower() != CONTENT_ENCODING:
        return f"content encoding {_short(message.content_encoding)} (only {CONTENT_ENCODING})"
    headers = message.headers
    if not isinstance(headers, dict):
        return "headers are not a mapping"
    for name in ("task", "id"):
        if not isinstance(headers.get(name), str) or not headers[name]:
            return f"header {name!r} is not a non-empty string (task protocol 2 only)"
    for name in ("root_id", "parent_id", "group", "eta", "expires"):
        if not isinstance(headers.get(name), str | None):
            return f"header {name!r} is not a string"
    retries = headers.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool)
                                or retries < 0):
        return "header 'retries' is not a count"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2
        and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                for v in limits)
    ):
        return "header 'timelimit' is not [soft, hard]"
    properties = message.properties
    if not isinstance(properties, dict):
        return "properties are not a mapping"
    priority = properties.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        return "priority is not an integer"
    try:
        body = message.payload  # decoded once; Celery reuses it
    except Exception as exc:
        return f"body does not decode: {_short(exc)}"
    if not (isinstance(body, list) and len(body) == 3):
        return "body is not [args, kwargs, options] (task protocol 2)"
    args, kwargs, embed = body
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict)):
        return "arguments are not one payload object"
    if kwargs != {}:
        return "keyword arguments are not empty"
    if embed is not None:
        if not isinstance(embed, dict):
            return "options are not a mapping"
        for name in EMBED_LISTS:
            value = embed.get(name)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, dict) for v in value)
            ):
                return f"option {name!r} is not a list of signatures"
        if not isinstance(embed.get("chord"), dict | None):
            return "option 'chord' is not a signature"
    return None


def _describe(message: Any) -> str:
    headers = message.headers if isinstance(message.headers, dict) else {}
    info = message.delivery_info
    queue = info.get("routing_key") if isinstance(info, dict) else None
    return (f"task {_short(headers.get('task'), 80)}, id {_short(headers.get('id'), 80)}, "
            f"queue {_short(queue, 80)}")


def _passing(errors: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    """The errors to let through: a lost connection. KeyError counts as one in kombu's
    Redis transport (a stale socket), but raised over a message it means a bad message."""
    return tuple(e for e in errors if e is not KeyError)


class Consumer(CeleryConsumer):
    """Celery's consumer, consuming through the guarded transport, with every task
    message checked (`refusal`) before Celery sees it; a message Celery still raises
    over is rejected too, instead of stopping the worker."""

    connection_errors: tuple[type[BaseException], ...]  # set by Celery's __init__
    channel_errors: tuple[type[BaseException], ...]

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The consuming connection (tasks, remote control, gossip) on the guarded
        transport."""
        transport = guarded_transport(self.app)
        return self.ensure_connected(
            self.app.connection_for_read(heartbeat=heartbeat, transport=transport))

    def connection_for_write(self, url: str | None = None,
                             heartbeat: float | None = None) -> Any:
        """The connection the worker publishes its events on, on the same transport: its
        one Redis client (bo_queue.core.transport.OneClient) instead of a new one for
        each of the three events a task sends."""
        transport = guarded_transport(self.app)
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport=transport))

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], None]:
        handle = super().create_task_handler(promise)
        errors = _passing((*self.connection_errors, *self.channel_errors))

        def on_task_received(message: Any) -> None:
            try:
                problem = refusal(message)
            except Exception as exc:
                problem = f"unreadable: {_short(exc, 300)}"
            if problem is None:
                try:
                    handle(message)
                    return
                except errors:
                    raise
                except Exception as exc:
                    problem = f"the worker could not take it: {_short(exc, 300)}"
            log.error("refused a task message (%s): %s; dropped", _describe(message), problem)
            if not message.acknowledged:
                message.reject_log_error(log, self.connection_errors)

        return on_task_received


class ChannelGuard:
    """Mixed into a Redis transport's Channel: a list item that is not even JSON (the
    envelope) is logged and dropped, instead of raising out of the consumer."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]
        except (ValueError, RecursionError) as exc:  # JSON or UTF-8 decoding
            log.error("dropped a message that is not a kombu envelope: %s", _short(exc, 300))
            return True


class TransportGuard:
    """Mixed into a Redis transport: a message whose envelope cannot be made into a kombu
    message (no properties or delivery tag, a body that is not base64, ...) is logged and
    dropped instead of raising out of the consumer ("Unrecoverable error": the worker
    exits). BRPOP has removed it already and it never reached the unacked set, so
    nothing brings it back."""

    connection_errors: tuple[type[BaseException], ...]
    channel_errors: tuple[type[BaseException], ...]

    def _deliver(self, message: Any, queue: str | None) -> None:
        try:
            super()._deliver(message, queue)  # type: ignore[misc]
        except _passing((*self.connection_errors, *self.channel_errors)):
            raise
        except Exception as exc:
            log.error("dropped a message from queue %s that cannot be read: %s (%s)",
                      _short(queue, 80), _short(exc, 300), _short(message, 300))
