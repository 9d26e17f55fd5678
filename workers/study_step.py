"""The study step, on the workers: how a study advances.

`bo_queue.study.step` (queue `bo`) is the only writer of a study's Ax model: under the
study's Redis lock it drains reported results into Ax, fails trials whose lease ran out,
completes the study at `max_trials`, generates new trials (for suggest(), or up to
`parallelism` in a closed loop), saves, and then sends the closed loop's evaluations.

An evaluation is an ordinary handler call whose message the step marks with the
`bo_study` header (study id and trial index; it stays with the message through held
sends, the outbox and retries). When a marked task ends for good (after its retries),
`_evaluation_finished` puts its outcome in that study's inbox and asks for a step. A task
without the header reports nowhere, whatever its payload holds.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bo_queue.client import BOQueue, TaskRequest
from bo_queue.context import TaskContext
from bo_queue.core.message import evaluation_of
from bo_queue.errors import InvalidResultError, StudyError, StudyNotFoundError, ValidationError
from bo_queue.registry import handler
from bo_queue.retry import RetryPolicy
from bo_queue.studies.manager import STEP, STUDY_TAG
from bo_queue.studies.models import (
    WARM_START,
    Curve,
    Strategy,
    Study,
    StudyStatus,
    Trial,
    TrialStatus,
    outcomes,
)
from bo_queue.studies.storage import RedisStorage
from workers.runner import HandlerTask, describe, finish_listeners
from workers.study_lock import LockLost, StudyLock, lease_for

if TYPE_CHECKING:
    from bo_queue.studies.engine import Engine

log = logging.getLogger(__name__)

# An engine kept in this process between steps of the same study, valid while the study's
# iteration has not moved on elsewhere (saves decoding the Ax snapshot every step).
_engines: dict[str, tuple[int, Engine]] = {}
# Studies whose snapshot this process takes after its step's reply (write_snapshots), by
# the iteration its engine is at: a snapshot is a checkpoint, not the log.
_snapshots_due: dict[str, int] = {}

SNAPSHOT_EVERY = 8  # trials between snapshots of the Ax state (see Stepper.run)


class StudyBusy(Exception):
    """Another step holds the study's lock; this one tries again shortly."""


def lock_hold_s(generation_time_limit_s: float) -> float:
    """How long a step may hold a study between generations: generation is time-boxed,
    the rest is quick."""
    return generation_time_limit_s * 1.5 + 15


# A step that finds the study busy retries with backoff until it gets in: if the holder
# died, its lock lapses within its lease (study_lock.lease_for) and one of these steps
# carries on.
BUSY = RetryPolicy(max_retries=10_000, backoff=0.5, backoff_max=5.0, jitter=True, on=(StudyBusy,))


def write_snapshots(ctx: TaskContext, made: Any) -> None:
    """After a step's result is stored (a suggest() has its trials), and outside the
    study's lock: the snapshots its steps were due, encoded (about half a generation) and
    written unless a later one is there (RedisStorage.save_snapshot)."""
    store = ctx.bq.studies.store
    for study_id, due in list(_snapshots_due.items()):
        del _snapshots_due[study_id]
        kept = _engines.get(study_id)  # none after a failed step: nothing to take
        if kept is not None and kept[0] >= due:
            store.save_snapshot(study_id, kept[0], kept[1].snapshot())


@handler(STEP, queue="bo", retry=BUSY, on_success=write_snapshots)
def step(payload: dict[str, Any], ctx: TaskContext) -> list[int]:
    bq, study_id = ctx.bq, str(payload["study_id"])
    store = bq.studies.store
    strategy = store.study(study_id).spec.strategy
    hold_s = lock_hold_s(strategy.generation_time_limit_s)
    lock = StudyLock(bq.redis, store.lock_key(study_id), hold_s,
                     lease_for(bq.settings.worker_outage_s))
    pending = store.lock_key(study_id) + ":pending"
    asked = "suggest" in payload or "attach" in payload
    request = payload
    def keep_lock() -> None:
        try:
            lock.keep()
        except LockLost as exc:  # another step may have the study
            raise StudyBusy(f"study {study_id}: the step lost its lock") from exc

    def told() -> bool:
        """An ask/tell report's step whose result a step since told Ax (a suggest's,
        usually): the inbox is emptied only by the step that applied it."""
        return "told" in request and store.inbox_size(study_id) == 0

    while True:
        waited = time.perf_counter()
        if told():
            return []
        if asked:
            if not lock.acquire(blocking=True):
                raise StudyError(f"study {study_id} is busy: no step in {hold_s} s")
        elif not lock.acquire(blocking=False):
            if told():  # told while this step waited for its turn
                return []
            # Another step holds the study. Leave a note it reads after releasing, then try
            # once more in case it released before the note was there.
            bq.redis.set(pending, 1, ex=int(hold_s))
            if not lock.acquire(blocking=False):
                raise StudyBusy(f"study {study_id} is busy")
        try:
            made = Stepper(bq, store, study_id, lock.fence).run(
                request, keep_lock, lock_s=time.perf_counter() - waited
            )
        finally:
            lock.release()
        if asked:
            return made
        if not bq.redis.getdel(pending) and store.inbox_size(study_id) == 0:
            return made
        request = {"study_id": study_id}  # results or requests arrived meanwhile


class Stepper:
    """One step of one study, run under its lock."""

    def __init__(self, bq: BOQueue, store: RedisStorage, study_id: str,
                 fence: tuple[str, str] | None = None) -> None:
        self.bq, self.store, self.study_id = bq, store, study_id
        self.fence = fence  # the study lock its saves check (StudyLock.fence)

    def run(self, request: dict[str, Any], keep_lock: Callable[[], None] = lambda: None,
            lock_s: float = 0.0) -> list[int]:
        """A closed loop generates one trial at a time: each is saved and sent as soon as
        it exists, then the results that arrived meanwhile are told to Ax before the next
        (Ax conditions each on the running trials, its pending points). `keep_lock`
        renews the study's lock between generations."""
        # A step changes its engine in place before saving: if it fails on the way, that
        # engine must not serve the next step, so it goes back in the cache only after.
        self.kept = _engines.pop(self.study_id, None)
        started = time.perf_counter()
        self.generation_s = 0.0
        state = self.store.load(self.study_id)
        study, now = state.study, datetime.now(UTC)
        if study.status.terminal:
            # Results that arrive after the end are dropped: nothing will tell Ax again.
            self._write(study, [], None, self.store.inbox_size(self.study_id))
            if "suggest" in request or "attach" in request:
                raise StudyError(f"study {self.study_id} has ended ({study.status})")
            return []
        strategy = study.spec.strategy
        fresh = state.model is None
        if study.status is StudyStatus.CREATED:
            self.store.set_status(self.study_id, StudyStatus.INITIALIZING, {StudyStatus.CREATED})
        engine = self._engine(study, state.model, state.trials, state.curves)
        trials = {t.index: t for t in state.trials}
        before = len(trials)
        last = trials[max(trials)].generator if trials else ""
        changed: dict[int, Trial] = {}
        if fresh and study.warm_start_from:
            for known in self._warm_start(engine, study, now):
                trials[known.index] = changed[known.index] = known
        drained = self._tell(engine, trials, changed, now)
        told = drained
        for trial in list(trials.values()):
            expired = trial.leased_until is not None and trial.leased_until < now
            if trial.status is TrialStatus.RUNNING and expired:
                reason = f"lease of {strategy.trial_lease_s:g} s expired"
                engine.fail(trial.index, reason)
                trials[trial.index] = changed[trial.index] = trial.model_copy(
                    update={"status": TrialStatus.FAILED, "error": reason, "finished_at": now}
                )
                if trial.task_id and self.bq.records.exists(trial.task_id):
                    self.bq.cancel(trial.task_id, terminate=True, reason=reason)

        closed = study.mode == "closed_loop" and "suggest" not in request
        one_by_one = closed and "attach" not in request
        # Trials saved by a step that died before sending their evaluations have no task
        # record: send them now rather than wait for their lease to run out.
        ready = self.store.ready(self.study_id) if one_by_one else []
        unsent = [
            t for t in trials.values()
            if closed and t.status is TrialStatus.RUNNING and t.task_id
            and t.index not in ready and not self.bq.records.exists(str(t.task_id))
        ]
        # A trial generated ahead whose slot is free already (its study was paused, say)
        # goes with the unsent ones.
        while ready and (_counts(trials.values())[TrialStatus.RUNNING] - len(ready)
                         < strategy.parallelism):
            index = self.store.take_ready(self.study_id)
            if index is None or index not in ready:
                break
            ready.remove(index)
            if trials[index].status is TrialStatus.RUNNING:
                unsent.append(trials[index])
        made: list[Trial] = []
        touched = fresh
        while True:
            counts = _counts(trials.values())
            ending = _ending(counts, strategy)
            made_at = datetime.now(UTC)  # each trial's own: _ahead reads it
            new = [] if ending else self._new_trials(
                engine, study, request, counts, made_at, 1 if one_by_one else None, len(ready)
            )
            ahead = not new and one_by_one and not ending and not ready and _ahead(trials, engine)
            if ahead:
                new = self._new_trials(engine, study, request, counts, made_at, 1, -1)
            for trial in new:
                trials[trial.index] = changed[trial.index] = trial
            made += new
            if not (one_by_one and new):
                break
            study = self._save(study, trials, changed, None, drained, touched)
            changed, drained, touched = {}, 0, False
            if ahead:  # saved: the next evaluation to end sends it (_evaluation_finished)
                self.store.push_ready(self.study_id, new[0].index)
                self._evaluate(study, unsent)
                break
            self._evaluate(study, unsent + new)  # saved first: a step killed here loses none
            unsent = []
            keep_lock()
            drained = self._tell(engine, trials, changed, datetime.now(UTC))
            told += drained

        # The trial records are the log, the snapshot a checkpoint (decoding and encoding
        # Ax's state costs about half a generation): written when the study starts, when
        # Ax moves to another generation node, and every SNAPSHOT_EVERY trials; a process
        # without this engine in memory replays the records since onto the last one.
        # Only the first is written here, under the lock: a process with no engine takes
        # a study without one as new. The others are taken after the step's reply
        # (write_snapshots), off the suggest()'s path and the lock's.
        crossed = len(trials) // SNAPSHOT_EVERY != before // SNAPSHOT_EVERY
        moved = any(t.generator != last for t in made)
        snapshot = fresh or (bool(made) and (crossed or moved))
        model = engine.snapshot() if fresh else None
        updated = self._save(study, trials, changed, model, drained, touched or bool(changed))
        _engines[self.study_id] = (updated.iteration, engine)
        if snapshot and not fresh:
            _snapshots_due[self.study_id] = updated.iteration
        if study.status in (StudyStatus.CREATED, StudyStatus.INITIALIZING):
            self.store.set_status(self.study_id, StudyStatus.ACTIVE, {StudyStatus.INITIALIZING})
        if ending is not None:
            status, message = ending
            self.store.set_status(
                self.study_id, status, {StudyStatus.ACTIVE, StudyStatus.PAUSED}, message
            )
            self.bq.cancel_tag(STUDY_TAG.format(self.study_id))
        elif closed and not one_by_one and (made or unsent):
            self._evaluate(study, made + unsent)
        elif closed and unsent:
            self._evaluate(study, unsent)
        self.store.record_step(
            self.study_id,
            {
                "iteration": updated.iteration,
                "at": time.time(),
                "made": len(made),
                "told": told,
                "generation_s": round(self.generation_s, 4),
                "total_s": round(time.perf_counter() - started, 4),  # with the sends
                "lock_s": round(lock_s, 4),
                "cached": self.cached,  # this process's engine (caught up or not)
                "caught_up": self.caught_up,
                "snapshot": snapshot,
            },
        )
        return [t.index for t in made]

    def _tell(self, engine: Engine, trials: dict[int, Trial], changed: dict[int, Trial],
              now: datetime) -> int:
        """Tell Ax the results in the inbox; returns how many entries it read."""
        entries = self.store.inbox(self.study_id)
        curves = self.store.curves(self.study_id) if entries else {}  # read after the inbox
        for entry in entries:
            curve = curves.get(entry["index"], [])
            trial = self._apply(engine, trials.get(entry["index"]), entry, curve, now)
            if trial is not None:
                trials[trial.index] = changed[trial.index] = trial
        return len(entries)

    def _save(self, study: Study, trials: dict[int, Trial], changed: dict[int, Trial],
              model: bytes | None, drained: int, touched: bool) -> Study:
        """The changed trial records, the study's counts and the applied inbox entries,
        in one transaction; the next iteration if anything changed."""
        counts = _counts(trials.values())
        updated = study.model_copy(
            update={
                "completed_trials": counts[TrialStatus.COMPLETED],
                "failed_trials": counts[TrialStatus.FAILED],
                "running_trials": counts[TrialStatus.RUNNING],
                "early_stopped_trials": counts[TrialStatus.EARLY_STOPPED],
                "iteration": study.iteration + (1 if touched or changed else 0),
                "updated_at": datetime.now(UTC),
            }
        )
        self._write(updated, list(changed.values()), model, drained)
        return updated

    def _write(self, study: Study, changed: list[Trial], model: bytes | None,
               drained: int) -> None:
        """save_step, fenced: a step whose lock lapsed writes nothing and goes again
        (StudyBusy), so a stalled step cannot undo what the step after it saved."""
        if not self.store.save_step(study, changed, model, drained, self.fence):
            raise StudyBusy(f"study {self.study_id}: the step's lock lapsed before it saved")

    def _engine(
        self, study: Study, model: bytes | None, trials: list[Trial], curves: dict[int, Curve]
    ) -> Engine:
        from bo_queue.studies.engine import Engine  # Ax, torch: only where a step runs

        kept, self.cached, self.caught_up = self.kept, False, False
        if model is None:
            return Engine.create(study.spec)
        if kept is not None and kept[0] == study.iteration:
            self.cached = True
            return kept[1]
        if kept is not None and kept[0] < study.iteration:
            # Steps elsewhere moved the study on since this process's engine: replay their
            # trial records onto it (Engine.catch_up, as onto an older snapshot), which
            # costs far less than decoding the snapshot when steps alternate between
            # processes. (An engine ahead of the records, after a failover lost writes,
            # is not used.)
            engine = kept[1]
            self.cached = self.caught_up = True
        else:
            engine = Engine.load(study.spec, model)
        engine.catch_up(trials, curves)
        return engine

    def _warm_start(self, engine: Engine, study: Study, now: datetime) -> list[Trial]:
        """The completed trials of the study's sources that lie in its space, told to Ax
        before its first generation."""
        spec, found = study.spec, []
        for source in study.warm_start_from:
            try:
                old = self.store.trials(source)
            except StudyNotFoundError:
                log.warning("study %s: warm-start source %s is gone", study.id, source)
                continue
            for trial in old:
                if trial.status is not TrialStatus.COMPLETED or trial.values is None:
                    continue
                values = {m: trial.values[m] for m in spec.metric_names if m in trial.values}
                try:
                    params = spec.check_params(trial.params)
                except ValidationError:
                    continue  # outside the new space
                if len(values) == len(spec.metric_names):
                    found.append((params, values))
        indices = engine.warm_start(found)
        log.info("study %s: %d warm-start trial(s) attached", study.id, len(indices))
        return [
            Trial(index=index, params=params, status=TrialStatus.COMPLETED, values=values,
                  generator=WARM_START, created_at=now, finished_at=now)
            for index, (params, values) in zip(indices, found, strict=True)
        ]

    def _apply(
        self, engine: Engine, trial: Trial | None, entry: dict[str, Any], curve: Curve,
        now: datetime,
    ) -> Trial | None:
        """Tell Ax one reported outcome, with the trial's curve as progressions; None when
        it no longer applies (late, stale: what an evaluation returns after its trial was
        early stopped)."""
        if trial is None or trial.status is not TrialStatus.RUNNING:
            return None
        if entry.get("task_id") and trial.task_id and entry["task_id"] != trial.task_id:
            return None  # an evaluation this trial no longer waits for
        update: dict[str, Any] = {"finished_at": now, "worker": entry.get("worker")}
        if "at" in entry:
            update["reported_at"] = datetime.fromtimestamp(entry["at"], UTC)
        if "metadata" in entry:
            update["result_metadata"] = entry["metadata"]
        if entry.get("early_stopped"):
            values = outcomes(entry["values"])
            engine.early_stop(trial.index, curve)
            update.update(status=TrialStatus.EARLY_STOPPED, values=values)
        elif "values" in entry:
            values = outcomes(entry["values"])
            engine.complete(trial.index, values, curve)
            update.update(status=TrialStatus.COMPLETED, values=values)
        else:
            engine.fail(trial.index, str(entry.get("error")))
            update.update(status=TrialStatus.FAILED, error=str(entry.get("error")))
        return trial.model_copy(update=update)

    def _new_trials(
        self,
        engine: Engine,
        study: Study,
        request: dict[str, Any],
        counts: dict[TrialStatus, int],
        now: datetime,
        limit: int | None = None,
        held: int = 0,
    ) -> list[Trial]:
        """`held`: running trials waiting for a slot (generated ahead), which hold none;
        -1: generate one ahead, if there is room."""
        strategy = study.spec.strategy
        lease = now + timedelta(seconds=strategy.trial_lease_s)
        batch = study.iteration + 1
        made = [(engine.attach(p), p, "manual") for p in request.get("attach", [])]
        room = strategy.max_trials - _finished(counts) - counts[TrialStatus.RUNNING]
        want = 0
        if "suggest" in request:
            if study.status is StudyStatus.PAUSED:
                raise StudyError(f"study {self.study_id} is paused")
            want = min(int(request["suggest"]), room)
        elif study.mode == "closed_loop" and study.status is not StudyStatus.PAUSED:
            free = 1 if held < 0 else strategy.parallelism - counts[TrialStatus.RUNNING] + held
            want = min(free, room)
        if limit is not None:
            want = min(want, limit)
        if want > 0:
            generating = time.perf_counter()
            made += engine.generate(
                want, strategy.generation_time_limit_s, fallback_seed=(strategy.seed or 0) + batch
            )
            engine.last_generation_s = time.perf_counter() - generating
            self.generation_s += engine.last_generation_s
        closed = study.mode == "closed_loop" and "suggest" not in request
        return [
            Trial(
                index=index,
                params=params,
                batch=batch,
                generator=generator,
                task_id=str(uuid.uuid4()) if closed else None,
                created_at=now,
                leased_until=lease,
            )
            for index, params, generator in made
        ]

    def _evaluate(self, study: Study, trials: list[Trial]) -> None:
        if trials:
            send_evaluations(self.bq, study, trials)


def send_evaluations(bq: BOQueue, study: Study, trials: list[Trial]) -> None:
    evaluator = study.spec.evaluator
    assert evaluator is not None
    plans = [
        bq.check(
            TaskRequest(
                handler=evaluator,
                tags=(STUDY_TAG.format(study.id),),
                # what the dashboard, Flower and tasks(metadata=) show of it
                name=f"trial {t.index}", description=f"study {study.name}",
                metadata={"study_id": study.id, "trial_index": t.index},
                payload={
                    "study_id": study.id,
                    "trial_index": t.index,
                    "params": t.params,
                    "options": study.spec.evaluator_options,
                },
            ),
            task_id=t.task_id,
            study=evaluation_marker(study.id, t.index),
        )
        for t in trials
    ]
    bq.submit_plans(plans, durable=True)  # a step killed mid-send loses no evaluation


def _ahead(trials: dict[int, Trial], engine: Engine) -> bool:
    """Generate the next trial before a slot frees when evaluations take longer than a
    generation: a freed slot then waits for no model. (With quick evaluations it would
    only cost quality: that trial would not see the result that freed its slot.)"""
    generation_s = engine.last_generation_s
    recent = [t for t in sorted(trials.values(), key=lambda t: t.index)
              if t.status is TrialStatus.COMPLETED and t.task_id and t.reported_at][-5:]
    # from the step that made it to its result, less its generation: about its evaluation
    spent = sorted((t.reported_at - t.created_at).total_seconds() - generation_s
                   for t in recent if t.reported_at)
    return bool(spent) and generation_s > 0 and spent[len(spent) // 2] > 2 * generation_s


def _counts(trials: Any) -> dict[TrialStatus, int]:
    """The study's own trials by status (warm-start ones are another study's results)."""
    counts = dict.fromkeys(TrialStatus, 0)
    for trial in trials:
        if trial.generator != WARM_START:
            counts[trial.status] += 1
    return counts


def _ending(counts: dict[TrialStatus, int], strategy: Strategy) -> tuple[StudyStatus, str] | None:
    """The status the study ends in now, with its message; None while it goes on."""
    if _finished(counts) >= strategy.max_trials:
        stopped = counts[TrialStatus.EARLY_STOPPED]
        return (StudyStatus.COMPLETED, f"{strategy.max_trials} trials completed"
                + (f" ({stopped} of them early stopped)" if stopped else ""))
    if counts[TrialStatus.FAILED] > strategy.failure_budget:
        return (
            StudyStatus.FAILED,
            f"{counts[TrialStatus.FAILED]} trials failed (budget {strategy.failure_budget})",
        )
    return None


def _finished(counts: dict[TrialStatus, int]) -> int:
    """Trials that ended with data: what max_trials counts."""
    return sum(n for status, n in counts.items() if status.finished)


def evaluation_marker(study_id: str, trial_index: int) -> dict[str, Any]:
    """What marks a task as the evaluation of a study's trial (the `bo_study` header)."""
    return {"study_id": study_id, "trial_index": trial_index}


def marked_trial(request: Any) -> tuple[str, int] | None:
    """(study id, trial index) of the evaluation a task's request is, from its `bo_study`
    header; None for a task the study step did not send."""
    return evaluation_of(getattr(request, "bo_study", None))


def _evaluation_finished(
    task: HandlerTask, payload: Any, result: Any, error: BaseException | None
) -> None:
    """An evaluation ended for good: its outcome goes to its study, which takes a step.
    Only a task marked as one reports (its payload's study_id and trial_index are for the
    evaluator to read, not a way in)."""
    marked = marked_trial(task.request)
    if task.name == STEP or marked is None:
        return
    study_id, index = marked
    store = task.bq.studies.store
    entry: dict[str, Any] = {
        "index": index,
        "task_id": task.request.id,
        "worker": task.request.hostname,
        "at": time.time(),
    }
    try:
        study = store.study(study_id)
    except StudyNotFoundError:
        return  # deleted meanwhile
    spec = study.spec
    if error is not None:
        entry["error"] = describe(error)
    elif not isinstance(result, dict):
        entry["error"] = f"evaluator {task.name!r} returned {type(result).__name__}, not a dict"
    else:
        try:
            entry["values"] = spec.check_values(result)
        except InvalidResultError as exc:
            entry["error"] = f"evaluator {task.name!r} returned bad values: {exc}"
    store.push_result(study_id, entry)
    # The trial generated ahead for this slot goes now, before the step (saved, RUNNING;
    # if this process dies before sending it, the next step sends it).
    ahead = store.take_ready(study_id)
    if ahead is not None:
        trial = store.trial(study_id, ahead)
        if study.status is StudyStatus.ACTIVE and trial.status is TrialStatus.RUNNING:
            send_evaluations(task.bq, study, [trial])
    task.bq.submit(STEP, {"study_id": study_id}, queue="bo")


finish_listeners.append(_evaluation_finished)
