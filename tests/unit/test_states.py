"""The task state model, Celery's states mapped in, and the five priorities."""

from __future__ import annotations

import itertools

import pytest
from celery import states as celery_states

from bo_queue import TERMINAL_STATES, Priority, TaskState, ValidationError
from bo_queue.states import from_celery_state


def test_terminal_states() -> None:
    assert isinstance(TERMINAL_STATES, frozenset)
    expected = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
    assert expected == TERMINAL_STATES
    for state in TaskState:
        assert state.terminal is (state in TERMINAL_STATES)


def test_the_nine_states() -> None:
    assert [s.value for s in TaskState] == [
        "PENDING", "QUEUED", "PAUSED", "RUNNING", "RETRYING",
        "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED",
    ]
    assert TaskState("QUEUED") is TaskState.QUEUED
    assert TaskState.RUNNING == "RUNNING"  # a str enum: it round-trips through Redis as text


CELERY_TO_BO = {
    celery_states.PENDING: TaskState.PENDING,
    celery_states.RECEIVED: TaskState.QUEUED,
    celery_states.STARTED: TaskState.RUNNING,
    celery_states.RETRY: TaskState.RETRYING,
    celery_states.SUCCESS: TaskState.SUCCEEDED,
    celery_states.FAILURE: TaskState.FAILED,
    celery_states.REVOKED: TaskState.CANCELLED,
    celery_states.REJECTED: TaskState.QUEUED,  # requeued when its worker was lost
    celery_states.IGNORED: TaskState.CANCELLED,
}


@pytest.mark.parametrize(("celery_state", "expected"), sorted(CELERY_TO_BO.items()))
def test_from_celery_state(celery_state: str, expected: TaskState) -> None:
    assert from_celery_state(celery_state) is expected


def test_every_celery_state_is_mapped() -> None:
    assert set(celery_states.ALL_STATES) <= set(CELERY_TO_BO)


def test_celery_ready_states_are_terminal_and_in_flight_states_are_not() -> None:
    for state in celery_states.READY_STATES:
        assert from_celery_state(state).terminal
    in_flight = (
        celery_states.PENDING, celery_states.RECEIVED, celery_states.STARTED, celery_states.RETRY
    )
    for state in in_flight:
        assert not from_celery_state(state).terminal


def test_unknown_celery_state_is_pending() -> None:
    assert from_celery_state("SOMETHING-NEW") is TaskState.PENDING


def test_five_priorities_in_order() -> None:
    assert [p.name for p in sorted(Priority)] == ["LOW", "NORMAL", "HIGH", "URGENT", "CRITICAL"]
    assert Priority.LOW < Priority.NORMAL < Priority.HIGH < Priority.URGENT < Priority.CRITICAL


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Priority.URGENT, Priority.URGENT),
        ("high", Priority.HIGH),
        ("HIGH", Priority.HIGH),
        ("Critical", Priority.CRITICAL),
        ("low", Priority.LOW),
        (0, Priority.LOW),
        (1, Priority.NORMAL),
        (4, Priority.CRITICAL),
    ],
)
def test_parse_accepts(value: object, expected: Priority) -> None:
    assert Priority.parse(value) is expected


@pytest.mark.parametrize(
    "value",
    ["", "highest", "1", "NORMAL ", True, False, -1, 5, 9, 2.0, None, [2]],
    ids=repr,
)
def test_parse_rejects(value: object) -> None:
    with pytest.raises(ValidationError, match="unknown priority"):
        Priority.parse(value)


def test_critical_is_served_first_by_the_broker() -> None:
    # Celery's Redis transport serves priority list 0 first.
    assert Priority.CRITICAL.broker_priority == 0
    assert Priority.CRITICAL.broker_priority == min(p.broker_priority for p in Priority)
    assert Priority.LOW.broker_priority == max(p.broker_priority for p in Priority)


def test_broker_priority_is_strictly_monotonic_and_in_range() -> None:
    levels = sorted(Priority)  # LOW .. CRITICAL
    broker = [p.broker_priority for p in levels]
    assert all(0 <= b <= 9 for b in broker)
    assert all(a > b for a, b in itertools.pairwise(broker)), broker
