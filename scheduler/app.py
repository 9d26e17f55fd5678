"""The Celery app celery beat runs: `celery -A scheduler.app beat -S scheduler.beat:Scheduler`
(what `bo-queue beat` runs). Dynamic schedules live in Redis (bq.schedules); the
maintenance jobs below, and the static schedules of BO_QUEUE_SCHEDULE_FILE, are static
entries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from bo_queue.client import BOQueue
from bo_queue.config import Settings
from bo_queue.monitor.logs import install_json_logging
from bo_queue.schedules import static_schedules

MAINTENANCE = {
    # Due held submissions go to their queues (workers do this too, every second).
    "bo_queue.maintenance.release_delayed": timedelta(seconds=5),
    # Trials whose lease ran out in studies that no step is visiting.
    "bo_queue.maintenance.sweep_studies": timedelta(minutes=1),
    # Index entries (tags, children, held sends) whose records have expired.
    "bo_queue.maintenance.purge_indexes": timedelta(hours=1),
    # Finished studies to the File backend or a database (BO_QUEUE_ARCHIVE_DIR or _URL).
    "bo_queue.maintenance.archive_studies": timedelta(hours=6),
}


def create_beat_app(settings: Settings | None = None) -> Celery:
    bq = BOQueue(settings=settings or Settings.load())
    if bq.settings.log_json:  # before Celery sets up logging (beat, when it starts)
        install_json_logging()
    schedule: dict[str, dict[str, Any]] = {
        name: {"task": name, "schedule": every, "args": [{}]}
        for name, every in MAINTENANCE.items()
    }
    if bq.settings.schedule_file:
        schedule.update(static_schedules(bq.settings.schedule_file))
    for entry in schedule.values():
        entry["options"] = {"queue": bq.settings.default_queue}
    bq.app.conf.beat_schedule = schedule
    return bq.app


app = create_beat_app()
