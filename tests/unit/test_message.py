"""Message: one frozen model builds, keeps and reads task messages. The JSON bo_queue
wrote before it existed (a submit's message, a worker's held retry, older ones without
resources) still decodes, from the held schedule and the outbox alike."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import pydantic
import pytest
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from bo_queue import ValidationError
from bo_queue.core.delays import DelayedSubmissions
from bo_queue.core.keys import Keys
from bo_queue.core.message import (
    ARGSREPR_MAX,
    REPR_MAXLEVELS,
    Message,
    argsrepr,
    envelope_task_id,
)
from bo_queue.core.outbox import Outbox

KEYS = Keys("t")

# What BOQueue._message wrote before Message (085edd6), and a worker's _hold.
SUBMITTED = {
    "handler": "reports.build", "payload": {"x": 1}, "queue": "default", "priority": 3,
    "due_at": None, "expires_at": 1900000000.5, "retries": 0, "parent_id": "p1",
    "resources": {"cpu": 2.0, "memory_mb": 512.0, "gpu": 0},
}
HELD_RETRY = {
    "handler": "reports.build", "payload": {"x": 1}, "queue": "default.gpu", "priority": None,
    "due_at": 1800000000.0, "expires_at": None, "retries": 2, "parent_id": None,
    "resources": None,
}
OLDER = {"handler": "h", "payload": {}, "queue": "default", "priority": 5, "due_at": None,
         "expires_at": None, "retries": 0, "parent_id": None}  # before resources existed


@pytest.mark.parametrize("shape", [SUBMITTED, HELD_RETRY, OLDER], ids=["submit", "retry", "old"])
def test_todays_shapes_decode(shape: dict[str, Any]) -> None:
    message = Message.decode(json.dumps(shape))
    for field, value in shape.items():
        assert getattr(message, field) == value
    assert message.study is None
    assert Message.decode(message.encode()) == message


def test_encoded_as_before_plus_the_study_marker_kwargsrepr_and_policies() -> None:
    # json.dumps of the old dict, as 085edd6 wrote it: same text, ints stay ints
    assert Message.decode(json.dumps(SUBMITTED)).encode() == json.dumps(
        {**SUBMITTED, "study": None, "kwargsrepr": None, "retry": None, "time_limit": None})


def test_a_submits_policies_travel_as_headers_and_celerys_time_limits() -> None:
    policy = {"max_retries": 2, "backoff": 0.0, "backoff_max": 0.0, "jitter": False,
              "on": ["builtins.KeyError"]}
    message = Message(handler="h", payload={}, queue="default", retry=policy, time_limit=2.5)
    assert Message.decode(message.encode()) == message
    assert message.headers() == {"bo_retry": policy}
    assert message.time_limits() == {"soft_time_limit": 2.5, "time_limit": 7.5}
    assert Message(handler="h", payload={}, queue="default").time_limits() == {}


def test_a_payload_check_json_accepts_is_stored_as_it_was() -> None:
    # a lone surrogate passes the payload check (json.dumps escapes it): keep storing it
    message = Message(handler="h", payload={"s": "\ud800"}, queue="default")
    assert Message.decode(message.encode()) == message


def test_a_field_from_a_newer_version_is_ignored() -> None:
    message = Message.decode(json.dumps({**OLDER, "shiny": True}))
    assert message == Message.decode(json.dumps(OLDER))


@pytest.mark.parametrize("raw", ["not json", "[]", json.dumps({"payload": {}}),
                                 json.dumps({**OLDER, "payload": [1]})])
def test_what_is_not_a_message_is_a_validation_error(raw: str) -> None:
    with pytest.raises(ValidationError, match="not a task message"):
        Message.decode(raw)


def test_frozen() -> None:
    message = Message.decode(json.dumps(OLDER))
    with pytest.raises(pydantic.ValidationError):
        message.retries = 3  # type: ignore[misc]


def test_headers_carry_resources_and_the_study_marker() -> None:
    assert Message.decode(json.dumps(OLDER)).headers() is None
    marked = Message.decode(json.dumps({**SUBMITTED, "study": {"study_id": "s", "trial_index": 4}}))
    assert marked.headers() == {"bo_resources": SUBMITTED["resources"],
                                "bo_study": {"study_id": "s", "trial_index": 4}}


def test_held_sends_and_outbox_entries_already_in_redis_are_read_back() -> None:
    fake = fakeredis.FakeRedis(decode_responses=True)
    delays, outbox = DelayedSubmissions(fake, KEYS), Outbox(fake, KEYS)
    # written as today's code writes them, not through Message
    fake.hset(KEYS.delayed_specs, "held", json.dumps(HELD_RETRY))
    fake.zadd(KEYS.delayed, {"held": time.time() - 1})
    fake.hset(KEYS.outbox, "lost", json.dumps(SUBMITTED))
    fake.hset(KEYS.task("lost"), "state", "QUEUED")
    # and what cannot be a message is dropped, without holding up the others
    fake.hset(KEYS.delayed_specs, "broken", json.dumps({**OLDER, "payload": [1]}))
    fake.zadd(KEYS.delayed, {"broken": time.time() - 2})
    fake.hset(KEYS.outbox, "garbled", "not json")
    fake.hset(KEYS.task("garbled"), "state", "QUEUED")
    outbox.suspect("a test")

    sent: list[tuple[str, Message]] = []
    assert delays.release_due(lambda task_id, m: sent.append((task_id, m))) == 1
    assert outbox.reconcile(lambda task_id, m: sent.append((task_id, m)),
                            lambda: ["default"], settle_s=0) == ["lost"]
    assert sent == [("held", Message(**HELD_RETRY)), ("lost", Message(**SUBMITTED))]
    assert not fake.hexists(KEYS.delayed_specs, "broken") and delays.pending() == 0
    assert not fake.hexists(KEYS.outbox, "garbled")
    assert not fake.exists(outbox.suspicion_key)  # the look finished


def test_envelope_task_id_reads_queue_entries_and_unacked_ones() -> None:
    envelope = {"body": "", "headers": {"id": "t-1"}, "properties": {}}
    assert envelope_task_id(json.dumps(envelope)) == "t-1"
    assert envelope_task_id(json.dumps([envelope, "", "default"])) == "t-1"
    assert envelope_task_id("{}") is None
    assert envelope_task_id("not json") is None


def test_the_broker_list_is_kombus_priority_list() -> None:
    """kombu's `_q_for_pri`: priority 0 (and none) is the queue's own list, 1..9 have
    their step appended; out-of-range priorities are clamped as kombu clamps them."""
    prefix = KEYS.broker_prefix
    plain = Message(handler="h", payload={}, queue="gpu.q")
    assert plain.broker_list(prefix) == f"{prefix}gpu.q"
    assert plain.model_copy(update={"priority": 0}).broker_list(prefix) == f"{prefix}gpu.q"
    assert plain.model_copy(update={"priority": 7}).broker_list(prefix) == f"{prefix}gpu.q:7"
    assert plain.model_copy(update={"priority": 42}).broker_list(prefix) == f"{prefix}gpu.q:9"


def test_the_envelope_carries_the_task_and_its_headers() -> None:
    message = Message(handler="h", payload={"x": 1}, queue="default", priority=3,
                      due_at=2_000_000_000.0, time_limit=2.5, study={"study_id": "s",
                                                                     "trial_index": 1})
    envelope = json.loads(message.envelope("t-1", now=1_900_000_000.0))
    assert envelope_task_id(json.dumps(envelope)) == "t-1"
    headers = envelope["headers"]
    assert (headers["task"], headers["eta"], headers["timelimit"]) == (
        "h", "2033-05-18T03:33:20+00:00", [7.5, 2.5])
    assert headers["bo_study"] == {"study_id": "s", "trial_index": 1}
    assert envelope["properties"]["priority"] == 3
    # due already: no eta, so a worker runs it at once
    assert json.loads(message.envelope("t-1", now=2_000_000_001.0))["headers"]["eta"] is None


# -- argsrepr: saferepr's text, written directly -------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from(["it's", "a\nb", "back\\slash", "'", '"', "x" * 1100]),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["k'ey", "a b"]), inner, max_size=6),
    max_leaves=60,
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.text(max_size=10), JSON, max_size=8))
def test_argsrepr_is_what_celerys_saferepr_writes(payload: dict[str, Any]) -> None:
    """Whether it fits or is cut, nested past saferepr's levels or not."""
    assert argsrepr(payload) == saferepr([payload], ARGSREPR_MAX, maxlevels=REPR_MAXLEVELS)


@pytest.mark.parametrize("payload", [
    {}, {"x": 1}, {"s": "it's"}, {"deep": {"a": {"b": {"c": 1}}}}, {"e": [[], {}]},
    {"long": "y" * 1021}, {"long": "y" * 1017}, {"t": (1, 2)}, {1: "int key"}, {"b": b"x"},
    {"long": "y" * 1009}, {"long": "y" * 1010},  # 1,023 and 1,024 characters: the edge
])
def test_argsrepr_at_the_edges(payload: dict[Any, Any]) -> None:
    """At saferepr's length limit, and for what JSON has not (a tuple, an int key, bytes),
    which saferepr renders itself."""
    assert argsrepr(payload) == saferepr([payload], ARGSREPR_MAX, maxlevels=REPR_MAXLEVELS)


def test_argsrepr_of_a_payload_that_fits_needs_no_saferepr(monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [{"x": 1, "s": "it's", "nested": {"a": [1.5, None, True]}},
                {"long": "y" * 1009}]  # the longest that fits: 1,023 characters
    expected = [saferepr([p], ARGSREPR_MAX, maxlevels=REPR_MAXLEVELS) for p in payloads]
    assert len(expected[1]) == ARGSREPR_MAX - 1
    monkeypatch.setattr("bo_queue.core.message.saferepr", None)  # called: a TypeError
    assert [argsrepr(p) for p in payloads] == expected
