"""The generation time box holds on every pool: a threads-pool worker runs study steps off
its main thread, where SIGALRM never arrives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bo_queue import BOQueue, Objective, Range, Strategy, StudyStatus
from tests.conftest import Cluster, new_namespace


@pytest.fixture(scope="module")
def threads_cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url, new_namespace(), queues=("default", "bo", "evaluate"))
    try:
        # the steps on a threads pool; evaluations (some have time limits only prefork
        # enforces) elsewhere
        c.start_workers({"concurrency": 2, "pool": "threads", "queues": ("bo",)},
                        {"concurrency": 1, "queues": ("default", "evaluate")})
    except BaseException:
        c.close()
        raise
    yield c
    c.close()


@pytest.mark.timeout(300)
def test_a_threads_pool_worker_falls_back_to_sobol_past_the_time_limit(
    threads_cluster: Cluster,
) -> None:
    bq: BOQueue = threads_cluster.producer()
    study = bq.studies.create(
        name="timebox-threads", parameters=[Range("x", 0.0, 1.0), Range("y", 0.0, 1.0)],
        objectives=[Objective("loss")], evaluator="t.quadratic",
        strategy=Strategy(initial_trials=2, max_trials=4, seed=1, generation_time_limit_s=0.01),
    )
    bq.studies.run(study.id)
    done = bq.studies.wait(study.id, timeout=180)
    assert done.status is StudyStatus.COMPLETED, done.message
    generators = [t.generator for t in sorted(bq.studies.trials(study.id), key=lambda t: t.index)]
    # the model's trials could not be made in 10 ms: each fell back, none hung the step
    assert generators[2:] == ["sobol-fallback", "sobol-fallback"], generators
