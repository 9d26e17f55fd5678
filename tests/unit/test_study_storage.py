"""Study storage (bo_queue.studies.storage): RedisStorage over fakeredis, FileStorage in a
temporary folder."""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from bo_queue.core.keys import Keys
from bo_queue.errors import ReportConflictError, StudyNotFoundError, TrialNotFoundError
from bo_queue.studies.models import (
    Choice,
    LinearConstraint,
    Objective,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudySpec,
    StudyStatus,
    Trial,
    TrialStatus,
)
from bo_queue.studies.storage import (
    FileStorage,
    RedisStorage,
    StudyState,
    canonical,
    result_marker,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
MODEL_JSON = b'{"a": 1}'
MODEL = zlib.compress(MODEL_JSON)


def make_spec() -> StudySpec:
    return StudySpec(
        name="tune",
        parameters=[
            Range("lr", 1e-4, 1e-1, log=True),
            Range("depth", 2, 12, integer=True),
            Range("x", 0.0, 1.0),
            Choice("booster", ["gbtree", "dart"]),
        ],
        objectives=[Objective("loss")],
        outcome_constraints=[OutcomeConstraint(metric="mem", op="<=", bound=10.0)],
        parameter_constraints=[LinearConstraint(coefficients={"depth": 0.1, "x": 1}, bound=2)],
        strategy=Strategy(initial_trials=3, max_trials=12, parallelism=2, seed=42),
        evaluator="train.xgb",
        evaluator_options={"epochs": 3, "tags": ["a", "b"]},
    )


def make_study(study_id: str = "s1", **changes: Any) -> Study:
    fields: dict[str, Any] = {
        "id": study_id,
        "spec": make_spec(),
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=5),
    }
    fields.update(changes)
    return Study(**fields)


def make_trial(index: int, status: TrialStatus = TrialStatus.RUNNING, **changes: Any) -> Trial:
    fields: dict[str, Any] = {
        "index": index,
        "params": {"lr": 0.01, "depth": 3 + index, "x": 0.5, "booster": "dart"},
        "status": status,
        "created_at": T0 + timedelta(seconds=index),
        "generator": "sobol",
    }
    fields.update(changes)
    return Trial(**fields)


def full_state(study_id: str = "s1") -> StudyState:
    """A study mid-way: two batches, completed (one with a sem), failed and running trials."""
    study = make_study(
        study_id,
        status=StudyStatus.ACTIVE,
        message="going",
        completed_trials=2,
        failed_trials=1,
        running_trials=1,
        iteration=2,
        mode="closed_loop",
    )
    done = T0 + timedelta(minutes=1)
    trials = [
        make_trial(
            0,
            TrialStatus.COMPLETED,
            values={"loss": 0.5, "mem": 3.0},
            batch=0,
            finished_at=done,
            worker="w1",
            task_id="t0",
        ),
        make_trial(
            1,
            TrialStatus.COMPLETED,
            values={"loss": (0.25, 0.1), "mem": 4.0},
            batch=0,
            finished_at=done,
            worker="w2",
            task_id="t1",
        ),
        make_trial(
            2, TrialStatus.FAILED, batch=1, error="boom", finished_at=done, generator="botorch"
        ),
        make_trial(
            3,
            TrialStatus.RUNNING,
            batch=1,
            generator="botorch",
            leased_until=done + timedelta(hours=1),
        ),
    ]
    return StudyState(study, trials, MODEL)


# -- RedisStorage -------------------------------------------------------------------------


@pytest.fixture
def raw(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server, decode_responses=False)


@pytest.fixture
def store(fake: fakeredis.FakeRedis, raw: fakeredis.FakeRedis) -> RedisStorage:
    return RedisStorage(fake, Keys("t"), raw)


def test_create_and_study_round_trip(store: RedisStorage) -> None:
    study = make_study(mode="closed_loop", message="hello", completed_trials=3, iteration=1)
    store.create(study)
    assert store.study("s1") == study
    assert store.list() == ["s1"]
    assert store.studies(["s1", "nope"]) == [study]
    state = store.load("s1")
    assert state.study == study and state.trials == [] and state.model is None


def test_study_unknown(store: RedisStorage) -> None:
    with pytest.raises(StudyNotFoundError, match="nope"):
        store.study("nope")
    with pytest.raises(StudyNotFoundError):
        store.load("nope")


def test_list_orders_by_creation(store: RedisStorage) -> None:
    store.create(make_study("late", created_at=T0 + timedelta(days=1)))
    store.create(make_study("early"))
    assert store.list() == ["early", "late"]


def test_set_status_moves_only_from_allowed(store: RedisStorage) -> None:
    store.create(make_study())
    after = store.set_status("s1", StudyStatus.INITIALIZING, {StudyStatus.CREATED}, "starting")
    assert after is StudyStatus.INITIALIZING
    moved = store.study("s1")
    assert moved.status is StudyStatus.INITIALIZING
    assert moved.message == "starting"
    assert moved.updated_at > T0 + timedelta(seconds=5)

    blocked = store.set_status("s1", StudyStatus.PAUSED, {StudyStatus.ACTIVE}, "nope")
    assert blocked is StudyStatus.INITIALIZING  # the status that blocked it
    assert store.study("s1").status is StudyStatus.INITIALIZING
    assert store.study("s1").message == "starting"

    assert store.set_status("s1", StudyStatus.FAILED, frozenset()) is StudyStatus.INITIALIZING
    assert store.study("s1").status is StudyStatus.INITIALIZING


def test_set_status_unknown_study(store: RedisStorage, fake: fakeredis.FakeRedis) -> None:
    with pytest.raises(StudyNotFoundError, match="nope"):
        store.set_status("nope", StudyStatus.ACTIVE, {StudyStatus.CREATED})
    assert fake.keys("*") == []  # and it created nothing


@pytest.fixture
def with_trials(store: RedisStorage) -> RedisStorage:
    study = make_study()
    store.create(study)
    store.save_step(
        study,
        [make_trial(0), make_trial(1), make_trial(2, TrialStatus.FAILED, error="lease expired")],
        None,
        0,
    )
    return store


def entry(index: int, loss: float) -> dict[str, Any]:
    return {"index": index, "values": {"loss": loss, "mem": 1.0}}


def test_report_new_then_same(with_trials: RedisStorage) -> None:
    store = with_trials
    marker = canonical({"loss": 0.5, "mem": 1.0})
    assert store.report("s1", 0, entry(0, 0.5), marker) == "new"
    assert store.inbox("s1") == [entry(0, 0.5)]
    assert store.report("s1", 0, entry(0, 0.5), marker) == "same"
    assert store.inbox("s1") == [entry(0, 0.5)]  # exactly one entry per new report
    assert store.report("s1", 1, entry(1, 0.7), canonical({"loss": 0.7, "mem": 1.0})) == "new"
    assert store.inbox("s1") == [entry(0, 0.5), entry(1, 0.7)]
    assert store.inbox_size("s1") == 2


def test_report_conflict(with_trials: RedisStorage) -> None:
    store = with_trials
    store.report("s1", 0, entry(0, 0.5), canonical({"loss": 0.5, "mem": 1.0}))
    with pytest.raises(ReportConflictError, match="trial 0 of study s1"):
        store.report("s1", 0, entry(0, 0.6), canonical({"loss": 0.6, "mem": 1.0}))
    assert store.inbox("s1") == [entry(0, 0.5)]


def test_report_unknown_trial_and_study(with_trials: RedisStorage) -> None:
    store = with_trials
    with pytest.raises(TrialNotFoundError) as info:
        store.report("s1", 99, entry(99, 0.5), "m")
    assert (info.value.study_id, info.value.index) == ("s1", 99)
    with pytest.raises(StudyNotFoundError) as missing:
        store.report("nope", 0, entry(0, 0.5), "m")
    assert missing.value.study_id == "nope"
    assert store.inbox("s1") == [] and store.inbox("nope") == []


def test_report_closed_trial(with_trials: RedisStorage) -> None:
    store = with_trials
    assert store.report("s1", 2, entry(2, 0.5), "m") == "closed:FAILED"
    assert store.inbox("s1") == []
    # nothing was registered: the report stays closed, not 'same'
    assert store.report("s1", 2, entry(2, 0.5), "m") == "closed:FAILED"


def test_trial_reads(with_trials: RedisStorage) -> None:
    store = with_trials
    assert [t.index for t in store.trials("s1")] == [0, 1, 2]
    assert store.trial("s1", 2).error == "lease expired"
    with pytest.raises(TrialNotFoundError):
        store.trial("s1", 3)


def test_save_step_writes_trials_meta_and_trims_the_inbox(
    store: RedisStorage, raw: fakeredis.FakeRedis
) -> None:
    study = make_study()
    store.create(study)
    for i in range(3):
        store.push_result("s1", {"index": i, "error": f"e{i}"})
    stepped = study.model_copy(
        update={
            "status": StudyStatus.ACTIVE,
            "message": "ignored",
            "completed_trials": 1,
            "running_trials": 1,
            "iteration": 4,
            "mode": "closed_loop",
        }
    )
    trials = [make_trial(0, TrialStatus.COMPLETED, values={"loss": 1.0, "mem": 2.0}), make_trial(1)]
    store.save_step(stepped, trials, MODEL, drained=2)

    assert store.inbox("s1") == [{"index": 2, "error": "e2"}]
    assert store.trials("s1") == trials
    assert store.model("s1") == MODEL
    assert raw.get("t:study:s1:model") == MODEL
    after = store.study("s1")
    assert (after.completed_trials, after.running_trials, after.iteration, after.mode) == (
        1,
        1,
        4,
        "closed_loop",
    )
    # the status (and its message) move only by compare-and-set
    assert after.status is StudyStatus.CREATED
    assert after.message == ""


def test_save_step_without_drained_keeps_the_inbox(store: RedisStorage) -> None:
    study = make_study()
    store.create(study)
    store.push_result("s1", {"index": 0})
    store.save_step(study, [], None, 0)
    assert store.inbox("s1") == [{"index": 0}]
    assert store.model("s1") is None


def test_save_then_load_round_trip(store: RedisStorage) -> None:
    state = full_state()
    store.save(state)
    loaded = store.load("s1")
    assert loaded.study == state.study
    assert loaded.trials == state.trials
    assert loaded.trials[1].values == {"loss": (0.25, 0.1), "mem": 4.0}
    assert loaded.model == MODEL
    assert loaded.model_json() == {"a": 1}
    assert loaded == state
    assert store.list() == ["s1"]


def test_save_rebuilds_the_report_register(store: RedisStorage) -> None:
    store.save(full_state())
    # the completed trial's result, reported again identically, is 'same' (no new entry)
    assert store.report("s1", 1, {}, canonical({"loss": [0.25, 0.1], "mem": 4.0})) == "same"
    with pytest.raises(ReportConflictError):
        store.report("s1", 0, {}, canonical({"loss": 0.6, "mem": 3.0}))
    assert store.inbox("s1") == []
    assert store.report("s1", 3, {"index": 3}, "m") == "new"
    # a failed trial's failure is registered too: repeating it is a no-op, values conflict
    failed = store.trial("s1", 2)
    assert store.report("s1", 2, {}, canonical({"failed": failed.error})) == "same"
    with pytest.raises(ReportConflictError):
        store.report("s1", 2, {"index": 2}, "m")


def with_result_metadata(state: StudyState) -> StudyState:
    """`state` warm-started from s0, its trial 0 reported with metadata."""
    first = state.trials[0].model_copy(
        update={"reported_at": T0 + timedelta(minutes=2), "result_metadata": {"rig": "B2"}}
    )
    study = state.study.model_copy(update={"warm_start_from": ["s0"]})
    return StudyState(study, [first, *state.trials[1:]], state.model, state.curves)


def test_warm_start_sources_and_result_metadata_round_trip(
    store: RedisStorage, tmp_path: Path
) -> None:
    state = with_result_metadata(full_state())
    for backend in (store, FileStorage(tmp_path)):
        backend.save(state)
        assert backend.load("s1") == state
    # a result with metadata is registered with it: the same again is no new result
    values = {"loss": 0.5, "mem": 3.0}
    assert store.report("s1", 0, {}, result_marker(values, {"rig": "B2"})) == "same"
    with pytest.raises(ReportConflictError):
        store.report("s1", 0, {}, result_marker(values, None))


def test_save_replaces_a_previous_state(store: RedisStorage) -> None:
    store.save(full_state())
    smaller = StudyState(make_study(), [make_trial(0)], None)
    store.save(smaller)
    assert store.load("s1") == smaller
    assert store.report("s1", 0, {"index": 0}, "m") == "new"  # old register is gone


def test_delete_removes_every_key(store: RedisStorage, fake: fakeredis.FakeRedis) -> None:
    store.save(full_state("s1"))
    store.save(full_state("s2"))
    store.report("s1", 3, {"index": 3}, "m")
    store.push_result("s1", {"index": 3})
    fake.set(store.lock_key("s1"), "token")
    assert {k for k in fake.keys("*") if "s1" in k} == {
        "t:study:s1",
        "t:study:s1:trials",
        "t:study:s1:reported",
        "t:study:s1:inbox",
        "t:study:s1:model",
        "t:study:s1:model:iteration",
        "t:study:s1:lock",
    }

    assert store.delete("s1") is True
    assert [k for k in fake.keys("*") if "s1" in k] == []
    assert fake.zrange(store.index_key, 0, -1) == ["s2"]
    assert store.list() == ["s2"]
    assert store.load("s2") == full_state("s2")  # the other study is untouched
    with pytest.raises(StudyNotFoundError):
        store.study("s1")
    assert store.delete("s1") is False


# -- FileStorage --------------------------------------------------------------------------


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_file_save_writes_the_seed_layout(tmp_path: Path) -> None:
    FileStorage(tmp_path).save(full_state())
    assert files(tmp_path) == {
        "s1/metadata.json",
        "s1/parameter_space.json",
        "s1/strategy.json",
        "s1/designs/batch_0.json",
        "s1/designs/batch_1.json",
        "s1/results/batch_0.json",
        "s1/results/batch_1.json",
        "s1/models/latest.json.gz",
        "s1/models/history/iteration_2.json.gz",
    }
    folder = tmp_path / "s1"
    assert gzip.decompress((folder / "models/latest.json.gz").read_bytes()) == MODEL_JSON
    assert (
        gzip.decompress((folder / "models/history/iteration_2.json.gz").read_bytes()) == MODEL_JSON
    )
    meta = json.loads((folder / "metadata.json").read_text())
    assert "spec" not in meta
    assert (meta["id"], meta["name"], meta["status"]) == ("s1", "tune", "ACTIVE")
    assert json.loads((folder / "strategy.json").read_text())["seed"] == 42
    space = json.loads((folder / "parameter_space.json").read_text())
    assert [p["name"] for p in space["parameters"]] == ["lr", "depth", "x", "booster"]
    assert [o["name"] for o in space["objectives"]] == ["loss"]
    designs = json.loads((folder / "designs/batch_1.json").read_text())
    assert [d["index"] for d in designs] == [2, 3]
    results = json.loads((folder / "results/batch_0.json").read_text())
    assert results[1]["values"] == {"loss": [0.25, 0.1], "mem": 4.0}


def test_file_save_without_model_writes_no_models(tmp_path: Path) -> None:
    state = StudyState(make_study(), [], None)
    FileStorage(tmp_path).save(state)
    assert files(tmp_path) == {"s1/metadata.json", "s1/parameter_space.json", "s1/strategy.json"}
    loaded = FileStorage(tmp_path).load("s1")
    assert loaded.study == state.study and loaded.trials == [] and loaded.model is None


def test_file_round_trip(tmp_path: Path) -> None:
    state = full_state()
    storage = FileStorage(tmp_path)
    storage.save(state)
    loaded = storage.load("s1")
    assert loaded.study == state.study
    assert loaded.trials == state.trials
    assert loaded.trials[1].values == {"loss": (0.25, 0.1), "mem": 4.0}
    assert isinstance(loaded.trials[1].values["loss"], tuple)  # type: ignore[index]
    assert loaded.model is not None
    assert zlib.decompress(loaded.model) == MODEL_JSON
    assert loaded.model_json() == {"a": 1}


def test_file_list_and_delete(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root")
    assert storage.list() == []
    storage.save(full_state("b"))
    storage.save(full_state("a"))
    (tmp_path / "root" / "stray").mkdir()  # a folder that is not a study
    assert storage.list() == ["a", "b"]
    assert storage.delete("a") is True
    assert not (tmp_path / "root" / "a").exists()
    assert storage.list() == ["b"]
    assert storage.delete("a") is False
    with pytest.raises(StudyNotFoundError):
        storage.load("a")
    assert storage.load("b").study == full_state("b").study


def test_file_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.save(full_state())
    storage.save(full_state())  # over existing files too
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert len(files(tmp_path)) == 9


@pytest.mark.parametrize("study_id", ["a/b", ".hidden", "..", ""])
def test_file_rejects_unsafe_ids(tmp_path: Path, study_id: str) -> None:
    storage = FileStorage(tmp_path / "root")
    with pytest.raises(StudyNotFoundError):
        storage.save(StudyState(make_study(study_id)))
    with pytest.raises(StudyNotFoundError):
        storage.load(study_id)
    with pytest.raises(StudyNotFoundError):
        storage.delete(study_id)
    assert list(tmp_path.rglob("*")) == []


def test_a_snapshot_written_after_its_step_never_replaces_a_later_one(
    store: RedisStorage,
) -> None:
    study = make_study().model_copy(update={"iteration": 4})
    store.create(study)
    store.save_step(study, [], MODEL, 0)  # taken under the lock, at iteration 4
    assert store.save_snapshot("s1", 3, b"older") is False
    assert store.model("s1") == MODEL
    assert store.save_snapshot("s1", 6, b"later") is True
    assert store.model("s1") == b"later"
    assert store.save_snapshot("s1", 5, b"between") is False
    assert store.model("s1") == b"later"
    store.delete("s1")
    assert store.save_snapshot("s1", 9, b"after delete") is False
    assert store.model("s1") is None
    assert not store.redis.keys("*s1*")
