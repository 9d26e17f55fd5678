"""Task and study state-change events, and the indexes that list tasks by state.

Every change of a task's state goes through one Lua function, `set_state`, inside the
script that makes the change: it moves the task between the per-state indexes
(`{ns}:state:<STATE>`, sorted by when it got there), adds a FAILED task to the failed
registry (`{ns}:failed`), and appends an event to the stream `{ns}:events`. Because the
event is written by the same script as the change, the stream has every change of a task,
in the order they happened; subscribers, metrics and webhooks read it (bo_queue.monitor)
as `Event`s. The stream is capped near `events_max_len` entries (XADD MAXLEN ~). The Lua
is in lua/set_state.lua, and lua/study_event.lua for a study's status changes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# The stream's cap where no Settings are at hand (study storage); BOQueue's task records
# use Settings.events_max_len. XADD MAXLEN ~ trims to about the latest cap given.
EVENTS_MAX_LEN = 200_000


class Event(BaseModel):
    """A task or study state change, as the stream has it."""

    stream_id: str
    kind: str  # "task" | "study"
    id: str
    state: str
    at: float
    handler: str | None = None
    queue: str | None = None
    attempt: int | None = None
    duration: float | None = None
    error: str | None = None
    message: str | None = None


def parse_event(stream_id: str, fields: dict[str, str]) -> Event:
    """An entry of the stream as an Event (the scripts write "" for a field they lack)."""
    data: dict[str, Any] = {"stream_id": stream_id, **fields}
    return Event.model_validate({k: (v if v != "" else None) for k, v in data.items()})


def stream_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as redis-py returns them (decoded): [(id, fields), ...]."""
    return [(str(i), dict(fields)) for i, fields in reply or []]
