"""The third-party private names bo_queue relies on, checked against the pinned versions:
kombu's Redis QoS and Channel internals (bo_queue.core.transport, workers.security),
redis-py's pipeline execution (bo_queue.core.replicas) and
Ax's Client snapshot, seed, experiment and generation strategy (bo_queue.studies.ax_adapter).
An upgrade that moves one fails here."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import fakeredis
import pytest
import redis.asyncio.client
import redis.client
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual


def test_kombu_qos_removes_a_tag_from_its_indices_through_a_given_pipeline() -> None:
    helper = kombu_redis.QoS._remove_from_indices
    assert list(inspect.signature(helper).parameters)[:3] == ["self", "delivery_tag", "pipe"]

    class Holder:  # what the helper uses of its QoS: the index key names, the pipe helper
        unacked_key, unacked_index_key = "unacked", "unacked_index"
        pipe_or_acquire = kombu_redis.QoS.pipe_or_acquire

    client = fakeredis.FakeRedis()
    client.hset("unacked", "tag-1", "message")
    client.zadd("unacked_index", {"tag-1": 1.0})
    helper(Holder(), "tag-1", client.pipeline()).execute()  # type: ignore[arg-type]
    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        # core/transport.py: the connection parameters it keeps for acks after a close
        (kombu_redis.Channel, "_connparams", ["self", "asynchronous"]),
        # core/transport.py: OneClient replaces this, and makes its client with the next
        (kombu_redis.Channel, "conn_or_acquire", ["self", "client"]),
        (kombu_redis.Channel, "_create_client", ["self", "asynchronous"]),
        # workers/security.py: the reads it guards against messages that are not envelopes
        (kombu_redis.Channel, "_brpop_read", ["self", "options"]),
        (kombu_redis.Transport, "_deliver", ["self", "message", "queue"]),
    ],
)
def test_kombu_methods_bo_queue_overrides_or_calls(
    owner: type, name: str, parameters: list[str]
) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters


@pytest.mark.parametrize("pipeline", [redis.client.Pipeline, redis.asyncio.client.Pipeline])
@pytest.mark.parametrize("name", ["_execute_transaction", "_execute_pipeline"])
def test_redis_pipeline_methods_the_replica_acks_override(pipeline: type, name: str) -> None:
    # core/replicas.py: each runs a pipeline's commands on the connection it is given,
    # in one packed write, and the WAIT goes after them in that write
    assert list(inspect.signature(getattr(pipeline, name)).parameters) == [
        "self", "connection", "commands", "raise_on_error"]


def test_kombu_qos_keeps_its_delivered_messages_where_the_transport_reads_them() -> None:
    class Channel:  # what QoS reads of its channel when it is made
        do_restore = False

    qos = virtual.QoS(Channel())  # type: ignore[arg-type]
    assert isinstance(qos._delivered, dict)  # core/transport.py: the messages held unacked


# In a process of its own: Ax and torch must not load into the test process (the
# lightness tests check that a producer never imports them).
AX_ROUND_TRIP = """
import json
from ax import Client, RangeParameterConfig
from bo_queue.studies import ax_adapter

client = Client(random_seed=7)
client.configure_experiment(
    parameters=[RangeParameterConfig(name="x", parameter_type="float", bounds=(0, 1))]
)
client.configure_optimization(objective="-y")
(index, params), = client.get_next_trials(max_trials=1).items()
client.complete_trial(index, raw_data={"y": 0.5})
restored = ax_adapter.restore(json.loads(json.dumps(ax_adapter.snapshot(client))), seed=7)
experiment = ax_adapter.experiment(restored)
print(json.dumps({
    "node": ax_adapter.generation_node(restored), "seed": restored._random_seed,
    "trials": list(experiment.trials), "index": index,
    "completed": experiment.trials[index].status.is_completed,
    "same_params": experiment.trials[index].arms[0].parameters == params,
}))
"""


def test_ax_client_snapshot_round_trip_keeps_trials_and_seed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AX_ROUND_TRIP], capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report.pop("node")  # Sobol's node, by whatever name this Ax gives it
    assert report == {"seed": 7, "trials": [report["index"]], "index": report["index"],
                      "completed": True, "same_params": True}
