"""bo_queue.core.transport: a worker whose connection to Redis is gone does not die putting
its unacknowledged messages back."""

from __future__ import annotations

import logging
from collections import OrderedDict
from unittest import mock

import pytest
import redis
from kombu.transport import redis as kombu_redis

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
