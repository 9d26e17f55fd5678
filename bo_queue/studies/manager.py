"""StudyManager (`bq.studies`): the producer's side of optimization studies.

Nothing here imports Ax. Everything that touches the Ax model (initializing, generating
trials, telling it results) happens in a `bo_queue.study.step` task on a worker, under
the study's lock: the only writer of a study's model.
"""

from __future__ import annotations

import builtins
import functools
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from bo_queue.core.handle import TaskHandle
from bo_queue.core.kernel import request_of
from bo_queue.core.keys import PULL_QUEUE
from bo_queue.core.steps import Pipe, Steps
from bo_queue.errors import (
    InvalidTransitionError,
    StudyError,
    StudyTimeoutError,
    TaskFailedError,
    UnknownHandlerError,
    ValidationError,
    shown,
)
from bo_queue.studies import scoring, tables
from bo_queue.studies.models import (
    TRANSITIONS,
    Choice,
    LinearConstraint,
    Objective,
    Outcome,
    OutcomeConstraint,
    Range,
    Strategy,
    Study,
    StudySpec,
    StudyStatus,
    Trial,
    TrialStatus,
    all_text_encodable,
    mean,
)
from bo_queue.studies.storage import (
    RedisStorage,
    StorageBackend,
    StudyState,
    canonical,
    plain,
    result_marker,
    valid_id,
)
from bo_queue.validation import check_json, encodable

if TYPE_CHECKING:
    import pandas

    from bo_queue.core.kernel import Core

STEP = "bo_queue.study.step"
STUDY_TAG = "study:{}"
# How long an ask/tell report's step waits: long enough for the suggest() a producer sends
# right after its report (that step tells Ax the result first), short enough that
# trials() and wait() see the result about as soon as before.
TELL_AFTER_S = 0.25
MAX_REASON = 2000  # characters of a report_failure reason (as the HTTP API allows)
MAX_DESCRIPTION = 10_000  # characters
MAX_METADATA = 65_536  # bytes of a study's metadata as JSON


F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _redis_errors(method: F) -> F:
    """A Redis that cannot be reached is a BrokerUnavailableError here too."""

    @functools.wraps(method)
    def call(self: StudyManager, *args: Any, **kwargs: Any) -> Any:
        with self.bq.broker_errors():
            return method(self, *args, **kwargs)

    return cast(F, call)


class StudyManager:
    """`bq.studies`: create, start, pause and delete studies; suggest and report trials
    (ask/tell) or run them closed loop; read trials, the best trial and the Pareto front;
    persist and load them."""

    def __init__(self, bq: Core) -> None:
        self.bq = bq
        self.store = RedisStorage(bq.redis, bq.keys, bq.raw_redis, bq.settings.events_max_len,
                                  acks=bq.acks)

    # -- creating and configuring -------------------------------------------------------

    @_redis_errors
    def create(
        self,
        name: str,
        parameters: Sequence[Range | Choice],
        objectives: Sequence[Objective],
        strategy: Strategy | None = None,
        evaluator: str | None = None,
        *,
        parameter_constraints: Sequence[LinearConstraint] = (),
        outcome_constraints: Sequence[OutcomeConstraint] = (),
        evaluator_options: Mapping[str, Any] | None = None,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        warm_start_from: Sequence[str] = (),
    ) -> Study:
        """Validate and store a new study (status CREATED). A strategy without a seed gets
        a random one, stored with the study, so a study resumes reproducibly. `description`
        and `metadata` (JSON) are the owner's, kept with the study wherever it goes.

        `warm_start_from`: studies (of this namespace, with the new study's metrics) whose
        completed trials inside the new space are attached before its first generation
        (generator "warm-start", not counted towards max_trials); the quasi-random initial
        design shrinks by as many."""
        return self._drive(self.creating(
            name, parameters, objectives, strategy, evaluator,
            parameter_constraints=parameter_constraints, outcome_constraints=outcome_constraints,
            evaluator_options=evaluator_options, description=description, metadata=metadata,
            warm_start_from=warm_start_from,
        ))

    def creating(
        self,
        name: str,
        parameters: Sequence[Range | Choice],
        objectives: Sequence[Objective],
        strategy: Strategy | None = None,
        evaluator: str | None = None,
        *,
        parameter_constraints: Sequence[LinearConstraint] = (),
        outcome_constraints: Sequence[OutcomeConstraint] = (),
        evaluator_options: Mapping[str, Any] | None = None,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        warm_start_from: Sequence[str] = (),
    ) -> Steps[Study]:
        """`create` as steps (bo_queue.aio.AsyncStudies awaits them)."""
        spec = StudySpec(
            name=name,
            parameters=_listed(parameters),
            objectives=_listed(objectives),
            strategy=Strategy() if strategy is None else strategy,
            evaluator=evaluator,
            parameter_constraints=_listed(parameter_constraints),
            outcome_constraints=_listed(outcome_constraints),
            evaluator_options=(
                dict(evaluator_options) if isinstance(evaluator_options, Mapping)
                else {} if evaluator_options is None else evaluator_options
            ),
        )
        return (yield from self.creating_from_spec(
            spec, description=description, metadata=metadata, warm_start_from=warm_start_from
        ))

    @_redis_errors
    def create_from_spec(
        self, spec: StudySpec | Mapping[str, Any], *, description: str = "",
        metadata: Mapping[str, Any] | None = None, warm_start_from: Sequence[str] = (),
    ) -> Study:
        """A study from a StudySpec, or from its fields as a JSON client sends them."""
        return self._drive(self.creating_from_spec(
            spec, description=description, metadata=metadata, warm_start_from=warm_start_from))

    def creating_from_spec(
        self, spec: StudySpec | Mapping[str, Any], *, description: str = "",
        metadata: Mapping[str, Any] | None = None, warm_start_from: Sequence[str] = (),
    ) -> Steps[Study]:
        """`create_from_spec` as steps."""
        description, metadata = _described(description, metadata)
        spec = parse_spec(spec)
        if spec.strategy.seed is None:
            spec = StudySpec(**{**spec.model_dump(), "strategy": _seeded(spec.strategy)})
        spec.check_runnable()
        if spec.evaluator is not None:
            yield from self.bq.learning(spec.evaluator)
            self.check_evaluator(spec.evaluator)
        sources = yield from self._warm_sources(spec, warm_start_from)
        now = datetime.now(UTC)
        study = Study(id=uuid.uuid4().hex[:16], spec=spec, created_at=now, updated_at=now,
                      description=description, metadata=metadata, warm_start_from=sources)
        yield from self.store.creating(study)
        return study

    @_redis_errors
    def clone(self, study_id: str, name: str | None = None, **changes: Any) -> Study:
        """A new CREATED study with `study_id`'s spec, `changes` applied (any StudySpec
        field: parameters, objectives, strategy, evaluator, ...), warm-started from it.
        Its description and metadata are the source's unless given."""
        source = self.get(study_id)
        described = {k: changes.pop(k) for k in ("description", "metadata") if k in changes}
        unknown = set(changes) - set(StudySpec.model_fields)
        if unknown:
            raise ValidationError(
                f"clone() takes StudySpec fields; not one: {sorted(unknown)}"
            )
        fields = {**source.spec.model_dump(), **changes, "name": name or source.spec.name}
        return self.create_from_spec(
            fields, description=described.get("description", source.description),
            metadata=described.get("metadata", source.metadata), warm_start_from=[source.id],
        )

    def _warm_sources(self, spec: StudySpec, sources: Sequence[str]) -> Steps[builtins.list[str]]:
        """The ids of studies a new study can start from; StudyNotFoundError (another
        namespace's study is not found in this one) or ValidationError otherwise."""
        if isinstance(sources, str) or not isinstance(sources, Sequence):
            raise ValidationError("warm_start_from must be a list of study ids")
        ids = builtins.list(dict.fromkeys(sources))
        for study_id in ids:
            if not valid_id(study_id):
                raise ValidationError(f"warm_start_from: {shown(study_id)} is not a study id")
            source = yield from self.store.studying(study_id)  # StudyNotFoundError
            missing = set(spec.metric_names) - set(source.spec.metric_names)
            if missing:
                raise ValidationError(
                    f"cannot warm-start from study {study_id}: its trials have no values for "
                    f"{sorted(missing)} (it measures {source.spec.metric_names})"
                )
            names = {p.name for p in spec.parameters}
            if names != {p.name for p in source.spec.parameters}:
                raise ValidationError(
                    f"cannot warm-start from study {study_id}: its parameters "
                    f"{sorted(p.name for p in source.spec.parameters)} are not {sorted(names)}"
                )
        return ids

    def check_evaluator(self, name: str) -> None:
        """ValidationError unless `name` is a declared handler that can evaluate trials."""
        try:
            queue = self.bq.handler_queue(name)
        except UnknownHandlerError as exc:
            raise UnknownHandlerError(name) from exc
        if queue == PULL_QUEUE:  # its results come from agents, not from a worker's run
            raise ValidationError(
                f"{name!r} is a pull task type: external agents evaluate it, so it cannot be "
                "a closed-loop evaluator; use ask/tell (agents report with studies.report)"
            )

    @_redis_errors
    def set_parameter_space(
        self,
        study_id: str,
        parameters: Sequence[Range | Choice],
        parameter_constraints: Sequence[LinearConstraint] = (),
    ) -> Study:
        return self._respec(
            study_id,
            parameters=_listed(parameters),
            parameter_constraints=_listed(parameter_constraints),
        )

    @_redis_errors
    def set_strategy(self, study_id: str, strategy: Strategy) -> Study:
        if not isinstance(strategy, Strategy):
            strategy = Strategy(**_fields(strategy, "strategy"))
        return self._respec(study_id, strategy=_seeded(strategy))

    def _respec(self, study_id: str, **changes: Any) -> Study:
        study = self.get(study_id)
        if study.status is not StudyStatus.CREATED:
            raise InvalidTransitionError(
                f"the space and strategy are fixed once a study has started ({study.status})"
            )
        fields = {**study.spec.model_dump(), **changes}
        spec = StudySpec(**fields).check_runnable()
        self.store.set_spec(study_id, spec)
        return self.get(study_id)

    # -- reading ------------------------------------------------------------------------

    @_redis_errors
    def get(self, study_id: str) -> Study:
        return self.store.study(study_id)

    @_redis_errors
    def list(
        self, status: StudyStatus | str | None = None, name: str | None = None
    ) -> builtins.list[Study]:
        wanted = None if status is None else _status(status)
        studies = self.store.studies(self.store.list())
        return [
            s
            for s in studies
            if (wanted is None or s.status is wanted) and (name is None or s.name == name)
        ]

    @_redis_errors
    def trials(self, study_id: str, status: TrialStatus | None = None) -> builtins.list[Trial]:
        self.get(study_id)
        return [t for t in self.store.trials(study_id) if status is None or t.status is status]

    @_redis_errors
    def trial(self, study_id: str, index: int) -> Trial:
        return self.store.trial(study_id, _index(index))

    @_redis_errors
    def best(self, study_id: str) -> Trial | None:
        """The best completed trial as observed (single objective), or None if none is
        (bo_queue.studies.scoring says which is best)."""
        return self._drive(self.best_reading(study_id))

    def best_reading(self, study_id: str) -> Steps[Trial | None]:
        """`best` as steps."""
        study = yield from self.store.studying(study_id)
        return scoring.best(study.spec, (yield from self.store.trials_reading(study_id)))

    @_redis_errors
    def pareto(self, study_id: str) -> builtins.list[Trial]:
        """The completed, feasible trials that no other trial beats on every objective."""
        study = self.get(study_id)
        return scoring.pareto(study.spec, self.store.trials(study_id))

    @_redis_errors
    def step_timings(self, study_id: str) -> builtins.list[dict[str, Any]]:
        """Per study step: trials told and made, generation time, total time, cache hit."""
        self.get(study_id)
        return self.store.steps(study_id)

    @overload
    def export(
        self, study_id: str, include_model: bool = False, format: Literal["json"] = "json"
    ) -> dict[str, Any]: ...

    @overload
    def export(
        self, study_id: str, include_model: bool = False, *, format: Literal["csv"]
    ) -> str: ...

    @_redis_errors
    def export(
        self, study_id: str, include_model: bool = False, format: str = "json"
    ) -> dict[str, Any] | str:
        """Everything about a study as JSON-ready data: spec, status, trials, results, the
        trials' curves ({index: [[step, values], ...]}); or
        with format="csv", its trials as CSV text, one row per trial (as dataframe())."""
        if format == "csv":
            study = self.get(study_id)
            rows = tables.trial_rows(study.spec, self.store.trials(study_id))
            return tables.csv_text(study.spec, rows)
        if format != "json":
            raise ValidationError(f"format must be 'json' or 'csv', not {shown(format)}")
        state = self.store.load(study_id)
        data: dict[str, Any] = {
            "study": state.study.model_dump(mode="json"),
            "trials": [t.model_dump(mode="json") for t in state.trials],
            "curves": {str(index): [[step, plain(values)] for step, values in curve]
                       for index, curve in state.curves.items()},
        }
        if include_model:
            data["model"] = state.model_json()
        return data

    @_redis_errors
    def dataframe(self, study_id: str) -> pandas.DataFrame:
        """The trials as a pandas DataFrame, one row per trial: trial, status, batch,
        generator, worker, times, error, then params_<name>, values_<metric> and, for
        metrics reported with one, sem_<metric>. pandas is imported only here."""
        import pandas

        study = self.get(study_id)
        rows = tables.trial_rows(study.spec, self.store.trials(study_id))
        return pandas.DataFrame(rows, columns=tables.columns(study.spec, rows))

    # -- ask / tell ---------------------------------------------------------------------

    @_redis_errors
    def suggest(
        self, study_id: str, count: int = 1, timeout: float | None = 300
    ) -> builtins.list[Trial]:
        """`count` new trials to evaluate, generated by Ax on a worker. Report each with
        report() (or report_failure()) before its lease runs out."""
        step = self._drive(self.asking(study_id, count, timeout))
        indices = answer(TaskHandle(self.bq, step), timeout)
        return self._drive(self.store.trials_reading(study_id, indices))

    def asking(self, study_id: str, count: int, timeout: float | None) -> Steps[str]:
        """The first half of `suggest` as steps: the step that generates `count` trials
        is submitted, its task id returned; its answer (`answer`) is their indices."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValidationError(
                f"count must be a whole number of at least 1, not {shown(count)}"
            )
        _check_timeout(timeout)
        study = yield from self.store.studying(study_id)
        if study.status.terminal:
            raise InvalidTransitionError(f"study {study_id} has ended ({study.status})")
        if study.status is StudyStatus.PAUSED:
            raise StudyError(f"study {study_id} is paused; resume() it first")
        return (yield from self._stepping(study_id, {"suggest": count}))

    @_redis_errors
    def add_design_points(
        self, study_id: str, points: Iterable[Mapping[str, Any]], timeout: float | None = 300
    ) -> builtins.list[Trial]:
        """Trials at points you choose (validated against the space), to report like any."""
        _check_timeout(timeout)
        study = self.get(study_id)
        if study.status.terminal:  # as suggest: a conflict, not a step that fails
            raise InvalidTransitionError(f"study {study_id} has ended ({study.status})")
        checked = [study.spec.check_params(p) for p in _listed(points, "points")]
        step = self._drive(self._stepping(study_id, {"attach": checked}))
        indices = answer(TaskHandle(self.bq, step), timeout)
        return self._drive(self.store.trials_reading(study_id, indices))

    @_redis_errors
    def report(
        self, study_id: str, index: int, values: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a trial's result, with `metadata` (a JSON object: where and how it was
        measured) kept on the trial with the time it was reported. Idempotent: the same
        values and metadata again change nothing (and return False); a different result
        for a trial that has one raises."""
        return self._drive(self.reporting(study_id, index, values, metadata))

    def reporting(
        self, study_id: str, index: int, values: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> Steps[bool]:
        """`report` as steps."""
        index = _index(index)
        study = yield from self.store.studying(study_id)
        checked = study.spec.check_values(values)
        entry: dict[str, Any] = {"index": index, "values": checked, "at": time.time()}
        if metadata is not None:
            entry["metadata"] = _metadata(metadata, "result metadata")
        marker = result_marker(checked, entry.get("metadata"))
        return (yield from self._telling(study, index, entry, marker))

    @_redis_errors
    def report_failure(self, study_id: str, index: int, reason: str = "") -> bool:
        """Record that a trial could not be evaluated; the study goes on without it."""
        return self._drive(self.reporting_failure(study_id, index, reason))

    def reporting_failure(self, study_id: str, index: int, reason: str = "") -> Steps[bool]:
        """`report_failure` as steps."""
        index = _index(index)
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise ValidationError(f"reason must be a string of at most {MAX_REASON} characters")
        study = yield from self.store.studying(study_id)
        entry = {"index": index, "error": reason or "reported failed", "at": time.time()}
        return (yield from self._telling(study, index, entry,
                                         canonical({"failed": entry["error"]})))

    @_redis_errors
    def add_results(
        self, study_id: str,
        results: Iterable[tuple[int, Mapping[str, Any]] | tuple[int, Mapping[str, Any], Any]],
    ) -> int:
        """Report many trials' results, as (index, values) or (index, values, metadata);
        returns how many were new. Every one is checked (its index names a trial, its
        values fit the study, its metadata is a JSON object) before any is reported."""
        study = self.get(study_id)
        checked = []
        for result in _listed(results, "results"):
            if not isinstance(result, tuple | list) or len(result) not in (2, 3):
                raise ValidationError(
                    "results are (index, values) pairs or (index, values, metadata) "
                    f"triples, not {shown(result)}"
                )
            index, values, *extra = result
            metadata = extra[0] if extra and extra[0] is not None else None
            checked.append((
                _index(index), study.spec.check_values(values),
                None if metadata is None else _metadata(metadata, "result metadata"),
            ))
        for index, _, _ in checked:
            self.store.trial(study_id, index)  # TrialNotFoundError
        return sum(self.report(study_id, *result) for result in checked)

    @_redis_errors
    def report_intermediate(
        self, study_id: str, trial_index: int, step: int, values: Mapping[str, Any]
    ) -> bool:
        """Record a running trial's values at `step` (an epoch, a number of samples: steps
        only go forward) and return True when its study's early-stopping rules say it
        should stop now. The decision is made here, from the curves reported so far; a
        stopped trial ends EARLY_STOPPED with these values, and its evaluation task (in a
        closed loop) is cancelled. The same step with the same values again is a no-op
        that answers as before."""
        return self._drive(self.reporting_intermediate(study_id, trial_index, step, values))

    def reporting_intermediate(
        self, study_id: str, trial_index: int, step: int, values: Mapping[str, Any]
    ) -> Steps[bool]:
        """`report_intermediate` as steps."""
        index, step = _index(trial_index), _step_number(step)
        study = yield from self.store.studying(study_id)
        if study.status.terminal:
            raise InvalidTransitionError(f"study {study_id} has ended ({study.status})")
        given = study.spec.check_values(values)
        checked = plain(given)
        objective = study.spec.stopping_objective
        rules = study.spec.strategy.early_stopping
        rule = ["1" if objective.minimize else "0", "", "", "0", "1"]
        if rules is not None:
            rule[1:] = [
                "" if rules.percentile is None else repr(rules.percentile),
                "" if rules.threshold is None else repr(rules.threshold),
                str(rules.min_progression), str(rules.min_curves),
            ]
        entry = {"index": index, "early_stopped": True, "step": step, "values": checked,
                 "at": time.time()}
        watched = mean(given[objective.name])
        outcome = yield from self.store.reporting_intermediate(
            study_id, index, step, checked, watched, rule, entry
        )
        if outcome in ("missing", "ended", "stop"):  # TrialNotFoundError when missing
            [trial] = yield from self.store.trials_reading(study_id, [index])
        if outcome == "ended":
            status = trial.status  # RUNNING: told, not yet stepped
            shown_status = "" if status is TrialStatus.RUNNING else f" ({status})"
            raise ValidationError(
                f"trial {index} has ended{shown_status}: it takes no more intermediate values"
            )
        if outcome == "conflict":
            raise ValidationError(f"trial {index} already has other values at step {step}")
        if outcome.startswith("backwards="):
            raise ValidationError(
                f"step {step} goes backwards: trial {index} is at step {outcome[10:]}"
            )
        if outcome == "stop":
            task_id = trial.task_id
            if task_id is not None:
                record = self.bq.keys.task(task_id)
                [exists] = yield Pipe.READ, lambda pipe: pipe.exists(record)
                if exists:
                    yield from self.bq.cancelling(task_id, reason=f"early stopped at step {step}")
            yield from self._stepping(study_id, {})
        return outcome in ("stop", "stopped")

    @_redis_errors
    def intermediate(
        self, study_id: str, trial_index: int
    ) -> builtins.list[tuple[int, dict[str, Outcome]]]:
        """A trial's curve: the (step, values) pairs report_intermediate recorded, oldest
        first."""
        index = _index(trial_index)
        self.store.trial(study_id, index)  # StudyNotFoundError or TrialNotFoundError
        return self.store.curve(study_id, index)

    def _telling(self, study: Study, index: int, entry: dict[str, Any], marker: str
                 ) -> Steps[bool]:
        study_id = study.id
        if study.status.terminal:
            reported = self.store.reported_key(study_id)
            [registered] = yield Pipe.READ, lambda pipe: pipe.hget(reported, str(index))
            if registered == marker:
                return False  # a repeat of a result it had: still a no-op
            raise InvalidTransitionError(f"study {study_id} has ended; it takes no more results")
        outcome = yield from self.store.reporting(study_id, index, entry, marker)
        if outcome.startswith("closed:"):
            [trial] = yield from self.store.trials_reading(study_id, [index])
            raise StudyError(f"trial {index} is {trial.status}: {trial.error or 'closed'}")
        if outcome == "new" and study.mode == "closed_loop":
            yield from self._stepping(study_id, {})
        elif outcome == "new":
            # ask/tell: the producer's next suggest() usually follows at once, and its step
            # tells Ax this result itself; this step, a moment later, only tells what no
            # step has yet (a suggest's step no longer waits behind one that just tells)
            yield from self._stepping(study_id, {"told": index}, countdown=TELL_AFTER_S)
        return outcome == "new"

    # -- closed loop and lifecycle ------------------------------------------------------

    @_redis_errors
    def run(self, study_id: str) -> Study:
        """Start (or resume) the closed loop: workers evaluate trials with the study's
        evaluator, `parallelism` at a time, until `max_trials` have completed."""
        study = self.get(study_id)
        if study.spec.evaluator is None:
            raise ValidationError(f"study {study_id} has no evaluator; use suggest/report")
        if study.status.terminal:
            raise InvalidTransitionError(f"study {study_id} has ended ({study.status})")
        self.store.redis.hset(self.store.meta(study_id), "mode", "closed_loop")
        if study.status is StudyStatus.PAUSED:
            self._move(study_id, StudyStatus.ACTIVE)
        self._step(study_id, {})
        return self.get(study_id)

    @_redis_errors
    def pause(self, study_id: str) -> Study:
        """No new trials; those running finish and are recorded."""
        return self._move(study_id, StudyStatus.PAUSED)

    @_redis_errors
    def resume(self, study_id: str) -> Study:
        study = self._move(study_id, StudyStatus.ACTIVE)
        self._step(study_id, {})
        return study

    @_redis_errors
    def complete(self, study_id: str, message: str = "completed by request") -> Study:
        study = self._move(study_id, StudyStatus.COMPLETED, message)
        self.bq.cancel_tag(STUDY_TAG.format(study_id))
        return study

    @_redis_errors
    def fail(self, study_id: str, reason: str) -> Study:
        study = self._move(study_id, StudyStatus.FAILED, reason)
        self.bq.cancel_tag(STUDY_TAG.format(study_id))
        return study

    @_redis_errors
    def update_status(self, study_id: str, status: StudyStatus | str, message: str = "") -> Study:
        return self._move(study_id, _status(status), message)

    def _move(self, study_id: str, to: StudyStatus, message: str = "") -> Study:
        current = self.get(study_id).status
        current.check_transition(to)
        allowed = {s for s, targets in TRANSITIONS.items() if to in targets}
        after = self.store.set_status(study_id, to, allowed, message)
        if after is not to:
            after.check_transition(to)  # it changed under us; say why it cannot move now
        return self.get(study_id)

    @_redis_errors
    def wait(self, study_id: str, timeout: float = 600, poll_s: float = 0.25) -> Study:
        """Block until the study is COMPLETED or FAILED."""
        deadline = time.monotonic() + timeout
        while not ended(study := self.get(study_id), deadline, timeout):
            time.sleep(poll_s)
        return study

    @_redis_errors
    def delete(self, study_id: str) -> bool:
        if not valid_id(study_id):
            return False  # no study can have it
        self.bq.cancel_tag(STUDY_TAG.format(study_id))
        return self.store.delete(study_id)

    # -- other backends -----------------------------------------------------------------

    @_redis_errors
    def persist(self, study_id: str, backend: StorageBackend) -> None:
        """Copy a study's whole state (spec, trials, model) to another backend."""
        backend.save(self.store.load(study_id))

    @_redis_errors
    def load(self, study_id: str, backend: StorageBackend) -> Study:
        """Bring a study back from another backend, to inspect or continue it here."""
        state: StudyState = backend.load(study_id)
        self.store.save(state)
        return self.get(study_id)

    def _drive(self, steps: Steps[T]) -> T:
        return self.bq.run_steps(steps)

    def _step(self, study_id: str, request: dict[str, Any]) -> TaskHandle:
        return TaskHandle(self.bq, self._drive(self._stepping(study_id, request)))

    def _stepping(self, study_id: str, request: dict[str, Any], countdown: float | None = None
                  ) -> Steps[str]:
        """A study step submitted (on the `bo` queue), as steps: its task id."""
        return self.bq.submitting_one(request_of(
            STEP, {"study_id": study_id, **request}, queue="bo", countdown=countdown))


def answer(step: TaskHandle, timeout: float | None) -> builtins.list[int]:
    """The indices of the trials a step generated or attached, once it has; its failure
    is a StudyError here."""
    try:
        indices: builtins.list[int] = step.get(timeout=timeout)
    except TaskFailedError as exc:
        raise step_failed(exc) from exc
    return indices


def ended(study: Study, deadline: float, timeout: float) -> bool:
    """Whether `wait` is over: the study has ended (True), or StudyTimeoutError once the
    monotonic clock passes `deadline`."""
    if study.status.terminal:
        return True
    if time.monotonic() > deadline:
        raise StudyTimeoutError(
            f"study {study.id} still {study.status} after {timeout} s "
            f"({study.completed_trials}/{study.spec.strategy.max_trials} trials)"
        )
    return False


def step_failed(exc: TaskFailedError) -> StudyError:
    return StudyError(f"the study step failed: {exc.remote_message}")


def parse_spec(spec: Any) -> StudySpec:
    """A StudySpec, or one from its fields (a mapping, as JSON gives it): ValidationError
    for anything else, never a TypeError."""
    if isinstance(spec, StudySpec):
        return spec
    return StudySpec(**_fields(spec, "a study spec"))


def _described(description: Any, metadata: Any) -> tuple[str, dict[str, Any]]:
    """A study's description and metadata, checked: text, and a JSON object."""
    if (not isinstance(description, str) or len(description) > MAX_DESCRIPTION
            or not encodable(description)):
        raise ValidationError(
            f"description must be text of at most {MAX_DESCRIPTION} characters, "
            f"not {shown(description)}"
        )
    return description, {} if metadata is None else _metadata(metadata, "metadata")


def _metadata(metadata: Any, what: str) -> dict[str, Any]:
    """The owner's JSON object, at most MAX_METADATA bytes: ValidationError otherwise."""
    fields = _fields(metadata, what)
    check_json(fields, what, limit=MAX_METADATA)
    if not all_text_encodable(fields):
        raise ValidationError(f"{what} has text that is not UTF-8 (a lone surrogate)")
    return fields


def _fields(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{what} must be a mapping of fields, not {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise ValidationError(f"{what} has a field name that is not a string")
    return dict(data)


def _listed(values: Any, what: str = "") -> Any:
    """A list of `values` if it is a collection; anything else as it is, for pydantic (or
    `what`) to say what is wrong with it."""
    if isinstance(values, Iterable) and not isinstance(values, str | bytes | Mapping):
        return list(values)
    if what:
        raise ValidationError(f"{what} must be a list, not {type(values).__name__}")
    return values


def _index(index: Any) -> int:
    """A trial index: an int ("0" or 0.0 would be stored as another index than 0) that
    can be one (a 5,000-digit int has no str() to be a Redis field name)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**63:
        raise ValidationError(f"a trial index is an integer >= 0, not {shown(index)}")
    return index


def _step_number(step: Any) -> int:
    """A progression: a whole number >= 0 that JSON and Lua's doubles hold exactly."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**53:
        raise ValidationError(f"a step is an integer >= 0, not {shown(step)}")
    return step


def _check_timeout(timeout: Any) -> None:
    if timeout is None:  # wait as long as it takes, as TaskHandle.get(None)
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e9:
        raise ValidationError(
            f"timeout must be a positive number of seconds, not {shown(timeout)}"
        )


def _seeded(strategy: Strategy) -> Strategy:
    """A strategy with a seed: a random one, stored, if none was given."""
    if strategy.seed is not None:
        return strategy
    return Strategy(**{**strategy.model_dump(), "seed": random.randrange(2**31)})


def _status(value: StudyStatus | str) -> StudyStatus:
    try:
        return StudyStatus(value)
    except ValueError:
        names = ", ".join(StudyStatus)
        raise ValidationError(
            f"unknown study status {shown(value)}; use one of {names}"
        ) from None
