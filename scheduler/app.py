"""The Celery app celery beat runs: `celery -A scheduler.app beat -S redbeat.RedBeatScheduler`
(what `bo-queue beat` runs). Dynamic schedules live in Redis (bq.schedules); the
maintenance jobs below are static entries that every deployment gets."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery

from bo_queue.client import BOQueue
from bo_queue.config import Settings

MAINTENANCE = {
    # Due held submissions go to their queues (workers do this too, every second).
    "bo_queue.maintenance.release_delayed": timedelta(seconds=5),
    # Trials whose lease ran out in studies that no step is visiting.
    "bo_queue.maintenance.sweep_studies": timedelta(minutes=1),
    # Finished studies to the File backend (only when BO_QUEUE_ARCHIVE_DIR is set).
    "bo_queue.maintenance.archive_studies": timedelta(hours=6),
}


def create_beat_app(settings: Settings | None = None) -> Celery:
    bq = BOQueue(settings=settings or Settings.load())
    bq.app.conf.beat_schedule = {
        name: {
            "task": name,
            "schedule": every,
            "args": [{}],
            "options": {"queue": bq.settings.default_queue},
        }
        for name, every in MAINTENANCE.items()
    }
    return bq.app


app = create_beat_app()
