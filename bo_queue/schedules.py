"""Dynamic schedules (`bq.schedules`), kept in Redis by celery-redbeat so they survive a
beat restart and are picked up by a running beat without restarting it.

A schedule fires `bo_queue.schedule.fire` (a built-in handler), which submits the target
through the facade: scheduled tasks get records, tags and cancellation like any other.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.schedules import ParseException, crontab, schedule
from pydantic import BaseModel, ConfigDict

from bo_queue.errors import ValidationError
from bo_queue.states import Priority

if TYPE_CHECKING:
    from bo_queue.client import BOQueue
    from bo_queue.studies.models import StudySpec

FIRE = "bo_queue.schedule.fire"
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


class ScheduleInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    handler: str
    payload: dict[str, Any]
    every_s: float | None = None
    cron: str | None = None
    timezone: str = "UTC"
    queue: str | None = None
    priority: Priority = Priority.NORMAL
    tags: tuple[str, ...] = ()
    enabled: bool = True
    last_run_at: datetime | None = None
    total_runs: int = 0
    next_run_at: datetime | None = None


class ScheduleManager:
    def __init__(self, bq: BOQueue) -> None:
        from redbeat.schedulers import ensure_conf  # type: ignore[import-untyped]

        self.bq = bq
        self.conf = ensure_conf(bq.app)  # redbeat's settings, read from the app's config

    def add(
        self,
        name: str,
        handler: str,
        payload: Mapping[str, Any] | None = None,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        queue: str | None = None,
        priority: Priority | str | int = Priority.NORMAL,
        tags: Iterable[str] = (),
        replace: bool = False,
    ) -> ScheduleInfo:
        """Run `handler(payload)` every N seconds or on a cron expression ("0 3 * * *").
        A name that exists is an error unless replace=True."""
        from bo_queue.client import _request

        if not _NAME.fullmatch(name):
            raise ValidationError(f"invalid schedule name {name!r}")
        request = _request(
            handler=handler,
            payload=dict(payload or {}),
            priority=priority,
            queue=queue,
            tags=tuple(tags),
        )
        self.bq._plan(request)  # the same checks as a submit: handler, queue, payload
        spec = {
            "name": name,
            "handler": handler,
            "payload": request.payload,
            "queue": queue,
            "priority": int(request.priority),
            "tags": list(request.tags),
        }
        return self._save(name, spec, every, cron, timezone, replace)

    def add_study(
        self,
        name: str,
        template: StudySpec | Mapping[str, Any],
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        run: bool = True,
        replace: bool = False,
    ) -> ScheduleInfo:
        """Start a new study from `template` on a schedule (a nightly re-optimization):
        each run creates "<template name> <UTC time>" and, if it has an evaluator and
        `run`, starts its closed loop."""
        from bo_queue.studies.models import StudySpec

        if not _NAME.fullmatch(name):
            raise ValidationError(f"invalid schedule name {name!r}")
        spec = template if isinstance(template, StudySpec) else StudySpec(**template)
        if spec.evaluator is not None:
            self.bq.studies._check_evaluator(spec.evaluator)
        payload = {
            "name": name,
            "handler": "study",
            "study": spec.model_dump(mode="json"),
            "run": run,
        }
        return self._save(name, payload, every, cron, timezone, replace)

    def _save(
        self,
        name: str,
        spec: dict[str, Any],
        every: float | timedelta | None,
        cron: str | None,
        timezone: str,
        replace: bool,
    ) -> ScheduleInfo:
        from redbeat import RedBeatSchedulerEntry  # type: ignore[import-untyped]

        when = _schedule(every, cron, timezone)
        if not replace and self._exists(name):
            raise ValidationError(f"a schedule named {name!r} exists; pass replace=True")
        spec = {**spec, "every_s": _seconds(every), "cron": cron, "timezone": timezone}
        entry = RedBeatSchedulerEntry(
            name=name,
            task=FIRE,
            schedule=when,
            args=[spec],
            app=self.bq.app,
            options={"queue": self.bq.settings.default_queue},
        )
        entry.save()
        return self.get(name)

    def get(self, name: str) -> ScheduleInfo:
        entry = self._entry(name)
        spec = dict(entry.args[0])
        meta = entry.last_run_at if entry.total_run_count else None
        due = _to_second(entry.due_at) if entry.enabled else None
        return ScheduleInfo(
            name=name,
            handler=spec["handler"],
            payload=spec.get("payload") or spec.get("study", {}),
            every_s=spec.get("every_s"),
            cron=spec.get("cron"),
            timezone=spec.get("timezone", "UTC"),
            queue=spec.get("queue"),
            priority=Priority(spec.get("priority", Priority.NORMAL)),
            tags=tuple(spec.get("tags", ())),
            enabled=entry.enabled,
            last_run_at=meta,
            total_runs=entry.total_run_count or 0,
            next_run_at=due,
        )

    def list(self) -> builtins.list[ScheduleInfo]:
        conf = self.conf
        client = self.bq.redis
        names = [str(k)[len(conf.key_prefix) :] for k in client.zrange(conf.schedule_key, 0, -1)]
        infos = []
        for name in sorted(names):
            try:
                infos.append(self.get(name))
            except KeyError:
                continue
        return infos

    def remove(self, name: str) -> bool:
        try:
            self._entry(name).delete()
        except KeyError:
            return False
        return True

    def pause(self, name: str) -> ScheduleInfo:
        return self._enable(name, False)

    def resume(self, name: str) -> ScheduleInfo:
        return self._enable(name, True)

    def next_run(self, name: str) -> datetime | None:
        return self.get(name).next_run_at

    def _enable(self, name: str, enabled: bool) -> ScheduleInfo:
        entry = self._entry(name)
        entry.enabled = enabled
        entry.save()
        return self.get(name)

    def _exists(self, name: str) -> bool:
        try:
            self._entry(name)
        except KeyError:
            return False
        return True

    def _entry(self, name: str) -> Any:
        from redbeat import RedBeatSchedulerEntry

        key = RedBeatSchedulerEntry.generate_key(self.bq.app, name)
        try:
            return RedBeatSchedulerEntry.from_key(key, app=self.bq.app)
        except KeyError:
            raise KeyError(f"no schedule named {name!r}") from None


def _to_second(moment: datetime) -> datetime:
    """redbeat's estimate lands a hair before the second (02:59:59.999): round it."""
    return (moment + timedelta(microseconds=500_000)).replace(microsecond=0)


def _seconds(every: float | timedelta | None) -> float | None:
    if every is None:
        return None
    return every.total_seconds() if isinstance(every, timedelta) else float(every)


def _schedule(every: float | timedelta | None, cron: str | None, timezone: str) -> Any:
    if (every is None) == (cron is None):
        raise ValidationError("give exactly one of every= or cron=")
    if every is not None:
        seconds = _seconds(every)
        if seconds is None or not seconds > 0:
            raise ValidationError(f"every must be a positive interval, got {every!r}")
        return schedule(run_every=timedelta(seconds=seconds))
    _check_timezone(timezone)
    fields = str(cron).split()
    if len(fields) != 5:
        raise ValidationError(
            f"cron needs five fields (minute hour day-of-month month day-of-week), got {cron!r}"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        when = crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
        when.remaining_estimate(datetime.now(UTC))  # parses every field now, not at run time
    except (ParseException, ValueError) as exc:
        raise ValidationError(f"invalid cron expression {cron!r}: {exc}") from None
    return when


def _check_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {name!r}") from None
    if name not in ("UTC", "Etc/UTC"):
        # redbeat stores a crontab without its zone; a zoned schedule that stays right
        # across DST changes needs a schedule type of our own (the schedules issue).
        raise ValidationError(f"cron schedules run in UTC for now; {name!r} is not supported yet")
