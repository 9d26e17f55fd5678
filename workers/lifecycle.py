"""What a bo_queue worker does besides running tasks.

- publishes its handlers to the directory producers read (so they can submit by name),
- writes a heartbeat (its queues, concurrency and running tasks, once a second),
- moves held submissions that are due to their queues (bo_queue.delays),
- keeps task records right where Celery ends a task outside the handler: revoked,
  expired, killed by the hard time limit, or failed after its worker was lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_failure, task_revoked, worker_init
from celery.worker import state
from redis.typing import EncodableT, FieldT

from bo_queue import registry
from bo_queue.client import BOQueue
from bo_queue.states import TaskState
from workers.runner import describe

log = logging.getLogger(__name__)

TICK_S = 1.0


def install(app: Celery, bq: BOQueue) -> None:
    class BOQueueStep(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Timer",)

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.tref: Any = None
            self.hostname = ""
            self.card: dict[str, Any] = {}

        def start(self, worker: Any) -> None:
            self.hostname = worker.hostname
            consumed = getattr(worker.app.amqp.queues, "consume_from", None) or {}
            self.card = {  # what bq.monitor.workers() shows besides the live numbers
                "queues": sorted(consumed), "concurrency": worker.concurrency,
                "pid": os.getpid(), "started_at": time.time(),
            }
            publish_handlers(bq, worker.hostname)
            self.tick()
            self.tref = worker.timer.call_repeatedly(TICK_S, self.tick)

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
            try:
                bq.redis.hdel(bq.keys.workers, self.hostname)
            except Exception:
                log.warning("could not remove the heartbeat of %s", self.hostname)

        def tick(self) -> None:
            try:
                beat = {**self.card, "at": time.time(), "active": len(state.active_requests)}
                bq.redis.hset(bq.keys.workers, self.hostname, json.dumps(beat))
                bq.delays.release_due(bq.send)
            except Exception:  # Redis down: the next tick tries again
                log.exception("bo_queue worker tick failed")

    app.steps["worker"].add(BOQueueStep)


def publish_handlers(bq: BOQueue, hostname: str) -> None:
    now = time.time()
    directory: dict[FieldT, EncodableT] = {}
    for name, spec in registry.registered().items():
        entry = spec.describe()
        entry.update(queue=spec.queue or bq.settings.default_queue, worker=hostname, updated_at=now)
        directory[name] = json.dumps(entry)
    if directory:
        bq.redis.hset(bq.keys.handlers, mapping=directory)


def _bq_of(sender: Any) -> BOQueue | None:
    bq = getattr(sender, "bq", None)
    return bq if isinstance(bq, BOQueue) else None


@task_revoked.connect(weak=False)
def _on_revoked(sender: Any = None, request: Any = None, expired: bool = False, **_: Any) -> None:
    bq = _bq_of(sender)
    if bq is None or request is None:
        return
    state = TaskState.EXPIRED if expired else TaskState.CANCELLED
    bq.records.transition(request.id, state, finished_at=time.time())


@task_failure.connect(weak=False)
def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    **_: Any,
) -> None:
    bq = _bq_of(sender)
    if bq is None or task_id is None or exception is None:
        return
    bq.records.transition(
        task_id, TaskState.FAILED, finished_at=time.time(), error=describe(exception)
    )


@worker_init.connect(weak=False)
def _preload_ax(sender: Any = None, **_: Any) -> None:
    """A worker that serves the `bo` queue runs study steps: import Ax (several seconds)
    once in the parent, before the pool forks, instead of in every pool process."""
    consumed = getattr(getattr(sender.app.amqp, "queues", None), "consume_from", None) or {}
    if "bo" in consumed:
        started = time.monotonic()
        import bo_queue.studies.engine  # noqa: F401

        log.info("imported the Ax engine in %.1f s", time.monotonic() - started)
