"""Where studies live: an abstract StorageBackend, the Redis backend (the live store that
steps and reports work against) and a File backend with the seed design's layout.

A study's full state is its Study record, its trials and the Ax model snapshot
(compressed JSON). The Redis backend also holds what only a running study needs: the
inbox of reported results and the write-once register of what was reported.
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.typing import EncodableT, FieldT

from bo_queue.core import scripts
from bo_queue.core.events import EVENTS_MAX_LEN
from bo_queue.core.keys import Keys
from bo_queue.core.replicas import ReplicaAcks
from bo_queue.core.steps import Pipe, Step, Steps, drive
from bo_queue.errors import (
    ReportConflictError,
    StudyNotFoundError,
    TrialNotFoundError,
    ValidationError,
    shown,
)
from bo_queue.studies.models import (
    Curve,
    Study,
    StudySpec,
    StudyStatus,
    Trial,
    TrialStatus,
    mean,
    outcomes,
)

T = TypeVar("T")


@dataclass
class StudyState:
    study: Study
    trials: builtins.list[Trial] = field(default_factory=list)
    model: bytes | None = None  # zlib-compressed Ax Client snapshot (JSON)
    curves: dict[int, Curve] = field(default_factory=dict)  # intermediate values by trial

    def model_json(self) -> dict[str, Any] | None:
        return None if self.model is None else dict(json.loads(zlib.decompress(self.model)))


class StorageBackend(ABC):
    """save / load / list / delete whole study states."""

    @abstractmethod
    def save(self, state: StudyState) -> None: ...

    @abstractmethod
    def load(self, study_id: str) -> StudyState: ...

    @abstractmethod
    def list(self) -> builtins.list[str]: ...

    @abstractmethod
    def delete(self, study_id: str) -> bool: ...


# What a study id may be (ours are 16 hex digits; imported ones keep theirs): no ':',
# which separates a study's own keys.
STUDY_ID = re.compile(r"[A-Za-z0-9._@-]{1,128}")


def valid_id(study_id: object) -> bool:
    return isinstance(study_id, str) and STUDY_ID.fullmatch(study_id) is not None


def marker(trial: Trial) -> str:
    """What report() registered for a finished trial, so that repeating it is a no-op."""
    if trial.status is TrialStatus.COMPLETED and trial.values is not None:
        return result_marker(trial.values, trial.result_metadata)
    if trial.status is TrialStatus.FAILED:
        return canonical({"failed": trial.error or "reported failed"})
    if trial.status is TrialStatus.EARLY_STOPPED and trial.values is not None:
        return stop_marker(plain(trial.values))
    return ""


def result_marker(values: Mapping[str, Any], metadata: Mapping[str, Any] | None) -> str:
    """What the reported register holds for a result: its values, with its metadata if
    it has any (so the same values with other metadata are a different result)."""
    if metadata is None:
        return canonical(plain(values))
    return canonical({"values": plain(values), "metadata": metadata})


def plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Outcomes as JSON holds them: (mean, sem) as a list."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def stop_marker(values: Mapping[str, Any]) -> str:
    """What the reported register holds for a trial early stopping stopped."""
    return canonical({"early_stopped": values})


def canonical(values: Any) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


class RedisStorage(StorageBackend):
    def __init__(self, client: redis.Redis, keys: Keys, raw: redis.Redis | None = None,
                 events_max_len: int = EVENTS_MAX_LEN, acks: ReplicaAcks | None = None) -> None:
        self.redis = client  # decodes responses
        # a report, an outcome and the saved state wait for the replicas (replica_acks)
        self.acks = acks or ReplicaAcks(0, 1.0)
        self.raw = raw or client  # returns bytes: for the compressed model
        self.ns = keys.namespace
        self.events = keys.events
        self.events_max_len = events_max_len
        self._set_status = scripts.register(
            client, "study_set_status.lua", MAX_EVENTS=events_max_len
        )
        # EVAL, not a registered script: its steps run on asyncio clients too (bo_queue.aio)
        self._report = scripts.text("study_report.lua")
        self._intermediate = scripts.text("study_intermediate.lua")

    # key names: every one goes through meta(), which refuses an id that could name
    # another study's key ("<id>:trials" would be that study's trials hash)
    def meta(self, study_id: str) -> str:
        if not valid_id(study_id):
            raise StudyNotFoundError(study_id if isinstance(study_id, str) else shown(study_id))
        return f"{self.ns}:study:{study_id}"

    def trials_key(self, study_id: str) -> str:
        return f"{self.meta(study_id)}:trials"

    def reported_key(self, study_id: str) -> str:
        return f"{self.meta(study_id)}:reported"

    def inbox_key(self, study_id: str) -> str:
        return f"{self.meta(study_id)}:inbox"

    def model_key(self, study_id: str) -> str:
        return f"{self.meta(study_id)}:model"

    def model_iteration_key(self, study_id: str) -> str:
        """The iteration of the step after which the snapshot was taken."""
        return f"{self.meta(study_id)}:model:iteration"

    def ready_key(self, study_id: str) -> str:
        """Trials generated ahead of a free slot (closed loop), whose evaluations the next
        ending evaluation sends."""
        return f"{self.meta(study_id)}:ready"

    def curves_key(self, study_id: str) -> str:
        """Each trial's curve, as study_intermediate.lua keeps it."""
        return f"{self.meta(study_id)}:curves"

    def at_step_key(self, study_id: str) -> str:
        """The watched metric's values at each step, which the rules compare."""
        return f"{self.meta(study_id)}:at_step"

    def lock_key(self, study_id: str) -> str:
        return f"{self.meta(study_id)}:lock"

    @property
    def index_key(self) -> str:
        return f"{self.ns}:studies"

    def _data_keys(self, study_id: str) -> builtins.list[str]:
        return [
            self.meta(study_id),
            self.trials_key(study_id),
            self.reported_key(study_id),
            self.inbox_key(study_id),
            self.model_key(study_id),
            self.model_iteration_key(study_id),
            self.ready_key(study_id),
            self.curves_key(study_id),
            self.at_step_key(study_id),
        ]

    def _all_keys(self, study_id: str) -> builtins.list[str]:
        """With the lock and its pending note: for delete, never while a step may run."""
        lock = self.lock_key(study_id)
        return [*self._data_keys(study_id), lock, lock + ":pending", self.meta(study_id) + ":steps"]

    # the StorageBackend interface
    def save(self, state: StudyState) -> None:
        """Write a whole state (used when importing a study; steps use save_step).
        A running step's lock is left alone."""
        study_id = state.study.id
        if not valid_id(study_id):
            raise ValidationError(f"cannot store a study with the id {shown(study_id)}")
        with self.acks.pipeline(self.redis) as pipe:
            pipe.delete(*self._data_keys(study_id))
            pipe.hset(self.meta(study_id), mapping=_meta_fields(state.study))
            if state.trials:
                pipe.hset(
                    self.trials_key(study_id),
                    mapping=_fields({str(t.index): t.model_dump_json() for t in state.trials}),
                )
                done = {str(t.index): marker(t) for t in state.trials if marker(t)}
                if done:
                    pipe.hset(self.reported_key(study_id), mapping=_fields(done))
            if state.model is not None:
                pipe.set(self.model_key(study_id), state.model)
                pipe.set(self.model_iteration_key(study_id), state.study.iteration)
            if state.curves:
                curves, at_step = _curve_fields(state)
                pipe.hset(self.curves_key(study_id), mapping=_fields(curves))
                pipe.hset(self.at_step_key(study_id), mapping=_fields(at_step))
            pipe.zadd(self.index_key, {study_id: state.study.created_at.timestamp()})
            pipe.execute()

    def load(self, study_id: str) -> StudyState:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.meta(study_id))
            pipe.hvals(self.trials_key(study_id))
            pipe.hgetall(self.curves_key(study_id))
            meta, trials, curves = pipe.execute()
        model = self.model(study_id)
        if not meta:
            raise StudyNotFoundError(study_id)
        parsed = sorted((Trial.model_validate_json(t) for t in trials), key=lambda t: t.index)
        return StudyState(_study(meta), parsed, model, _curves(dict(curves)))

    def list(self) -> builtins.list[str]:
        return [_text(i) for i in self.redis.zrange(self.index_key, 0, -1)]

    def delete(self, study_id: str) -> bool:
        if not valid_id(study_id):
            return False  # no study can have it
        with self.redis.pipeline() as pipe:
            pipe.delete(*self._all_keys(study_id))
            pipe.zrem(self.index_key, study_id)
            removed, _ = pipe.execute()
        return bool(removed)

    # The producer's reads and reports are steps (bo_queue.core.steps): written once, run
    # here on this client, and awaited on an asyncio one by bo_queue.aio.AsyncStudies.
    def _run(self, steps: Steps[T]) -> T:
        return drive(steps, self._execute)

    def _execute(self, step: Step) -> builtins.list[Any]:
        kind, fill = step
        with self.acks.step_pipeline(self.redis, kind) as pipe:
            fill(pipe)
            return list(pipe.execute())

    # reads that do not need the whole state
    def study(self, study_id: str) -> Study:
        return self._run(self.studying(study_id))

    def studying(self, study_id: str) -> Steps[Study]:
        """`study` as steps."""
        key = self.meta(study_id)
        [meta] = yield Pipe.READ, lambda pipe: pipe.hgetall(key)
        if not meta:
            raise StudyNotFoundError(study_id)
        return _study(meta)

    def studies(self, study_ids: builtins.list[str]) -> builtins.list[Study]:
        with self.redis.pipeline(transaction=False) as pipe:
            for study_id in filter(valid_id, study_ids):
                pipe.hgetall(self.meta(study_id))
            metas = pipe.execute()
        return [_study(m) for m in metas if m]

    def trials(self, study_id: str) -> builtins.list[Trial]:
        return self._run(self.trials_reading(study_id))

    def trial(self, study_id: str, index: int) -> Trial:
        [trial] = self._run(self.trials_reading(study_id, [index]))
        return trial

    def trials_reading(
        self, study_id: str, indices: builtins.list[int] | None = None
    ) -> Steps[builtins.list[Trial]]:
        """The study's trials by index (TrialNotFoundError for one it lacks), or all of
        them (None), as steps."""
        key = self.trials_key(study_id)
        if indices is None:
            [raws] = yield Pipe.READ, lambda pipe: pipe.hvals(key)
            return sorted((Trial.model_validate_json(t) for t in raws), key=lambda t: t.index)
        if not indices:
            return []
        [raws] = yield Pipe.READ, lambda pipe: pipe.hmget(key, [str(i) for i in indices])
        for index, raw in zip(indices, raws, strict=True):
            if raw is None:
                raise TrialNotFoundError(study_id, index)
        return [Trial.model_validate_json(raw) for raw in raws]

    def curve(self, study_id: str, index: int) -> Curve:
        raw = self.redis.hget(self.curves_key(study_id), str(index))
        return [] if raw is None else _curve(_text(raw))

    def curves(self, study_id: str) -> dict[int, Curve]:
        fields = self.redis.hgetall(self.curves_key(study_id))
        return _curves({_text(k): _text(v) for k, v in fields.items()})

    def model(self, study_id: str) -> bytes | None:
        raw = self.raw.get(self.model_key(study_id))
        return None if raw is None else bytes(raw)  # type: ignore[arg-type]

    # writes
    def create(self, study: Study) -> None:
        self._run(self.creating(study))

    def creating(self, study: Study) -> Steps[None]:
        """`create` as steps."""
        def fill(pipe: Any) -> None:
            pipe.hset(self.meta(study.id), mapping=_meta_fields(study))
            pipe.zadd(self.index_key, {study.id: study.created_at.timestamp()})
            pipe.xadd(self.events, {
                "kind": "study", "id": study.id, "state": study.status.value,
                "at": study.created_at.timestamp(), "message": "created",
            }, maxlen=self.events_max_len, approximate=True)

        yield Pipe.ATOMIC, fill

    def set_spec(self, study_id: str, spec: StudySpec) -> None:
        self.redis.hset(
            self.meta(study_id), mapping={"spec": spec.model_dump_json(), "updated_at": time.time()}
        )

    def set_status(
        self,
        study_id: str,
        to: StudyStatus,
        allowed_from: frozenset[StudyStatus] | set[StudyStatus],
        message: str = "",
    ) -> StudyStatus:
        """Compare-and-set: moves to `to` only from one of `allowed_from`.
        Returns the status after the call (`to`, or the status that blocked it)."""
        args = [to.value, message, time.time(), study_id, *(s.value for s in allowed_from)]
        result = self._set_status(keys=[self.meta(study_id), self.events], args=args)
        if result is None:
            raise StudyNotFoundError(study_id)
        return StudyStatus(_text(result))

    def save_step(
        self, study: Study, changed: builtins.list[Trial], model: bytes | None, drained: int,
        fence: tuple[str, str] | None = None,
    ) -> bool:
        """What one step changed, in one transaction; the inbox entries it applied go too.
        With `fence` (the study lock's key and the step's token): only while that lock is
        still the step's, checked in the transaction (WATCH). False, with nothing written,
        when it is not: the lock lapsed (a process stalled past its lease, say) and
        another step may have moved the study on since this one loaded it."""
        fields = _meta_fields(study)
        fields.pop("status")  # status only moves by compare-and-set
        fields.pop("message")
        with self.acks.pipeline(self.redis) as pipe:
            while True:
                if fence is not None:
                    pipe.watch(fence[0])  # type: ignore[no-untyped-call]
                    if _text(pipe.get(fence[0])) != fence[1]:
                        return False
                    pipe.multi()
                pipe.hset(self.meta(study.id), mapping=fields)
                if changed:
                    pipe.hset(
                        self.trials_key(study.id),
                        mapping={str(t.index): t.model_dump_json() for t in changed},
                    )
                if model is not None:
                    pipe.set(self.model_key(study.id), model)
                    pipe.set(self.model_iteration_key(study.id), study.iteration)
                if drained:
                    pipe.ltrim(self.inbox_key(study.id), drained, -1)
                try:
                    pipe.execute()
                    return True
                except redis.WatchError:  # the lock's renewal touched it: look again
                    continue

    def save_snapshot(self, study_id: str, iteration: int, model: bytes) -> bool:
        """A snapshot taken after the step that saved `iteration`, written outside the
        study's lock: unless the study is gone or one taken later is there already. (Any
        snapshot is a valid checkpoint: a load replays the trial records it lacks.)"""
        written = False

        def write(pipe: Any) -> None:
            nonlocal written
            written = False  # (called again if a watched key changed before EXEC)
            stored = pipe.get(self.model_iteration_key(study_id))
            if not pipe.exists(self.meta(study_id)) or (
                    stored is not None and int(stored) >= iteration):
                return
            pipe.multi()
            pipe.set(self.model_key(study_id), model)
            pipe.set(self.model_iteration_key(study_id), iteration)
            written = True

        self.redis.transaction(write, self.model_iteration_key(study_id), self.meta(study_id))
        return written

    def report(self, study_id: str, index: int, entry: dict[str, Any], marker: str) -> str:
        return self._run(self.reporting(study_id, index, entry, marker))

    def reporting(
        self, study_id: str, index: int, entry: dict[str, Any], marker: str
    ) -> Steps[str]:
        """A trial's result (or failure) into the study's inbox, once (study_report.lua),
        as steps: 'new', 'same' or 'closed:<status>'; ReportConflictError for another
        result of the same trial."""
        keys = [self.trials_key(study_id), self.reported_key(study_id), self.inbox_key(study_id)]
        [reply] = yield Pipe.WRITE, lambda pipe: pipe.eval(
            self._report, len(keys), *keys, index, marker, json.dumps(entry))
        result = _text(reply)
        if result == "missing":
            meta = self.meta(study_id)
            [exists] = yield Pipe.READ, lambda pipe: pipe.exists(meta)
            if not exists:
                raise StudyNotFoundError(study_id)
            raise TrialNotFoundError(study_id, index)
        if result == "conflict":
            raise ReportConflictError(
                f"trial {index} of study {study_id} already has a different result"
            )
        return result

    def report_intermediate(
        self, study_id: str, index: int, step: int, values: Mapping[str, Any],
        watched: float, rule: builtins.list[str], entry: dict[str, Any],
    ) -> str:
        """Record one point of a trial's curve and decide, atomically, whether the trial
        stops (study_intermediate.lua): `rule` is [minimize, percentile, threshold,
        min_progression, min_curves] as the script takes them."""
        return self._run(self.reporting_intermediate(
            study_id, index, step, values, watched, rule, entry))

    def reporting_intermediate(
        self, study_id: str, index: int, step: int, values: Mapping[str, Any],
        watched: float, rule: builtins.list[str], entry: dict[str, Any],
    ) -> Steps[str]:
        """`report_intermediate` as steps."""
        keys = [self.trials_key(study_id), self.reported_key(study_id),
                self.inbox_key(study_id), self.curves_key(study_id), self.at_step_key(study_id)]
        args: builtins.list[EncodableT] = [index, step, canonical(values), repr(watched), *rule,
                stop_marker(values), json.dumps(entry)]
        [reply] = yield Pipe.WRITE, lambda pipe: pipe.eval(
            self._intermediate, len(keys), *keys, *args)
        return _text(reply)

    def ready(self, study_id: str) -> builtins.list[int]:
        return [int(i) for i in self.redis.lrange(self.ready_key(study_id), 0, -1)]

    def push_ready(self, study_id: str, index: int) -> None:
        self.redis.rpush(self.ready_key(study_id), index)

    def take_ready(self, study_id: str) -> int | None:
        """The oldest trial generated ahead, now taken (by one caller only)."""
        raw = self.redis.lpop(self.ready_key(study_id))
        return None if raw is None else int(raw)  # type: ignore[arg-type]

    def push_result(self, study_id: str, entry: dict[str, Any]) -> None:
        """An evaluation's outcome, from the worker that ran it (checked by the step)."""
        with self.acks.pipeline(self.redis, transaction=False) as pipe:
            pipe.rpush(self.inbox_key(study_id), json.dumps(entry))
            pipe.execute()

    def record_step(self, study_id: str, timings: dict[str, Any], keep: int = 1000) -> None:
        """What a step did and how long it took (the newest `keep` steps are kept)."""
        key = f"{self.meta(study_id)}:steps"
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, json.dumps(timings))
            pipe.ltrim(key, -keep, -1)
            pipe.execute()

    def steps(self, study_id: str) -> builtins.list[dict[str, Any]]:
        return [json.loads(s) for s in self.redis.lrange(f"{self.meta(study_id)}:steps", 0, -1)]

    def inbox(self, study_id: str) -> builtins.list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(self.inbox_key(study_id), 0, -1)]

    def inbox_size(self, study_id: str) -> int:
        return int(self.redis.llen(self.inbox_key(study_id)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(mapping: Mapping[str, Any]) -> dict[FieldT, EncodableT]:
    """A str-keyed dict as redis-py's (invariant) mapping type wants it."""
    return dict(mapping.items())


def _meta_fields(study: Study) -> dict[FieldT, EncodableT]:
    return {
        "id": study.id,
        "spec": study.spec.model_dump_json(),
        "status": study.status.value,
        "message": study.message,
        "created_at": study.created_at.timestamp(),
        "updated_at": study.updated_at.timestamp(),
        "completed_trials": study.completed_trials,
        "failed_trials": study.failed_trials,
        "running_trials": study.running_trials,
        "early_stopped_trials": study.early_stopped_trials,
        "iteration": study.iteration,
        "mode": study.mode,
        "description": study.description,
        "metadata": canonical(study.metadata),
        "warm_start_from": canonical(study.warm_start_from),
    }


def _curve(raw: str) -> Curve:
    return [(int(step), outcomes(values)) for step, values in json.loads(raw)]


def _curves(fields: Mapping[str, str]) -> dict[int, Curve]:
    """The curves hash as {trial index: curve} (its `<index>.last` fields skipped)."""
    return {int(k): _curve(v) for k, v in fields.items() if "." not in k}


def _curve_fields(state: StudyState) -> tuple[dict[str, str], dict[str, str]]:
    """The curves and values-by-step hashes of `state`, as study_intermediate.lua writes
    them (the watched metric is the spec's)."""
    watched = state.study.spec.stopping_objective.name
    curves: dict[str, str] = {}
    at_step: dict[str, builtins.list[str]] = {}
    for index, curve in state.curves.items():
        if not curve:
            continue
        points = [[step, plain(values)] for step, values in curve]
        curves[str(index)] = canonical(points)
        step, values = points[-1]
        curves[f"{index}.last"] = f"{step} {canonical(values)}"
        for step, values in curve:
            at_step.setdefault(str(step), []).append(f"{index}={mean(values[watched])!r}")
    return curves, {step: " ".join(found) for step, found in at_step.items()}


def _study(meta: dict[Any, Any]) -> Study:
    data: dict[str, Any] = {_text(k): _text(v) for k, v in meta.items()}
    data["spec"] = StudySpec.model_validate_json(data["spec"])
    if "metadata" in data:  # a study stored before there was metadata has none
        data["metadata"] = json.loads(data["metadata"])
    if "warm_start_from" in data:
        data["warm_start_from"] = json.loads(data["warm_start_from"])
    return Study.model_validate(data)


# -- the File backend ---------------------------------------------------------------------


class FileStorage(StorageBackend):
    """The seed design's layout, one folder per study, every file written atomically:

    {root}/{study_id}/metadata.json          the Study record without its spec
                     parameter_space.json    parameters, constraints, objectives
                     strategy.json
                     designs/batch_N.json    trials generated by step N
                     results/batch_N.json    their outcomes
                     curves.json             intermediate values: {trial: [[step, values]]}
                     models/latest.json.gz   the Ax snapshot
                     models/history/iteration_N.json.gz
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, study_id: str) -> Path:
        if not study_id or "/" in study_id or study_id.startswith("."):
            raise StudyNotFoundError(study_id)
        return self.root / study_id

    def save(self, state: StudyState) -> None:
        study, folder = state.study, self._dir(state.study.id)
        spec = study.spec
        meta = study.model_dump(mode="json", exclude={"spec"})
        meta.update(
            name=spec.name, evaluator=spec.evaluator, evaluator_options=spec.evaluator_options
        )
        _write_json(folder / "metadata.json", meta)
        _write_json(
            folder / "parameter_space.json",
            {
                "parameters": [p.model_dump(mode="json") for p in spec.parameters],
                "parameter_constraints": [
                    c.model_dump(mode="json") for c in spec.parameter_constraints
                ],
                "objectives": [o.model_dump(mode="json") for o in spec.objectives],
                "outcome_constraints": [
                    c.model_dump(mode="json") for c in spec.outcome_constraints
                ],
            },
        )
        _write_json(folder / "strategy.json", spec.strategy.model_dump(mode="json"))
        batches: dict[int, list[Trial]] = {}
        for trial in state.trials:
            batches.setdefault(trial.batch, []).append(trial)
        for batch, trials in batches.items():
            _write_json(
                folder / "designs" / f"batch_{batch}.json",
                [
                    t.model_dump(
                        mode="json",
                        include={"index", "params", "generator", "batch", "created_at", "task_id"},
                    )
                    for t in trials
                ],
            )
            _write_json(
                folder / "results" / f"batch_{batch}.json",
                [
                    t.model_dump(
                        mode="json",
                        include={
                            "index",
                            "status",
                            "values",
                            "worker",
                            "leased_until",
                            "finished_at",
                            "error",
                            "reported_at",
                            "result_metadata",
                        },
                    )
                    for t in trials
                ],
            )
        if state.curves:
            _write_json(folder / "curves.json", {
                str(index): [[step, plain(values)] for step, values in curve]
                for index, curve in state.curves.items()
            })
        if state.model is not None:
            snapshot = gzip.compress(zlib.decompress(state.model))
            _write_bytes(folder / "models" / "latest.json.gz", snapshot)
            _write_bytes(
                folder / "models" / "history" / f"iteration_{study.iteration}.json.gz", snapshot
            )

    def load(self, study_id: str) -> StudyState:
        folder = self._dir(study_id)
        if not (folder / "metadata.json").exists():
            raise StudyNotFoundError(study_id)
        meta = json.loads((folder / "metadata.json").read_text())
        space = json.loads((folder / "parameter_space.json").read_text())
        spec = StudySpec(
            name=meta.pop("name"),
            evaluator=meta.pop("evaluator"),
            evaluator_options=meta.pop("evaluator_options"),
            strategy=json.loads((folder / "strategy.json").read_text()),
            **space,
        )
        study = Study.model_validate({**meta, "spec": spec})
        trials: builtins.list[Trial] = []
        for design in sorted((folder / "designs").glob("batch_*.json")):
            results = {
                r["index"]: r for r in json.loads((folder / "results" / design.name).read_text())
            }
            for entry in json.loads(design.read_text()):
                trials.append(Trial.model_validate({**entry, **results.get(entry["index"], {})}))
        latest = folder / "models" / "latest.json.gz"
        model = zlib.compress(gzip.decompress(latest.read_bytes())) if latest.exists() else None
        saved = folder / "curves.json"
        curves = {
            int(index): [(int(step), outcomes(values)) for step, values in curve]
            for index, curve in (json.loads(saved.read_text()) if saved.exists() else {}).items()
        }
        return StudyState(study, sorted(trials, key=lambda t: t.index), model, curves)

    def list(self) -> builtins.list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "metadata.json").exists())

    def delete(self, study_id: str) -> bool:
        folder = self._dir(study_id)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True


def _write_json(path: Path, data: Any) -> None:
    _write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


def _write_bytes(path: Path, data: bytes) -> None:
    """Atomically: a temporary file in the same folder, then a rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise


def with_suppressed_unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
