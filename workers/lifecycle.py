"""What a bo_queue worker does besides running tasks.

- publishes its handlers to the directory producers read (so they can submit by name),
- writes a heartbeat (its queues, concurrency, running tasks and the delivery tags of the
  messages it holds, once a second), and puts back at once the messages of workers whose
  heartbeat stopped (bo_queue.core.heartbeats),
- moves held submissions that are due to their queues (bo_queue.core.delays),
- delivers webhooks, on a thread of its own (bo_queue.monitor.webhooks.Deliverer),
- keeps task records right where Celery ends a task outside the handler: revoked or
  expired; and writes every failure ending (the `task_failure` signal: a handler's
  failure, a lost run, the hard time limit, a pool error, a rejected message).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from celery import Celery, bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    celeryd_after_setup,
    task_failure,
    task_revoked,
    worker_init,
    worker_shutdown,
)
from celery.worker import state
from redis.typing import EncodableT, FieldT

from bo_queue import registry
from bo_queue.client import BOQueue
from bo_queue.core import placement, transport
from bo_queue.monitor.webhooks import Deliverer
from bo_queue.states import TaskState
from workers.runner import HandlerTask, check_pool, move_record, record_failure

log = logging.getLogger(__name__)

TICK_S = 1.0
OUTBOX_EVERY_TICKS = 3  # how often a worker looks for signs of lost messages


def install(app: Celery, bq: BOQueue) -> None:
    setattr(app, "bo_queue", bq)  # noqa: B010  (for _consume_placed_queues)
    class BOQueueStep(bootsteps.StartStopStep):
        # after the pool, so stopped before it: the card says "stopping" while the pool
        # finishes the running tasks of a warm shutdown (worker_shutdown removes it)
        requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            # a plain handler's time limit is only kept by prefork: refuse to start
            # rather than run one unlimited (ConfigurationError stops the worker)
            consumed = getattr(worker.app.amqp.queues, "consume_from", None)
            check_pool(bq, isinstance(worker.pool_cls, type)
                       and issubclass(worker.pool_cls, PreforkPool),
                       None if consumed is None else set(consumed))
            self.tref: Any = None
            self.hostname = ""
            self.card: dict[str, Any] = {}
            self.ticks = 0
            self.deliverer: Deliverer | None = None

        def start(self, worker: Any) -> None:
            self.hostname = worker.hostname
            consumed = getattr(worker.app.amqp.queues, "consume_from", None) or {}
            self.card = {  # what bq.monitor.workers() shows besides the live numbers
                "queues": sorted(consumed), "concurrency": worker.concurrency,
                "pid": os.getpid(), "started_at": time.time(),
                "capabilities": bq.settings.capabilities,
                "offers": bq.settings.worker_offers.describe(),
                "versions": {name: spec.version for name, spec in served(bq).items()
                             if spec.version},
            }
            publish_handlers(bq, worker.hostname)
            if bq.heartbeats.has(self.hostname):  # a warm shutdown removes it
                bq.outbox.suspect(f"worker {self.hostname} came back after dying")
            self.tick()
            self.tref = worker.timer.call_repeatedly(TICK_S, self.tick)
            # a thread, not the timer: a slow receiver must not hold up the heartbeat
            self.deliverer = Deliverer(bq.monitor.webhooks, self.hostname).start()

        def stop(self, worker: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
            if self.deliverer is not None:
                self.deliverer.stop()
            try:  # its heartbeat stops now; its running tasks stay its own (heartbeats)
                self.beat(stopping=True)
            except Exception:
                log.warning("could not write the last heartbeat of %s", self.hostname)

        def beat(self, stopping: bool = False) -> None:
            at = time.time()  # before the tags are gathered: see bo_queue.core.heartbeats
            card = {**self.card, "active": len(state.active_requests),
                    "held": transport.held_tags()}
            bq.heartbeats.beat(self.hostname, {**card, "stopping": True} if stopping else card,
                               at)

        def tick(self) -> None:
            try:
                self.beat()
                bq.delays.release_due(bq.send)
                self.ticks += 1
                if self.ticks % OUTBOX_EVERY_TICKS == 1:  # send again what got lost
                    if bq.outbox.restarted() is not None:
                        bq.outbox.suspect("Redis restarted")
                    silent = bq.heartbeats.reap_silent(self.hostname)
                    if silent:
                        bq.outbox.suspect(f"worker(s) {', '.join(silent)} stopped heartbeating")
                    restored = bq.heartbeats.restore_orphans()
                    if restored:
                        log.warning("put back %d message(s) of dead workers on their queues: "
                                    "%s", len(restored), ", ".join(restored[:20]))
                    bq.outbox.reconcile(bq.send, lambda: [
                        *bq.settings.queues,
                        *(str(q) for q in bq.redis.smembers(bq.keys.placed_queues))])
            except Exception:  # Redis down: the next tick tries again
                log.exception("bo_queue worker tick failed")

    app.steps["worker"].add(BOQueueStep)


@worker_shutdown.connect(weak=False)
def _remove_heartbeat(sender: Any = None, **_: Any) -> None:
    """After a warm shutdown (the pool has finished): the card goes, so that nobody takes
    this worker for killed."""
    bq = getattr(getattr(sender, "app", None), "bo_queue", None)
    if not isinstance(bq, BOQueue):
        return
    try:
        bq.heartbeats.remove(sender.hostname)
    except Exception:
        log.warning("could not remove the heartbeat of %s", sender.hostname)


def served(bq: BOQueue) -> dict[str, registry.HandlerSpec]:
    """The handlers this worker can run: those whose required capabilities it declares."""
    mine = set(bq.settings.capabilities)
    return {name: spec for name, spec in registry.registered().items()
            if set(spec.requires) <= mine}


@celeryd_after_setup.connect(weak=False)
def _consume_placed_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Besides its queues, a worker consumes their capability queues and the version
    queues of the versioned handlers it serves (bo_queue.core.placement)."""
    app, bq = instance.app, getattr(instance.app, "bo_queue", None)
    if not isinstance(bq, BOQueue):
        return
    queues = app.amqp.queues
    consumed = getattr(queues, "consume_from", None)
    if consumed is None:  # no -Q: every configured queue (select_add would narrow it)
        for name in bq.settings.queues:
            queues.select_add(name)
        consumed = queues.consume_from
    base = [q for q in consumed if q in bq.settings.queues]
    versions = {name: (bq.settings.queue_for(spec.queue), spec.version)
                for name, spec in served(bq).items() if spec.version}
    for name in placement.worker_queues(base, bq.settings.capabilities, versions):
        if name not in base:
            queues.select_add(name)


def publish_handlers(bq: BOQueue, hostname: str) -> None:
    now = time.time()
    directory: dict[FieldT, EncodableT] = {}
    pull = {name for name, raw in bq.redis.hgetall(bq.keys.handlers).items()
            if json.loads(raw).get("pull")}
    for name, spec in registry.registered().items():
        if name in pull:  # declared for external agents (bo_queue.agents): leave it theirs
            log.error("handler %s is also a pull task type: this worker will not run it", name)
            continue
        entry = spec.describe()
        entry.update(queue=bq.settings.queue_for(spec.queue), worker=hostname, updated_at=now)
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
    move_record(bq, request.id, state, finished_at=time.time())


@task_failure.connect(weak=False)
def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
    **_: Any,
) -> None:
    if not isinstance(sender, HandlerTask) or task_id is None or exception is None:
        return
    record_failure(sender, task_id, exception)


@worker_init.connect(weak=False)
def _preload_ax(sender: Any = None, **_: Any) -> None:
    """A worker that serves the `bo` queue runs study steps: import Ax (several seconds)
    once in the parent, before the pool forks, instead of in every pool process."""
    consumed = getattr(getattr(sender.app.amqp, "queues", None), "consume_from", None) or {}
    if "bo" in consumed:
        started = time.monotonic()
        import bo_queue.studies.engine  # noqa: F401

        log.info("imported the Ax engine in %.1f s", time.monotonic() - started)
