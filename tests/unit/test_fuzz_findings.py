"""What fuzzing the facade found (tests/reliability/test_fuzz.py), one test per fix: each
input used to escape as something other than a BOQueueError (TypeError, OverflowError,
RecursionError, UnicodeEncodeError, redis's WRONGTYPE, pydantic's own errors), or was
accepted and left state behind that could not be read back, named another key, or would
only fail later on a worker. On fakeredis; no workers."""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from typing import Any

import fakeredis
import pytest

import bo_queue
from bo_queue import (
    BOQueue,
    BOQueueError,
    Choice,
    InvalidResultError,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    StudyNotFoundError,
    TaskHandle,
    Trial,
    TrialStatus,
    UnknownTaskError,
    ValidationError,
)
from bo_queue.errors import shown
from bo_queue.studies import _reserved
from bo_queue.studies.manager import StudyManager
from bo_queue.studies.models import StudySpec, StudyStatus
from bo_queue.studies.storage import StudyState
from bo_queue.validation import MAX_JSON_DEPTH, check_json


@bo_queue.handler("unit.fuzz")
def _fuzz(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return payload


def nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def spec(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "tune",
        "parameters": [{"kind": "range", "name": "x", "low": 0.0, "high": 1.0}],
        "objectives": [{"name": "loss"}],
    }
    return {**fields, **changes}


@pytest.fixture
def no_send(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Submissions that pass validation stop before anything is written or sent."""
    seen: list[str] = []

    def record(
        plans: list[Any], durable: bool = False, created_by: str | None = None
    ) -> list[TaskHandle]:
        seen.extend(plan.id for plan in plans)
        return [TaskHandle(bq, plan.id) for plan in plans]

    monkeypatch.setattr(bq, "submit_plans", record)
    return seen


@pytest.fixture
def studies(bq: BOQueue, monkeypatch: pytest.MonkeyPatch) -> StudyManager:
    manager = bq.studies
    monkeypatch.setattr(manager, "_stepping", lambda study_id, request, countdown=None: iter(()))
    return manager


# -- errors -------------------------------------------------------------------------------------


class _BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_error_messages_show_any_value() -> None:
    # str() of an int past 4,300 digits raises ValueError: messages that showed one did
    assert shown(10**5000) == "<an int of about 5001 digits>"
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 80
    assert shown(_BrokenRepr()) == "<a _BrokenRepr>"
    assert shown("x") == "'x'"


# -- tasks --------------------------------------------------------------------------------------


def test_a_deeply_nested_payload_is_a_validation_error(bq: BOQueue, no_send: list[str]) -> None:
    # was a RecursionError from json.dumps
    with pytest.raises(ValidationError, match="nests deeper than 100"):
        bq.submit("unit.fuzz", {"a": nest(5000)})
    with pytest.raises(ValidationError, match="nests deeper"):
        bq.submit_many([{"handler": "unit.fuzz", "payload": {"a": nest(200)}}])
    assert check_json({"a": nest(MAX_JSON_DEPTH - 1)}, "payload")  # as deep as allowed
    assert no_send == []


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("tags", ["\ud800"], "UTF-8"),  # was a UnicodeEncodeError from redis-py
        ("tags", None, "tags"),  # was a TypeError from tuple(None)
        ("tags", 5, "tags"),
        ("depends_on", None, "depends_on"),
        ("depends_on", ["\udc80"], "not task ids"),
        ("parent_id", "a:b", "parent_id"),  # was written as the key {ns}:task:a:b:children
        ("parent_id", "\ud800", "parent_id"),
    ],
)
def test_submit_options_redis_cannot_store_are_validation_errors(
    bq: BOQueue, no_send: list[str], field: str, value: Any, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        bq.submit("unit.fuzz", {}, **{field: value})
    assert no_send == []


def test_a_str_of_tags_is_one_tag(bq: BOQueue, no_send: list[str]) -> None:
    handle = bq.submit("unit.fuzz", {}, tags="nightly")  # was split into its letters
    assert handle.id in no_send


def test_a_dependency_id_that_names_another_key_writes_nothing(
    bq: BOQueue, fake: fakeredis.FakeRedis
) -> None:
    # "<id>:children" exists (a set), so it passed the existence check, and the WAIT script
    # failed on it with WRONGTYPE after the record was written: a PENDING task for ever
    fake.sadd(bq.keys.children("p1"), "c1")
    before = set(fake.keys("*"))
    with pytest.raises(ValidationError, match="not task ids"):
        bq.submit("unit.fuzz", {}, depends_on=["p1:children"])
    assert set(fake.keys("*")) == before


@pytest.mark.parametrize("task_id", ["p1:children", "", "\udc80", 5, "a" * 129, "p1\n"])
def test_ids_that_cannot_be_task_ids_are_unknown_tasks(
    bq: BOQueue, fake: fakeredis.FakeRedis, task_id: Any
) -> None:
    fake.sadd(bq.keys.children("p1"), "c1")  # info() of "p1:children" read this: WRONGTYPE
    for look in (bq.info, bq.handle, bq.cancel, bq.children, bq.tree):
        with pytest.raises(UnknownTaskError):
            look(task_id)
    for many in (bq.graph, bq.plan):
        with pytest.raises(UnknownTaskError):
            many([task_id])


def test_bad_tags_and_batches_are_validation_errors(bq: BOQueue) -> None:
    with pytest.raises(ValidationError):
        bq.cancel_tag("\ud800")  # was a UnicodeEncodeError
    with pytest.raises(ValidationError, match="iterable of requests"):
        bq.submit_many(None)  # type: ignore[arg-type]  # was a TypeError


# -- study specs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        # each was stored with null in place of the number: the study could not be read
        # back (get and list raised pydantic's ValidationError) ever after
        {"parameters": [{"kind": "choice", "name": "x", "values": [math.nan, 1.0]}]},
        {"parameters": [{"kind": "choice", "name": "x", "values": [math.inf, 1.0]}]},
        {"parameter_constraints": [{"coefficients": {"x": math.nan}, "bound": 1}]},
        {"parameter_constraints": [{"coefficients": {"x": 1}, "bound": math.inf}]},
        {"outcome_constraints": [{"metric": "cost", "op": "<=", "bound": math.nan}]},
        {"strategy": {"generation_time_limit_s": math.inf}},
        {"strategy": {"trial_lease_s": math.inf}},
    ],
)
def test_nan_and_infinity_are_rejected_anywhere_in_a_spec(
    studies: StudyManager, changes: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="finite"):
        studies.create_from_spec(spec(**changes))
    assert studies.list() == []


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"a": b"\xff"}, "not JSON"),  # was pydantic's PydanticSerializationError at store
        ({"a": object()}, "not JSON"),
        ({"a": {1, 2}}, "not JSON"),  # was stored as a list
        ({"a": math.nan}, "not JSON"),  # was stored as null
        ({"a": nest(500)}, "nests deeper"),
        ({"\ud800": 1}, "UTF-8"),  # pydantic's JSON stored the key as U+FFFD, silently
    ],
)
def test_evaluator_options_must_be_json(
    studies: StudyManager, fake: fakeredis.FakeRedis, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        studies.create_from_spec(spec(evaluator_options=options))
    assert fake.keys("*") == []


def test_a_spec_that_cannot_be_stored_as_json_is_rejected(
    studies: StudyManager, fake: fakeredis.FakeRedis
) -> None:
    # a lone surrogate passes str validation but not pydantic's JSON encoder
    with pytest.raises(ValidationError, match="cannot be stored"):
        studies.create_from_spec(spec(parameters=[
            {"kind": "choice", "name": "x", "values": ["\ud800", "a"]}]))
    assert fake.keys("*") == []


@pytest.mark.parametrize("data", [[1, 2], None, "tune", {1: "x"}, {"name": "t", 2: 3}])
def test_a_spec_that_is_not_a_mapping_of_fields_is_a_validation_error(
    studies: StudyManager, data: Any
) -> None:
    with pytest.raises(ValidationError, match="spec"):  # was a TypeError from **data
        studies.create_from_spec(data)


def test_create_with_none_for_a_list_is_a_validation_error(studies: StudyManager) -> None:
    with pytest.raises(ValidationError):  # was a TypeError from list(None)
        studies.create("tune", None, [Objective("loss")])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        studies.set_strategy("nope", "fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        # each was accepted, then failed the study at its first step, inside Ax
        ({"strategy": {"seed": -1}}, "seed must be between"),
        ({"strategy": {"seed": 2**32}}, "seed must be between"),
        ({"parameters": [{"kind": "range", "name": "x", "low": 1e-7, "high": 1e-6,
                          "log": True}]}, "at least 1.5e-05"),
        ({"parameters": [{"kind": "range", "name": "x", "low": -1e308, "high": 1e308}]},
         "high - low must be finite"),  # Ax made trials with NaN params
        ({"objectives": [{"name": "gamma"}]}, "'gamma' is a reserved name"),
        ({"objectives": [{"name": "id"}]}, "'id' is a reserved name"),
        ({"outcome_constraints": [{"metric": "lambda", "op": "<=", "bound": 1}]},
         "'lambda' is a reserved name"),
        ({"parameters": [{"kind": "range", "name": "E", "low": 0, "high": 1}],
          "parameter_constraints": [{"coefficients": {"E": 1.0}, "bound": 1}]},
         "'E' is a reserved name"),
        ({"parameters": [{"kind": "range", "name": "a__dot__b", "low": 0, "high": 1}],
          "parameter_constraints": [{"coefficients": {"a__dot__b": 1.0}, "bound": 1}]},
         "placeholder"),
    ],
)
def test_specs_ax_would_refuse_are_rejected_when_created(
    studies: StudyManager, fake: fakeredis.FakeRedis, changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        studies.create_from_spec(spec(**changes))
    assert fake.keys("*") == []
    StudySpec(**spec(**changes))  # as stored data it still reads: only creating checks


def test_reserved_names_only_matter_where_ax_parses_them(studies: StudyManager) -> None:
    study = studies.create_from_spec(spec(parameters=[
        {"kind": "range", "name": "gamma", "low": 0, "high": 1}]))
    assert studies.get(study.id).spec.parameters[0].name == "gamma"


def test_the_reserved_names_cover_the_installed_sympy() -> None:
    sympy = pytest.importorskip("sympy")
    names = {n for n in dir(sympy) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", n)}
    assert names <= _reserved.SYMPY, sorted(names - _reserved.SYMPY)[:10]


# -- points and reports -------------------------------------------------------------------------


def test_points_and_values_of_any_shape_are_our_errors() -> None:
    study = StudySpec(**spec(outcome_constraints=[
        OutcomeConstraint(metric="cost", op="<=", bound=1)]))
    with pytest.raises(ValidationError, match="outside"):
        study.check_params({"x": 10**400})  # was an OverflowError
    with pytest.raises(ValidationError, match="mapping"):
        study.check_params(["x"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown"):
        study.check_params({"x": 0.5, 1: 2, "y": 3})  # was a TypeError from sorted()
    with pytest.raises(InvalidResultError, match="finite"):
        study.check_values({"loss": 10**400, "cost": 0})  # was an OverflowError
    with pytest.raises(InvalidResultError, match="finite"):
        study.check_values({"loss": [1, 10**5000], "cost": 0})  # its message raised
    with pytest.raises(InvalidResultError, match="mapping"):
        study.check_values(["loss", "cost"])  # type: ignore[arg-type]  # AttributeError
    with pytest.raises(InvalidResultError, match="expected values"):
        study.check_values({"loss": 1, 2: 3})


@pytest.fixture
def running(studies: StudyManager) -> str:
    """A study with trial 0 running, imported as a whole (no Ax)."""
    study = studies.create_from_spec(spec(strategy={"seed": 1}))
    trial = Trial(index=0, params={"x": 0.5}, status=TrialStatus.RUNNING,
                  created_at=study.created_at)
    active = study.model_copy(update={"status": StudyStatus.ACTIVE})
    studies.store.save(StudyState(active, [trial]))
    return study.id


@pytest.mark.parametrize("index", ["0", 0.0, True, -1, pytest.param(10**5000, id="10**5000"),
                                   None])
def test_a_report_index_must_be_a_trial_index(
    studies: StudyManager, fake: fakeredis.FakeRedis, running: str, index: Any
) -> None:
    # "0" was accepted and registered under "0", then dropped by the step (its index is
    # not the int 0): the result was lost and trial 0 blocked; 10**5000 raised ValueError
    before = {k: fake.dump(k) for k in fake.keys("*")}
    with pytest.raises(ValidationError, match="trial index"):
        studies.report(running, index, {"loss": 1.0})
    with pytest.raises(ValidationError, match="trial index"):
        studies.report_failure(running, index, "broke")
    assert {k: fake.dump(k) for k in fake.keys("*")} == before
    assert studies.report(running, 0, {"loss": 1.0}) is True


@pytest.mark.parametrize("reason", [object(), 5, None, "x" * 2001])
def test_a_failure_reason_must_be_a_string(
    studies: StudyManager, running: str, reason: Any
) -> None:
    with pytest.raises(ValidationError, match="reason"):  # was a TypeError from json.dumps
        studies.report_failure(running, 0, reason)


def test_other_ask_tell_arguments_are_validated(studies: StudyManager, running: str) -> None:
    for count in ("2", 0, 1.5, True):
        with pytest.raises(ValidationError, match="count"):
            studies.suggest(running, count=count)
    with pytest.raises(ValidationError, match="timeout"):
        studies.suggest(running, timeout=math.nan)
    with pytest.raises(ValidationError, match="points"):
        studies.add_design_points(running, None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="pairs"):
        studies.add_results(running, [(0,)])  # type: ignore[list-item]


# -- study ids ----------------------------------------------------------------------------------


def test_a_study_id_cannot_name_another_studys_keys(
    studies: StudyManager, fake: fakeredis.FakeRedis, running: str
) -> None:
    trials = studies.store.trials_key(running)
    assert fake.exists(trials)
    # "<id>:trials" named the real study's trials hash: get() raised KeyError('spec'),
    # and delete() deleted the other study's trials
    with pytest.raises(StudyNotFoundError):
        studies.get(f"{running}:trials")
    assert studies.delete(f"{running}:trials") is False
    assert fake.exists(trials)
    assert len(studies.trials(running)) == 1
    for study_id in ("\ud800", "", 5):  # was a UnicodeEncodeError / TypeError
        with pytest.raises(StudyNotFoundError):
            studies.get(study_id)  # type: ignore[arg-type]
        with pytest.raises(StudyNotFoundError):
            studies.report(study_id, 0, {"loss": 1})  # type: ignore[arg-type]


# -- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [":lock", ":schedule", ":statics", 5, None, "", "a b"])
def test_schedule_names_cannot_be_redbeats_own_keys(bq: BOQueue, name: Any) -> None:
    # ":lock" was saved as a schedule over beat's lock key; ":schedule" hit the index zset
    # (WRONGTYPE); 5 was a TypeError
    with pytest.raises(ValidationError, match="schedule name"):
        bq.schedules.add(name, "unit.fuzz", every=30)
    with pytest.raises(KeyError):
        bq.schedules.get(name)  # no such schedule, without asking Redis


@pytest.mark.parametrize(
    "every",
    [math.inf, 1e300, 10**400, "30", [1], True, None, 1e-300, 0, -5,
     timedelta(0), timedelta(microseconds=1) / 2, timedelta.max, 10 * 366 * 86400 + 1],
)
def test_every_is_a_positive_interval_of_at_most_ten_years(bq: BOQueue, every: Any) -> None:
    # inf and 1e300 were OverflowErrors, "abc" a ValueError, [1] a TypeError, True ran
    # every second, and 1e-300 made a zero interval that beat fires on every tick
    with pytest.raises(ValidationError):
        bq.schedules.add("tick", "unit.fuzz", every=every)


@pytest.mark.parametrize("zone", [5, "Nowhere/Else", "Europe", "x" * 300, "\ud800"])
def test_a_time_zone_is_checked_for_every_schedule(bq: BOQueue, zone: Any) -> None:
    # was a TypeError for 5, and not checked at all with every= ("Nowhere/Else" stored)
    with pytest.raises(ValidationError, match="time zone"):
        bq.schedules.add("tick", "unit.fuzz", every=30, timezone=zone)
    with pytest.raises(ValidationError, match="time zone"):
        bq.schedules.add("tick", "unit.fuzz", cron="0 3 * * *", timezone=zone)


def test_a_schedule_payload_cannot_have_a_redbeat_type_key(bq: BOQueue) -> None:
    from redbeat.decoder import RedBeatJSONDecoder  # type: ignore[import-untyped]

    # redbeat reads any object with "__type__" back as its own: this one as a datetime,
    # others not at all (a saved schedule then broke get() and list() for all of them)
    stored = json.dumps({"at": {"__type__": "datetime", "year": 2026, "month": 1, "day": 1}})
    assert not isinstance(json.loads(stored, cls=RedBeatJSONDecoder)["at"], dict)
    for payload in ({"__type__": "interval"}, {"a": [{"b": {"__type__": "x"}}]}):
        with pytest.raises(ValidationError, match="__type__"):
            bq.schedules.add("tick", "unit.fuzz", payload, every=30)
    with pytest.raises(ValidationError, match="__type__"):
        bq.schedules.add_study("nightly", spec(evaluator_options={"__type__": "crontab"}),
                               every=30)


def test_a_schedule_template_is_checked_like_a_study(bq: BOQueue) -> None:
    with pytest.raises(ValidationError, match="spec"):
        bq.schedules.add_study("nightly", ["not", "a", "spec"], every=30)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="reserved"):
        bq.schedules.add_study("nightly", spec(objectives=[{"name": "beta"}]), cron="0 2 * * *")


def test_every_error_here_has_one_root() -> None:
    assert issubclass(ValidationError, BOQueueError)
    assert Range("x", 0, 1) and Choice("c", ["a", "b"]) and LinearConstraint(
        coefficients={"x": 1.0}, bound=1.0) and Strategy()
