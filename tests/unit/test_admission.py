"""bo_queue.core.admission on fakeredis: slots, resources, rate limits and their leases."""

from __future__ import annotations

import time
from unittest import mock

import fakeredis
import pytest

from bo_queue.core.admission import Admission, Gate
from bo_queue.core.keys import Keys
from bo_queue.registry import Resources


@pytest.fixture
def gate(fake: fakeredis.FakeRedis) -> Gate:
    return Gate(fake, Keys("t"), "w1", Resources(cpu=2, memory_mb=1000, gpu=1), lease_s=3)


def test_max_concurrency_admits_n_and_frees_on_release(gate: Gate) -> None:
    first = gate.admit("a", "h", 2, None, None)
    second = gate.admit("b", "h", 2, None, None)
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert isinstance(gate.admit("c", "h", 2, None, None), float)  # full: wait
    gate.release(first)
    assert isinstance(gate.admit("c", "h", 2, None, None), Admission)


def test_a_lease_that_runs_out_frees_the_slot(gate: Gate) -> None:
    assert isinstance(gate.admit("a", "h", 1, None, None), Admission)
    assert isinstance(gate.admit("b", "h", 1, None, None), float)
    later = time.time() + 4  # past the 3 s lease, never renewed (its worker died)
    with mock.patch("bo_queue.core.admission.time.time", return_value=later):
        assert isinstance(gate.admit("b", "h", 1, None, None), Admission)


def test_renewing_a_lapsed_hold_takes_it_again(gate: Gate, fake: fakeredis.FakeRedis) -> None:
    held = gate.admit("a", "h", 1, None, None)
    assert isinstance(held, Admission)
    fake.delete(*gate.keys.slots("h"))  # swept while Redis was away
    gate.renew(held, time.time() + 3)
    assert isinstance(gate.admit("b", "h", 1, None, None), float)  # the run still counts


def test_resources_fit_next_to_what_running_tasks_hold(gate: Gate) -> None:
    one = gate.admit("a", "h", None, None, Resources(cpu=1.5))
    assert isinstance(one, Admission)
    assert isinstance(gate.admit("b", "h", None, None, Resources(cpu=1)), float)
    assert isinstance(gate.admit("c", "h", None, None, Resources(cpu=0.5, gpu=1)), Admission)
    gate.release(one)
    assert isinstance(gate.admit("b", "h", None, None, Resources(cpu=1)), Admission)


def test_the_rate_is_counted_only_for_runs_admitted_otherwise(gate: Gate) -> None:
    # slots full: the rate limit must not use up a start for a run that will not happen
    assert isinstance(gate.admit("a", "h", 1, "2/s", None), Admission)
    for _ in range(5):
        assert isinstance(gate.admit("b", "h", 1, "2/s", None), float)
    assert gate.client.zcard(gate.keys.rate("h")) == 1
    assert isinstance(gate.admit("c", "g", None, "2/s", None), Admission)
    assert isinstance(gate.admit("d", "g", None, "2/s", None), Admission)
    wait = gate.admit("e", "g", None, "2/s", None)
    assert isinstance(wait, float) and 0 < wait <= 1.0
