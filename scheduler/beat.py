"""The beat scheduler: celery-redbeat's, with entries that keep a cron's time zone."""

from __future__ import annotations

from redbeat import RedBeatScheduler  # type: ignore[import-untyped]

from bo_queue.schedules import entry_class


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = entry_class()
