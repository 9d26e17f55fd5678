"""BOQueue: the facade producers use. The kernel (bo_queue.core.Core) plus the services,
each built on first use so that a producer that only submits tasks loads none of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bo_queue import handlers, registry
from bo_queue.config import Settings
from bo_queue.core.handle import TaskHandle
from bo_queue.core.kernel import Core
from bo_queue.core.records import TaskInfo
from bo_queue.core.requests import TaskRequest
from bo_queue.states import TaskState

if TYPE_CHECKING:
    from bo_queue.agents import AgentManager
    from bo_queue.monitor.manager import Monitor, Summary
    from bo_queue.schedules import ScheduleManager
    from bo_queue.studies.manager import StudyManager
    from bo_queue.workflows.manager import WorkflowManager

__all__ = ["BOQueue", "TaskRequest"]


class BOQueue(Core):
    """Submit tasks to named priority queues, and watch, wait for and cancel them; run
    studies, schedules and workflows; watch it all.

        bq = BOQueue(redis_url="redis://127.0.0.1:6379/0", namespace="boq")
        h = bq.submit("reports.build", {"x": 1}, priority="high", tags=("nightly",))
        h.get(timeout=10)
    """

    handler = staticmethod(registry.handler)
    register = staticmethod(handlers.register)  # a bo_queue.Handler subclass

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str | None = None,
        *,
        settings: Settings | None = None,
        ride_out_outages_s: float = 0.0,
        **options: Any,
    ) -> None:
        """See Core: `settings`, or options and BO_QUEUE_* variables; clients for tests."""
        super().__init__(
            redis_url, namespace, settings=settings, ride_out_outages_s=ride_out_outages_s,
            **options,
        )
        self._studies: StudyManager | None = None
        self._schedules: ScheduleManager | None = None
        self._workflows: WorkflowManager | None = None
        self._monitor: Monitor | None = None
        self._agents: AgentManager | None = None

    @property
    def schedules(self) -> ScheduleManager:
        """Periodic and cron schedules, run by `bo-queue beat` (bo_queue.schedules)."""
        if self._schedules is None:
            from bo_queue.schedules import ScheduleManager

            self._schedules = ScheduleManager(self, lambda: self.studies)
        return self._schedules

    @property
    def studies(self) -> StudyManager:
        """Optimization studies: create, run, suggest, report, best, ... (bo_queue.studies)."""
        if self._studies is None:
            from bo_queue.studies.manager import StudyManager

            self._studies = StudyManager(self)
        return self._studies

    @property
    def workflows(self) -> WorkflowManager:
        """Workflow runs: run, status, pause, resume, set_vars, cancel, wait (.workflows)."""
        if self._workflows is None:
            from bo_queue.workflows.manager import WorkflowManager

            self._workflows = WorkflowManager(self)
        return self._workflows

    @property
    def monitor(self) -> Monitor:
        """Queues, workers, metrics and state-change events (bo_queue.monitor)."""
        if self._monitor is None:
            from bo_queue.monitor.manager import Monitor

            self._monitor = Monitor(self, lambda: self.studies)
        return self._monitor

    @property
    def agents(self) -> AgentManager:
        """Pull mode: task types external agents claim, agents, leases (bo_queue.agents)."""
        if self._agents is None:
            with self._lock:
                if self._agents is None:
                    from bo_queue.agents import AgentManager

                    self._agents = AgentManager(self)
        return self._agents

    def tasks(self, state: TaskState | str | None = None, **filters: Any) -> list[TaskInfo]:
        """Tasks by state, tag, queue, handler, name, metadata, since, limit (see
        Monitor.tasks)."""
        return self.monitor.tasks(state, **filters)

    def failed(self, limit: int = 100) -> list[TaskInfo]:
        """The failed-task registry, newest first (see Monitor.failed)."""
        return self.monitor.failed(limit)

    def retry(self, task_id: str) -> TaskHandle:
        """Run a FAILED task again as a new task (see Monitor.retry)."""
        return self.monitor.retry(task_id)

    def summary(self) -> Summary:
        """The tasks now: total, by state and by handler (see Monitor.summary)."""
        return self.monitor.summary()

    def metadata(self) -> dict[str, Any]:
        """The namespace's metadata (see Monitor.metadata)."""
        return self.monitor.metadata()

    def update_metadata(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `values` into the namespace's metadata (see Monitor.update_metadata)."""
        return self.monitor.update_metadata(values)
