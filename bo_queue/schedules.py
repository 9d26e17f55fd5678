"""Dynamic schedules (`bq.schedules`), kept in Redis by celery-redbeat so they survive a
beat restart and are picked up by a running beat without restarting it.

A schedule fires `bo_queue.schedule.fire` (a built-in handler), which submits the target
through the facade: scheduled tasks get records, tags and cancellation like any other.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab, schedule
from pydantic import BaseModel, ConfigDict

from bo_queue.core.requests import task_request
from bo_queue.errors import ValidationError, shown
from bo_queue.states import Priority
from bo_queue.validation import MAX_HORIZON_S

if TYPE_CHECKING:
    from bo_queue.core.kernel import Core
    from bo_queue.studies.manager import StudyManager
    from bo_queue.studies.models import StudySpec

FIRE = "bo_queue.schedule.fire"
# Not starting with ':': redbeat keeps its own keys next to the entries, as
# "{prefix}:schedule" and "{prefix}:lock", so ":lock" would be beat's lock.
_NAME = re.compile(r"[A-Za-z0-9_.-][A-Za-z0-9_.:-]{0,199}")
# redbeat's JSON decoder turns any object with this key back into a datetime, a crontab,
# ... (or fails): a payload with it would not read back as it was sent.
_REDBEAT_TYPE = "__type__"


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
    def __init__(self, bq: Core, studies: Callable[[], StudyManager]) -> None:
        self.studies = studies  # built on first use: a schedule that starts a study
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
        _check_name(name)
        request = task_request(
            handler=handler,
            payload={} if payload is None else payload,
            priority=priority,
            queue=queue,
            tags=tags,
        )
        self.bq.check(request)  # the same checks as a submit: handler, queue, payload
        _check_storable(request.payload, "payload")
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
        from bo_queue.studies.manager import parse_spec

        _check_name(name)
        spec = parse_spec(template).check_runnable()
        _check_storable(spec.model_dump(mode="json"), "template")
        if spec.evaluator is not None:
            self.studies().check_evaluator(spec.evaluator)
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
        when = _schedule(every, cron, timezone)
        if not replace and self._exists(name):
            raise ValidationError(f"a schedule named {name!r} exists; pass replace=True")
        spec = {**spec, "every_s": _seconds(every), "cron": cron, "timezone": timezone}
        entry = entry_class()(
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
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise KeyError(f"no schedule named {shown(name)}")  # none can have that name
        entries = entry_class()
        key = entries.generate_key(self.bq.app, name)
        try:
            return entries.from_key(key, app=self.bq.app)
        except KeyError:
            raise KeyError(f"no schedule named {name!r}") from None


def _to_second(moment: datetime) -> datetime:
    """redbeat's estimate lands a hair before the second (02:59:59.999): round it."""
    return (moment + timedelta(microseconds=500_000)).replace(microsecond=0)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            f"invalid schedule name {shown(name)} (1-200 of letters, digits and _.:-, "
            f"not starting with ':')"
        )


def _check_storable(value: Any, what: str) -> None:
    """What redbeat's JSON decoder would read back as something else."""
    stack = [value]
    while stack:  # iteratively: no depth is too deep
        item = stack.pop()
        if isinstance(item, dict):
            if _REDBEAT_TYPE in item:
                raise ValidationError(
                    f"a schedule's {what} cannot have a {_REDBEAT_TYPE!r} key (the schedule "
                    f"store reads such objects back as dates and schedules)"
                )
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _seconds(every: float | timedelta | None) -> float | None:
    """`every` in seconds; ValidationError unless a positive interval of at most ten years
    (a timedelta can hold a microsecond at the least, and beat adds it to dates)."""

    if every is None:
        return None
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int | float) and not isinstance(every, bool):
        seconds = float(every) if abs(every) < 1e300 else math.inf
    else:
        raise ValidationError(f"every must be seconds or a timedelta, not {shown(every)}")
    if not (0 < seconds <= MAX_HORIZON_S and timedelta(seconds=seconds)):
        raise ValidationError(
            f"every must be a positive interval of at most ten years, got {shown(every)}"
        )
    return seconds


def _schedule(every: float | timedelta | None, cron: str | None, timezone: str) -> Any:
    if (every is None) == (cron is None):
        raise ValidationError("give exactly one of every= or cron=")
    _check_timezone(timezone)  # stored with the schedule either way
    if every is not None:
        return schedule(run_every=timedelta(seconds=_seconds(every) or 0))
    if not isinstance(cron, str):
        raise ValidationError(f"cron must be a string such as '0 3 * * *', not {shown(cron)}")
    fields = cron.split()
    if len(fields) != 5:
        raise ValidationError(
            f"cron needs five fields (minute hour day-of-month month day-of-week), "
            f"got {shown(cron)}"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        when = ZonedCrontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
            zone=timezone,
        )
        when.remaining_estimate(datetime.now(UTC))  # parses every field now, not at run time
    except (ParseException, ValueError) as exc:
        raise ValidationError(f"invalid cron expression {shown(cron)}: {exc}") from None
    return when


def _check_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise ValidationError(f"unknown time zone {shown(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"unknown time zone {name!r}") from None


class ZonedCrontab(crontab):
    """A crontab read on the wall clock of a time zone: "0 3 * * *" in Europe/Berlin runs
    at 03:00 there all year (23 or 25 hours apart across DST changes). On the night the
    clocks go forward a time that does not exist runs once, as soon as the clock passes
    it (02:30 -> 03:30); when they go back a time that occurs twice runs once, the first."""

    def __init__(self, *args: Any, zone: str = "UTC", **kwargs: Any) -> None:
        self.zone = ZoneInfo(zone)
        super().__init__(*args, **kwargs)

    @property
    def tz(self) -> ZoneInfo:  # type: ignore[override]
        return self.zone

    def now(self) -> datetime:
        clock = getattr(self, "nowfun", None)  # Celery's test clock, when set
        now: datetime = clock() if clock else datetime.now(UTC)
        return now.astimezone(self.zone)


def next_run(cron: str, timezone: str, after: datetime) -> datetime:
    """When a cron schedule next runs after `after` (aware), as an aware UTC datetime."""
    when = _schedule(None, cron, timezone)
    when.nowfun = lambda: after
    result: datetime = (after + when.remaining_estimate(after)).astimezone(UTC)
    return result


def zoned(definition: dict[str, Any]) -> dict[str, Any]:
    """redbeat stores a crontab without its time zone; the zone travels in the schedule's
    arguments, and this puts it back (for entries read from Redis)."""
    when, args = definition.get("schedule"), definition.get("args") or [{}]
    zone = args[0].get("timezone", "UTC") if isinstance(args[0], dict) else "UTC"
    if isinstance(when, crontab) and not isinstance(when, ZonedCrontab) and zone != "UTC":
        fields = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        spec = {name: getattr(when, f"_orig_{name}") for name in fields}  # as written
        definition["schedule"] = ZonedCrontab(**spec, zone=zone)
    return definition


def static_schedules(path: str) -> dict[str, dict[str, Any]]:
    """celery beat entries from a TOML file of schedules, each a table like

        [schedules.nightly-report]
        handler = "reports.build"
        cron = "0 3 * * *"            # or: every = 60 (seconds)
        timezone = "Europe/Berlin"    # default UTC
        payload = { parts = 10 }
        queue = "default"; priority = "high"; tags = ["nightly"]

    Every field is checked here, so a bad file stops beat at start with a clear error."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            tables = tomllib.load(handle).get("schedules", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"cannot read the schedule file {path}: {exc}") from None
    entries = {}
    for name, table in tables.items():
        table = dict(table)
        try:
            when = _schedule(
                table.pop("every", None), table.get("cron"), table.get("timezone", "UTC")
            )
            request = task_request(
                handler=table.pop("handler"),
                payload=table.pop("payload", {}),
                priority=table.pop("priority", "normal"),
                queue=table.get("queue"),
                tags=tuple(table.pop("tags", ())),
            )
        except (ValidationError, KeyError) as exc:
            raise ValidationError(f"schedule {name!r} in {path}: {exc}") from None
        unknown = set(table) - {"cron", "timezone", "queue"}
        if unknown:
            raise ValidationError(f"schedule {name!r} in {path}: unknown keys {sorted(unknown)}")
        spec = {
            "name": name,
            "handler": request.handler,
            "payload": request.payload,
            "queue": request.queue,
            "priority": int(request.priority),
            "tags": list(request.tags),
            "cron": table.get("cron"),
            "timezone": table.get("timezone", "UTC"),
        }
        entries[name] = {"task": FIRE, "schedule": when, "args": [spec]}
    return entries


def entry_class() -> Any:
    """redbeat's entry, reading zoned crontabs back with their zone (see zoned())."""
    from redbeat import RedBeatSchedulerEntry  # type: ignore[import-untyped]

    class ZonedEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
        @staticmethod
        def decode_definition(definition: Any) -> dict[str, Any]:
            return zoned(RedBeatSchedulerEntry.decode_definition(definition))

    return ZonedEntry
