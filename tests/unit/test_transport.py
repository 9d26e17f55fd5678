"""bo_queue.core.transport: a worker whose connection to Redis is gone does not die putting
its unacknowledged messages back; its channel keeps one Redis client."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any
from unittest import mock

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from bo_queue.core import transport
from bo_queue.core.transport import QoS


@pytest.mark.parametrize("error", [
    AttributeError("'NoneType' object has no attribute 'hostname'"),  # connection closed
    redis.ConnectionError("Connection refused"),  # Redis still down
])
def test_a_failed_restore_leaves_the_messages_to_the_visibility_timeout(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    qos = QoS.__new__(QoS)  # no channel: only restore_unacked is under test
    qos._delivered = OrderedDict(tag=object())
    with (mock.patch.object(kombu_redis.QoS, "restore_unacked", side_effect=error),
          caplog.at_level(logging.WARNING, "bo_queue.core.transport")):
        assert qos.restore_unacked() is None
    assert not qos._delivered
    assert "1 unacknowledged message(s)" in caplog.text
    assert "return after the visibility timeout" in caplog.text


def test_other_errors_still_raise() -> None:
    qos = QoS.__new__(QoS)
    qos._delivered = OrderedDict()
    with (mock.patch.object(kombu_redis.QoS, "restore_unacked", side_effect=KeyError("x")),
          pytest.raises(KeyError)):
        qos.restore_unacked()


def test_the_message_of_a_task_still_running_is_not_put_back() -> None:
    class Message:
        def __init__(self, task_id: str) -> None:
            self.headers = {"id": task_id}

    class Running:
        id = "running"

    qos = QoS.__new__(QoS)
    qos._delivered = OrderedDict(t1=Message("running"), t2=Message("reserved"))
    seen: list[list[str]] = []
    with (mock.patch("bo_queue.core.transport.worker_state.active_requests", {Running()}),
          mock.patch.object(kombu_redis.QoS, "restore_unacked",
                            lambda self, client=None: seen.append(list(self._delivered)))):
        qos.restore_unacked()
    assert seen == [["t2"]]  # the reserved one goes back; the running one waits in Redis


def test_a_channel_sends_its_commands_through_one_client(redis_url: str) -> None:
    """kombu makes a new redis.Redis per command; the worker's channel reuses one (made
    again once kombu drops the pool, as a reconnect does), and the commands still work."""
    with kombu.Connection(redis_url, transport=transport.Transport) as connection:
        channel: Any = connection.default_channel
        made: list[Any] = []
        create = channel._create_client
        channel._create_client = lambda *a, **kw: made.append(create(*a, **kw)) or made[-1]
        queue = kombu.Queue("one-client", kombu.Exchange("one-client"), "one-client")
        events = kombu.Exchange("one-client-events", type="fanout")
        with connection.Producer(channel) as producer:
            for i in range(20):
                producer.publish({"i": i}, exchange=queue.exchange, routing_key="one-client",
                                 declare=[queue])
                producer.publish({"event": i}, exchange=events, declare=[events])
        assert len(made) == 1
        assert channel.client.llen("one-client") == 20
        channel._pool = None  # what kombu's _disconnect_pools leaves
        with channel.conn_or_acquire() as client:
            assert client is not made[0] and client.connection_pool is channel.pool
            assert client.llen("one-client") == 20
