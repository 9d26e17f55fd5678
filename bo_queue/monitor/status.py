"""A terminal status page, as plain text: `render_status(bq.monitor)` returns it, the CLI prints
it (and reprints it with --watch). Queues, live workers, running studies with a progress
bar, the tasks now (how many in each state), and totals over the last five minutes; no
curses, no colours."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import redis

from bo_queue.core.connections import replication
from bo_queue.errors import BOQueueError
from bo_queue.monitor.manager import Metrics, QueueStats, Summary, WorkerStatus
from bo_queue.studies.models import Study, StudyStatus

if TYPE_CHECKING:
    from bo_queue.monitor.manager import Monitor

WINDOW_S = 300.0
SHOWN_STUDIES = (StudyStatus.ACTIVE, StudyStatus.PAUSED)


def render_status(monitor: Monitor, width: int = 100) -> str:
    """The whole page; each line at most `width` characters. A Redis that cannot be
    reached gives a page that says so instead of an exception."""
    bq, now = monitor.bq, datetime.now(UTC)
    head = f"bo_queue {bq.settings.namespace}  {now:%Y-%m-%d %H:%M:%S} UTC"
    try:
        queues = monitor.queues()
        workers = monitor.workers()
        studies = [s for s in monitor.studies().list() if s.status in SHOWN_STUDIES]
    except (BOQueueError, redis.RedisError) as exc:
        return _fit([head, "", f"redis unreachable: {exc}"], width)
    metrics: Metrics | None = None
    problem = ""
    try:
        metrics = monitor.metrics(WINDOW_S)
    except (BOQueueError, redis.RedisError) as exc:  # the page without its totals
        problem = f"metrics unavailable: {exc}"
    summary: Summary | str
    try:
        summary = monitor.summary()
    except (BOQueueError, redis.RedisError) as exc:
        summary = f"summary unavailable: {exc}"
    lines = [head, *_redis_line(monitor), ""]
    lines += _queues_section(bq.settings.queues, queues)
    lines += ["", *_workers_section(workers)]
    lines += ["", *_studies_section(studies, metrics, width)]
    lines += ["", *_now_section(summary, width)]
    lines += ["", *(_totals_section(metrics) if metrics is not None else ["TOTALS", problem])]
    return _fit(lines, width)


# -- sections -----------------------------------------------------------------------------


def _redis_line(monitor: Monitor) -> list[str]:
    """Who serves: the master and its replicas (none for a Redis that refuses INFO)."""
    try:
        return ["redis " + replication(monitor.bq.settings, monitor.bq.redis).describe()]
    except (redis.RedisError, OSError):
        return []


def _queues_section(names: Sequence[str], stats: list[QueueStats]) -> list[str]:
    rows: list[list[str]] = []
    for queue in names:
        mine = [s for s in stats if s.queue == queue]
        held = sum(s.held for s in mine)
        label = f"{queue} (paused, {held} held)" if any(s.paused for s in mine) else queue
        cells = [s for s in mine if s.length]
        if not cells:
            rows.append([label, "-", "0", "-"])
        for s in cells:
            age = "-" if s.oldest_age_s is None else _duration(s.oldest_age_s)
            rows.append([label, s.priority.name.lower(), str(s.length), age])
    total = sum(s.length + s.held for s in stats)
    return [f"QUEUES  {total} waiting",
            *_table(["queue", "priority", "length", "oldest"], rows, right={2, 3})]


def _workers_section(workers: list[WorkerStatus]) -> list[str]:
    if not workers:
        return ["WORKERS  none alive"]
    rows = [
        [w.hostname, ",".join(w.queues) or "-",
         "-" if w.concurrency is None else str(w.concurrency), str(w.active),
         f"{w.seconds_since_heartbeat:.1f}s"]
        for w in workers
    ]
    busy = sum(w.active for w in workers)
    slots = sum(w.concurrency or 0 for w in workers)
    return [f"WORKERS  {len(workers)} alive, {busy}/{slots} busy",
            *_table(["hostname", "queues", "concurrency", "active", "heartbeat"], rows,
                    right={2, 3, 4})]


def _studies_section(studies: list[Study], metrics: Metrics | None, width: int) -> list[str]:
    if not studies:
        return ["STUDIES  none active or paused"]
    measured = {m.id: m for m in metrics.studies} if metrics is not None else {}
    bar_width = 20 if width >= 90 else 10
    rows = []
    for study in sorted(studies, key=lambda s: (s.status != StudyStatus.ACTIVE, s.created_at)):
        total = study.spec.strategy.max_trials
        objective = study.spec.objectives[0]
        m = measured.get(study.id)
        best = "-"
        if m is not None and m.best_value is not None:
            arrow = "min" if objective.minimize else "max"
            best = f"{objective.name}={m.best_value:.6g} ({arrow})"
        rate = "-" if m is None else f"{m.trials_per_min:.1f}/min"
        rows.append([study.id, study.name, study.status.value,
                     progress_bar(study.completed_trials, total, bar_width), rate, best])
    return [f"STUDIES  {len(studies)} running",
            *_table(["id", "name", "status", "progress", "rate", "best"], rows)]


def _now_section(summary: Summary | str, width: int) -> list[str]:
    """TASKS NOW: the total, then `STATE count` pairs, wrapped to `width`."""
    if isinstance(summary, str):
        return ["TASKS NOW", f"  {summary}"]
    lines = [f"TASKS NOW  {summary.total} in all"]
    line = ""
    for state, count in summary.by_state.items():
        cell = f"  {state.lower()} {count}"
        if line and len(line) + len(cell) > width:
            lines.append(line)
            line = ""
        line += cell
    return [*lines, line]


def _totals_section(metrics: Metrics) -> list[str]:
    t = metrics.total
    rate = "-" if t.failure_rate is None else f"{t.failure_rate:.1%}"
    mean = "-" if t.mean_duration_s is None else _duration(t.mean_duration_s)
    return [
        f"TOTALS  last {_duration(metrics.window_s)}",
        f"  throughput {t.throughput_per_min:.1f}/min  succeeded {t.succeeded}  "
        f"failed {t.failed}  failure rate {rate}  retried {t.retried}  mean run {mean}",
        f"  running {metrics.running}  concurrent {metrics.concurrent}  "
        f"workers {metrics.workers}",
    ]


# -- helpers ------------------------------------------------------------------------------


def progress_bar(done: int, total: int, width: int = 10) -> str:
    """`[#####.....] 12/30`: `done` of `total`, `width` characters between the brackets."""
    fraction = min(1.0, done / total) if total > 0 else 0.0
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), *(line(r) for r in rows)]


def _fit(lines: list[str], width: int) -> str:
    """Cut lines longer than `width` (marking the cut with "~")."""
    return "\n".join(
        line if len(line) <= width else line[: max(0, width - 1)] + "~" for line in lines
    )

