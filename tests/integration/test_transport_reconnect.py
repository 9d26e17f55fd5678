"""bo_queue.core.transport against a real Redis: a task that ran across a dropped broker
connection ends after the worker reconnected, and its message is acknowledged through a
client of its own (kombu would use the closed channel, and the AttributeError stopped
the whole worker: found by tests/reliability/test_redis_faults.py under load)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from unittest import mock

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from bo_queue.core import transport
from tests.conftest import new_namespace


class _Running:
    def __init__(self, task_id: str) -> None:
        self.id = task_id


@pytest.fixture
def broker(redis_url: str) -> Iterator[tuple[Connection, redis.Redis, str]]:
    prefix = f"{new_namespace()}:broker:"
    connection = Connection(redis_url, transport=transport.Transport,
                            transport_options={"global_keyprefix": prefix})
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection, client, prefix
    connection.release()
    client.close()


def _deliver(connection: Connection, task_id: str) -> tuple[Queue, Message]:
    """Publish one message and take it unacknowledged, as a worker's consumer does."""
    queue = Queue("q", Exchange("q"), "q")
    with connection.Producer() as producer:
        producer.publish({"n": 1}, routing_key="q", declare=[queue], headers={"id": task_id})
    message = queue(connection.channel()).get(no_ack=False)
    assert message is not None
    return queue, message


def _close_while_running(message: Message, task_id: str) -> None:
    """What a worker goes through when the broker connection drops: kombu forgets how to
    reach Redis (Connection._do_close_transport), then Celery closes the consumer's
    channel, which tries to put the unacknowledged messages back."""
    with mock.patch("bo_queue.core.transport.worker_state.active_requests", {_Running(task_id)}):
        message.channel.connection.client = None
        message.channel.close()


def test_a_task_that_ends_after_its_channel_closed_is_acknowledged(
    broker: tuple[Connection, redis.Redis, str]
) -> None:
    connection, client, prefix = broker
    _, message = _deliver(connection, "t1")
    assert client.hlen(prefix + "unacked") == 1
    _close_while_running(message, "t1")
    # still running: its message stays unacknowledged and is not put back on the queue
    assert client.hlen(prefix + "unacked") == 1
    assert client.llen(prefix + "q") == 0

    message.ack()  # the task ended: no AttributeError from the closed channel

    assert client.hlen(prefix + "unacked") == 0
    assert client.zcard(prefix + "unacked_index") == 0
    assert client.llen(prefix + "q") == 0  # and nothing comes back: it ran once


def test_a_rejected_message_after_close_is_left_to_the_visibility_sweep(
    broker: tuple[Connection, redis.Redis, str]
) -> None:
    connection, client, prefix = broker
    _, message = _deliver(connection, "t2")
    _close_while_running(message, "t2")
    message.requeue()
    assert client.hlen(prefix + "unacked") == 1  # the sweep restores it later


def test_an_ack_while_redis_is_still_down_is_logged_not_raised(
    broker: tuple[Connection, redis.Redis, str], caplog: pytest.LogCaptureFixture
) -> None:
    connection, client, prefix = broker
    _, message = _deliver(connection, "t3")
    _close_while_running(message, "t3")
    params = message.channel._params_after_close
    params["port"], params["socket_connect_timeout"] = 1, 1  # nothing listens there

    with caplog.at_level(logging.WARNING, "bo_queue.core.transport"):
        message.ack()

    assert "returns after the visibility timeout" in caplog.text
    assert client.hlen(prefix + "unacked") == 1  # redelivered later, found ended, dropped
