"""A study step's save is fenced by its lock, on a real Redis with Ax: a step whose lock
lapsed (its process stalled past the lease, and another step took the study) writes
nothing and goes again, so it cannot undo what the step after it saved."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bo_queue import BOQueue, Objective, Range, Strategy
from bo_queue.studies.models import Study, Trial, TrialStatus
from tests.conftest import new_namespace
from workers.study_lock import StudyLock
from workers.study_step import Stepper, StudyBusy

# Ax calls its own deprecated methods (the step runs it in this process); pytest makes
# them errors.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LEASE_S = 3.0


@pytest.fixture
def bq(redis_url: str) -> Iterator[BOQueue]:
    queue = BOQueue(redis_url=redis_url, namespace=new_namespace())
    yield queue
    queue.close()


def ask_tell(bq: BOQueue) -> Study:
    return bq.studies.create("fenced", [Range("x", 0.0, 1.0)], [Objective("loss")],
                             Strategy(initial_trials=3, max_trials=3, seed=0))


def lock_of(bq: BOQueue, study: Study) -> StudyLock:
    return StudyLock(bq.redis, bq.studies.store.lock_key(study.id), hold_s=60, lease_s=LEASE_S)


def test_a_step_whose_lock_lapsed_saves_nothing_and_the_holder_carries_on(bq: BOQueue) -> None:
    study, store = ask_tell(bq), bq.studies.store
    stalled, holder = lock_of(bq, study), lock_of(bq, study)
    assert stalled.acquire(blocking=False)
    try:
        # what a stall past the lease leads to: the key lapses, another step takes it
        bq.redis.delete(stalled.key)
        assert holder.acquire(blocking=False)
        with pytest.raises(StudyBusy, match="lapsed before it saved"):
            Stepper(bq, store, study.id, stalled.fence).run(
                {"study_id": study.id, "suggest": 1})
        assert store.trials(study.id) == []
        assert store.study(study.id).iteration == study.iteration

        made = Stepper(bq, store, study.id, holder.fence).run(
            {"study_id": study.id, "suggest": 1})
        assert made == [0]
        [trial] = store.trials(study.id)
        assert trial.index == 0 and trial.status is TrialStatus.RUNNING
        assert store.study(study.id).iteration == study.iteration + 1
    finally:
        holder.release()
        stalled.release()


class Renewed(Trial):
    """A trial whose record, serialised inside the save's transaction (after its WATCH),
    renews the lock from another connection once, as the lock's renewing thread may."""

    renew: Any = None

    def model_dump_json(self, **kwargs: Any) -> str:
        if self.renew is not None:
            self.renew()
            object.__setattr__(self, "renew", None)
        return super().model_dump_json(**kwargs, exclude={"renew"})


def test_a_renewal_during_the_save_makes_it_look_again_not_fail(bq: BOQueue) -> None:
    study, store = ask_tell(bq), bq.studies.store
    lock = lock_of(bq, study)
    assert lock.acquire(blocking=False)
    renewals: list[int] = []

    def renew() -> None:
        renewals.append(1)
        assert bq.redis.pexpire(lock.key, int(LEASE_S * 1000))  # touches the watched key

    try:
        trial = Renewed(index=7, params={"x": 0.5}, status=TrialStatus.RUNNING,
                        created_at=datetime.now(UTC), renew=renew)
        assert store.save_step(study, [trial], None, 0, lock.fence)
        assert renewals == [1]  # the first EXEC was refused; the second wrote
        [saved] = store.trials(study.id)
        assert saved.index == 7 and saved.params == {"x": 0.5}
        # the fence is the token, not only the key: another holder's lock fails it
        bq.redis.set(lock.key, "another-token", px=int(LEASE_S * 1000))
        moved = study.model_copy(update={"completed_trials": 1})
        assert not store.save_step(moved, [], None, 0, lock.fence)
        assert store.study(study.id).completed_trials == 0
    finally:
        lock.release()
