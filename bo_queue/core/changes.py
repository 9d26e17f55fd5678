"""Changing a task after its submit: its priority, name, description and metadata, a
pause, a dependency added later (only before it starts: a worker's start script holds back
what must not start yet, see lua/record_start.lua), a paused queue, and deleting a task
that has ended. Part of Core (a base class of it), kept apart as a concept of its own."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pydantic
import redis

from bo_queue.config import Settings
from bo_queue.core import dependencies
from bo_queue.core.handle import TaskHandle
from bo_queue.core.keys import PULL_QUEUE, Keys
from bo_queue.core.message import Message, envelope_task_id
from bo_queue.core.records import RecordStore, TaskInfo
from bo_queue.core.requests import TaskUpdate, task_request
from bo_queue.errors import (
    BOQueueError,
    DependencyError,
    UnknownTaskError,
    ValidationError,
    shown,
)
from bo_queue.states import Priority, TaskState
from bo_queue.validation import known_id, problems

if TYPE_CHECKING:
    from bo_queue.core.results import ResultWaiter


class TaskChanges:
    """Core's calls that change a task after its submit; Core provides what is declared."""

    settings: Settings
    keys: Keys
    redis: redis.Redis
    records: RecordStore

    if TYPE_CHECKING:  # Core's own

        @property
        def results(self) -> ResultWaiter: ...

        def broker_errors(self) -> AbstractContextManager[None]: ...

        def settle(self, released: int, cancelled: list[str]) -> None: ...

        def _info(self, task_id: str) -> TaskInfo: ...

    def delete(self, task_id: str) -> None:
        """Delete an ended task (SUCCEEDED, FAILED, CANCELLED or EXPIRED): its record, its
        result, its entries in the state indexes and the failed registry, its tag, parent
        and dependency links, its checkpoint. bo_queue's keys go in one Lua script, with
        Celery's result key when results live on the same Redis (else right after).
        Afterwards `info()` raises UnknownTaskError and `tasks()` no longer lists it.

        UnknownTaskError for an unknown id; ValidationError for a task that has not ended
        (cancel it first): the call is refused and nothing is deleted. The record decides:
        for the moment between a worker storing a result and ending the record, the task
        has not ended yet."""
        known_id(task_id)
        same_server = self.settings.results_url == self.settings.redis_url
        result_key = self.results.key(task_id)
        with self.broker_errors():
            outcome = self.records.delete(task_id, result_key if same_server else None)
            if outcome is False:
                raise UnknownTaskError(task_id)
            if outcome is not True:
                raise ValidationError(
                    f"task {task_id} has not ended ({outcome}); only an ended task can be "
                    "deleted (cancel it first)"
                )
            if not same_server:
                self.results.redis.delete(result_key)

    def update(
        self, task_id: str, *, priority: Priority | str | int | None = None,
        metadata: Mapping[str, Any] | None = None, name: str | None = None,
        description: str | None = None,
    ) -> TaskInfo:
        """Change a task that has not started (PENDING, QUEUED or PAUSED): its priority
        (its message moves to that priority's broker list, in one script), its metadata
        (replaced), name or description; None leaves a field as it is. Returns the record.
        ValidationError for bad values or a task that has started or ended,
        UnknownTaskError for an unknown id; nothing is written then."""
        known_id(task_id)
        try:
            change = TaskUpdate.model_validate({
                "priority": priority, "name": name, "description": description,
                "metadata": dict(metadata) if isinstance(metadata, Mapping) else metadata,
            })
        except pydantic.ValidationError as exc:
            raise ValidationError(problems(exc, "update")) from None
        fields = {k: v for k, v in change.model_dump().items() if v is not None}
        if not fields:
            raise ValidationError("update: give priority, metadata, name or description")
        with self.broker_errors():
            for _ in range(20):  # a kept message that changed while we read: read again
                reply = self._update(task_id, change, fields)
                if reply[0] != "retry":
                    break
            else:  # workers moved it between every read and write: nothing was written
                raise BOQueueError(f"task {task_id} kept moving while it was updated; "
                                   "nothing was changed, try again")
            if reply[0] == "gone":
                raise UnknownTaskError(task_id)
            if reply[0] == "started":
                raise ValidationError(f"task {task_id} has started or ended ({reply[1]}); "
                                      "only a task that has not started can be updated")
            return self._info(task_id)

    def _update(self, task_id: str, change: TaskUpdate, fields: dict[str, Any]) -> list[str]:
        queue, level = self.records.get_fields(task_id, "queue", "priority")
        if queue is None:
            return ["gone"]
        if change.priority is None:
            return self.records.update(task_id, fields)
        if queue == PULL_QUEUE:
            raise ValidationError(f"task {task_id} is a pull task: its priority is fixed")
        to = change.priority.broker_priority
        stores = [self.keys.outbox, self.keys.delayed_specs, self.keys.parked,
                  self.keys.paused, self.keys.queue_held(queue.split(".")[0])]
        old = Priority(int(level or Priority.NORMAL)).broker_priority
        lists = [self.keys.broker_prefix + queue + (f":{p}" if p else "") for p in (old, to)]
        with self.redis.pipeline(transaction=False) as pipe:
            for store in stores:
                pipe.hget(store, task_id)
            pipe.lrange(lists[0], 0, -1)
            *kept, queued = pipe.execute()
        messages = []
        for store, raw in zip(stores, kept, strict=True):
            if raw is not None:  # an unreadable one is dropped where it is read
                try:
                    moved = Message.decode(raw).model_copy(update={"priority": to})
                except ValidationError:
                    continue
                messages.append((store, raw, moved.encode()))
        move = ("", "", "", "")
        found = [raw for raw in queued if envelope_task_id(raw) == task_id]
        if found and old != to:  # rewritten as kombu reads it: the list it pops is chosen
            envelope = json.loads(found[0])  # by the priority property
            envelope["properties"]["priority"] = to
            move = (lists[0], lists[1], found[0], json.dumps(envelope))
        return self.records.update(task_id, fields, messages, move)

    def pause(self, task_id: str) -> TaskState:
        """Pause a task that has not started (PENDING or QUEUED): it becomes PAUSED and no
        worker starts it until `resume`; a worker that takes its message keeps it in
        Redis. Pausing a PAUSED task changes nothing. Returns PAUSED. ValidationError for
        a task that has started or ended, or a pull task; UnknownTaskError if unknown."""
        known_id(task_id)
        with self.broker_errors():
            if self.records.get_fields(task_id, "queue")[0] == PULL_QUEUE:
                raise ValidationError(f"task {task_id} is a pull task: agents claim it, "
                                      "it cannot be paused")
            prior = self.records.pause(task_id)
        if prior is None:
            raise UnknownTaskError(task_id)
        if prior not in (TaskState.PENDING, TaskState.QUEUED, TaskState.PAUSED):
            raise ValidationError(f"task {task_id} has started or ended ({prior}); only a "
                                  "task that has not started can be paused")
        return TaskState.PAUSED

    def resume(self, task_id: str) -> TaskState:
        """Let a PAUSED task run: it is QUEUED again (sent again if a worker held its
        message back), or PENDING if it waits on dependencies or is not due yet.
        Returns the state it resumed to (a worker may have started it by the time the
        caller looks); ValidationError if it is not PAUSED, UnknownTaskError if unknown."""
        known_id(task_id)
        with self.broker_errors():
            outcome = self.records.resume(task_id)
            if outcome is None:
                raise UnknownTaskError(task_id)
            prior, send, resumed = outcome
            if prior is not TaskState.PAUSED:
                raise ValidationError(f"task {task_id} is not paused ({prior})")
            if send:
                self.settle(1, [])
            return resumed

    def pause_queue(self, queue: str) -> None:
        """Pause a configured queue (with its capability and version queues): no worker
        starts a task from it until `resume_queue`; its tasks stay QUEUED, and a worker
        that takes one keeps its message in Redis. ValidationError for an unknown queue."""
        self._configured(queue)
        with self.broker_errors():
            self.redis.sadd(self.keys.paused_queues, queue)

    def resume_queue(self, queue: str) -> int:
        """Let workers start tasks from `queue` again; the messages they held back while
        it was paused are sent again. Returns how many."""
        self._configured(queue)
        with self.broker_errors():
            sent = self.records.resume_queue(queue)
            if sent:
                self.settle(1, [])
        return sent

    def paused_queues(self) -> list[str]:
        """The queues paused now (pause_queue), sorted."""
        with self.broker_errors():
            return sorted(str(q) for q in self.redis.smembers(self.keys.paused_queues))

    def _configured(self, queue: str) -> None:
        if not isinstance(queue, str) or queue not in self.settings.queues:
            raise ValidationError(f"unknown queue {shown(queue)}; configured queues: "
                                  f"{', '.join(self.settings.queues)}")

    def add_dependency(
        self, task_id: str, depends_on: str | TaskHandle | Iterable[str | TaskHandle]
    ) -> TaskInfo:
        """Make a task that has not started (PENDING, QUEUED or PAUSED, a countdown
        included) also wait for `depends_on`: it starts only once they have SUCCEEDED (a
        failure cancels it, as for depends_on at submit, unless it runs anyway). Returns
        the record. DependencyError for an unknown id, a dependency that already failed,
        or a cycle; ValidationError for a task that has started or ended, or a pull
        task. Nothing is written then."""
        known_id(task_id)
        deps = task_request(handler="-", depends_on=depends_on).depends_on  # submit's check
        if not deps:
            raise ValidationError("add_dependency: give at least one task id")
        with self.broker_errors():
            state, queue = self.records.get_fields(task_id, "state", "queue")
            if state is None:
                raise UnknownTaskError(task_id)
            if queue == PULL_QUEUE:  # agents claim it from their store: no start script
                raise ValidationError(f"task {task_id} is a pull task: give its "
                                      "dependencies when it is submitted")
            dependencies.check_added(self.records, task_id, deps)
            reply = self.records.add_dependencies(task_id, deps)
            if reply[0] == "gone":
                raise UnknownTaskError(task_id)
            if reply[0] == "started":
                raise ValidationError(f"task {task_id} has started or ended ({reply[1]}); "
                                      "only a task that has not started can get a dependency")
            if reply[0] == "unknown":
                raise DependencyError(f"unknown dependency (no such task): {reply[1]}")
            if reply[0] == "failed":
                raise DependencyError(f"dependency {reply[1]} already ended {reply[2]}")
            return self._info(task_id)
