"""Cron parsing and next-run computation, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bo_queue import ValidationError
from bo_queue.schedules import ZonedCrontab, next_run, zoned


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        # 03:00 in Berlin: 02:00 UTC in winter, 01:00 UTC in summer
        ("0 3 * * *", "Europe/Berlin", utc(2026, 3, 28, 2, 0, 1), utc(2026, 3, 29, 1, 0)),
        ("0 3 * * *", "Europe/Berlin", utc(2026, 10, 24, 1, 0, 1), utc(2026, 10, 25, 2, 0)),
        # clocks go forward at 02:00 on 29 March: 02:30 does not exist, it runs at 03:30
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 1, 30, 1), utc(2026, 3, 29, 1, 30)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1, 30, 1), utc(2026, 3, 30, 0, 30)),
        # clocks go back at 03:00 on 25 October: 02:30 happens twice, it runs once (first)
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 0, 30, 1), utc(2026, 10, 25, 0, 30)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 30, 1), utc(2026, 10, 26, 1, 30)),
        # New York's spring change is on 8 March 2026
        ("0 9 * * 1-5", "America/New_York", utc(2026, 3, 6, 14, 0, 1), utc(2026, 3, 9, 13, 0)),
        ("*/15 * * * *", "UTC", utc(2026, 1, 1, 0, 7), utc(2026, 1, 1, 0, 15)),
        ("0 0 1 * *", "UTC", utc(2026, 1, 15), utc(2026, 2, 1)),
    ],
)
def test_next_run(cron: str, zone: str, after: datetime, expected: datetime) -> None:
    assert next_run(cron, zone, after) == expected


@pytest.mark.parametrize(
    ("cron", "zone", "problem"),
    [
        ("61 * * * *", "UTC", "invalid cron"),
        ("* * 32 * *", "UTC", "invalid cron"),
        ("* * * *", "UTC", "five fields"),
        ("0 3 * * mon-xyz", "UTC", "invalid cron"),
        ("0 3 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_cron_is_a_validation_error(cron: str, zone: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        next_run(cron, zone, utc(2026, 1, 1))


def test_the_zone_survives_storage_as_a_plain_crontab() -> None:
    """redbeat stores a crontab without its zone; zoned() puts it back from the args."""
    from celery.schedules import crontab

    stored = {"schedule": crontab(minute="0", hour="3"),
              "args": [{"timezone": "Europe/Berlin"}]}
    restored = zoned(stored)["schedule"]
    assert isinstance(restored, ZonedCrontab) and str(restored.zone) == "Europe/Berlin"
    assert restored.hour == {3} and restored.minute == {0}
    utc_only = zoned({"schedule": crontab(minute="0"), "args": [{"timezone": "UTC"}]})
    assert not isinstance(utc_only["schedule"], ZonedCrontab)


def test_static_schedule_files_are_checked(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from bo_queue.schedules import FIRE, static_schedules

    root = Path(str(tmp_path))
    good = root / "good.toml"
    good.write_text('[schedules.nightly]\nhandler = "reports.build"\ncron = "0 3 * * *"\n'
                    'timezone = "Europe/Berlin"\npriority = "high"\n')
    entry = static_schedules(str(good))["nightly"]
    assert entry["task"] == FIRE and isinstance(entry["schedule"], ZonedCrontab)
    assert entry["args"][0]["handler"] == "reports.build" and entry["args"][0]["priority"] == 2
    for body, problem in [
        ('[schedules.x]\nhandler = "h"\ncron = "99 * * * *"\n', "invalid cron"),
        ('[schedules.x]\nhandler = "h"\nevery = 0\n', "positive"),
        ('[schedules.x]\nhandler = "h"\nevery = 5\ncolour = "red"\n', "unknown keys"),
        ('[schedules.x]\nevery = 5\n', "handler"),
        ("not toml at all [", "cannot read"),
    ]:
        bad = root / "bad.toml"
        bad.write_text(body)
        with pytest.raises(ValidationError, match=problem):
            static_schedules(str(bad))
