"""Redis key names. Everything bo_queue writes lives under `{namespace}:`; Celery's own keys
live under `{namespace}:broker:` and `{namespace}:results:` (kombu's global_keyprefix),
so several deployments share one Redis without seeing each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str

    @property
    def broker_prefix(self) -> str:
        return f"{self.namespace}:broker:"

    @property
    def results_prefix(self) -> str:
        return f"{self.namespace}:results:"

    def task(self, task_id: str) -> str:
        return f"{self.namespace}:task:{task_id}"

    def children(self, task_id: str) -> str:
        return f"{self.namespace}:task:{task_id}:children"

    def dependents(self, task_id: str) -> str:
        """Set: the tasks that depend on this one (dependencies.py builds the same names)."""
        return f"{self.namespace}:task:{task_id}:dependents"

    def waiting(self, task_id: str) -> str:
        """Set: the dependencies this task still waits on."""
        return f"{self.namespace}:task:{task_id}:waiting"

    @property
    def parked(self) -> str:
        """Hash: task id -> message of a task waiting on its dependencies."""
        return f"{self.namespace}:deps:parked"

    def checkpoint(self, task_id: str) -> str:
        return f"{self.namespace}:task:{task_id}:checkpoint"

    def cancelled(self, task_id: str) -> str:
        return f"{self.namespace}:cancelled:{task_id}"

    def tag(self, tag: str) -> str:
        return f"{self.namespace}:tag:{tag}"

    def workflow(self, workflow_id: str) -> str:
        """Hash: a workflow run's definition (spec) and state (run)."""
        return f"{self.namespace}:workflow:{workflow_id}"

    @property
    def workflows(self) -> str:
        """Sorted set of workflow run ids, scored by when they started."""
        return f"{self.namespace}:workflows"

    def state_index(self, state: str) -> str:
        """Sorted set: the tasks now in `state`, scored by when they got there."""
        return f"{self.namespace}:state:{state}"

    @property
    def failed(self) -> str:
        """Sorted set: the failed-task registry (tasks that FAILED, until retried)."""
        return f"{self.namespace}:failed"

    @property
    def events(self) -> str:
        """Stream: task and study state changes (bo_queue.events)."""
        return f"{self.namespace}:events"

    @property
    def handlers(self) -> str:
        """Hash: handler name -> JSON spec, written by every worker at start."""
        return f"{self.namespace}:handlers"

    @property
    def workers(self) -> str:
        """Hash: worker hostname -> last heartbeat (unix seconds)."""
        return f"{self.namespace}:workers"

    @property
    def delayed(self) -> str:
        """Sorted set of held submissions, scored by the time they are due."""
        return f"{self.namespace}:delayed"
