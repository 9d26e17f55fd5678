"""Redis key names. Everything bo_queue writes lives under `{namespace}:`; Celery's own keys
live under `{namespace}:broker:` and `{namespace}:results:` (kombu's global_keyprefix),
so several deployments share one Redis without seeing each other.

The Lua scripts name keys through a table generated from `Keys` (bo_queue.core.scripts),
so a key name is defined here only."""

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

    def runs(self, task_id: str) -> str:
        """List: a task's runs, newest first, JSON each (lua/runs.lua; TaskInfo.runs)."""
        return f"{self.namespace}:task:{task_id}:runs"

    def dependents(self, task_id: str) -> str:
        """Set: the tasks that depend on this one."""
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
    def metadata(self) -> str:
        """Hash: the namespace's metadata, `m:<key>` -> JSON value, and `initialized_at`
        and `last_updated` (ISO 8601 UTC; bo_queue.monitor.metadata)."""
        return f"{self.namespace}:metadata"

    @property
    def failed(self) -> str:
        """Sorted set: the failed-task registry (tasks that FAILED, until retried)."""
        return f"{self.namespace}:failed"

    @property
    def events(self) -> str:
        """Stream: task and study state changes (bo_queue.core.events)."""
        return f"{self.namespace}:events"

    @property
    def webhooks(self) -> str:
        """Hash: webhook id -> JSON spec (bo_queue.monitor.webhooks); each has a consumer
        group `webhook:<id>` on `events`."""
        return f"{self.namespace}:webhooks"

    def webhook_dead(self, webhook_id: str) -> str:
        """List: the events a webhook gave up on (JSON dead letters), newest first."""
        return f"{self.namespace}:webhook:{webhook_id}:dead"

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

    @property
    def delayed_specs(self) -> str:
        """Hash: held task id -> what to send once it is due (bo_queue.core.delays)."""
        return f"{self.namespace}:delayed:specs"

    @property
    def outbox(self) -> str:
        """Hash: task id -> the message sent for it, kept until a worker starts it
        (bo_queue.core.outbox re-sends those Redis lost)."""
        return f"{self.namespace}:outbox"

    @property
    def paused(self) -> str:
        """Hash: task id -> message of a PAUSED task a worker took and held back
        (bq.pause; bq.resume sends it again)."""
        return f"{self.namespace}:paused"

    @property
    def paused_queues(self) -> str:
        """Set: the queues no worker starts tasks from (bq.pause_queue)."""
        return f"{self.namespace}:queues:paused"

    def queue_held(self, queue: str) -> str:
        """Hash: task id -> message a worker took from paused `queue` (or one of its
        capability and version queues) and held back; bq.resume_queue sends them again."""
        return f"{self.namespace}:queue:{queue}:held"

    @property
    def placed_queues(self) -> str:
        """Set: the capability and version queues tasks were sent to (for monitoring)."""
        return f"{self.namespace}:queues:placed"

    def slots(self, handler: str) -> tuple[str, str]:
        """A handler's cluster-wide concurrency slots: (holders by lease expiry, needs)."""
        prefix = f"{self.namespace}:limit:{handler}"
        return f"{prefix}:holders", f"{prefix}:needs"

    def resources(self, worker: str) -> tuple[str, str]:
        """What a worker's running tasks hold of its resources: (holders, needs)."""
        prefix = f"{self.namespace}:res:{worker}"
        return f"{prefix}:holders", f"{prefix}:needs"

    def rate(self, handler: str) -> str:
        """Sorted set: a handler's recent starts, for its cluster-wide rate limit."""
        return f"{self.namespace}:rate:{handler}"

    # -- pull mode (bo_queue.agents) ----------------------------------------------------

    def pull_ready(self, task_type: str) -> str:
        """Sorted set: a pull type's tasks waiting for an agent, best first (broker
        priority, then submit order)."""
        return f"{self.namespace}:pull:ready:{task_type}"

    @property
    def pull_later(self) -> str:
        """Sorted set: pull tasks not due yet (a short countdown), scored by due time."""
        return f"{self.namespace}:pull:later"

    @property
    def pull_tasks(self) -> str:
        """Hash: pull task id -> JSON {type, rank, agent, lease_s, finishing}."""
        return f"{self.namespace}:pull:tasks"

    @property
    def pull_messages(self) -> str:
        """Hash: pull task id -> the message `Core.send` was given (payload included)."""
        return f"{self.namespace}:pull:messages"

    @property
    def pull_leases(self) -> str:
        """Sorted set: held pull task ids, scored by when their lease runs out."""
        return f"{self.namespace}:pull:leases"

    @property
    def pull_seq(self) -> str:
        """Counter: submit order among pull tasks of one priority."""
        return f"{self.namespace}:pull:seq"

    @property
    def agents(self) -> str:
        """Sorted set: agent ids, scored by their last heartbeat (unix seconds)."""
        return f"{self.namespace}:agents"

    def agent(self, agent_id: str) -> str:
        """Hash: an agent's kind, capabilities (JSON) and registered_at."""
        return f"{self.namespace}:agent:{agent_id}"

    def agent_tasks(self, agent_id: str) -> str:
        """Set: the pull tasks an agent holds."""
        return f"{self.namespace}:agent:{agent_id}:tasks"


# The pseudo-queue of pull task types (bo_queue.agents): their tasks wait in Redis for
# external agents instead of going to a Celery queue. No configured queue can be named
# so (queue names are identifiers), and no worker consumes it.
PULL_QUEUE = "@agents"
