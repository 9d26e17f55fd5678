"""Task and study state-change events, and the indexes that list tasks by state.

Every change of a task's state goes through one Lua function, `set_state`, inside the
script that makes the change: it moves the task between the per-state indexes
(`{ns}:state:<STATE>`, sorted by when it got there), adds a FAILED task to the failed
registry (`{ns}:failed`), and appends an event to the stream `{ns}:events`. Because the
event is written by the same script as the change, the stream has every change of a task,
in the order they happened; subscribers and metrics read it (bo_queue.monitor.manager). The
stream is capped near `events_max_len` entries (XADD MAXLEN ~). The Lua is in
lua/set_state.lua, and lua/study_event.lua for a study's status changes.
"""

from __future__ import annotations

# The stream's cap where no Settings are at hand (study storage); BOQueue's task records
# use Settings.events_max_len. XADD MAXLEN ~ trims to about the latest cap given.
EVENTS_MAX_LEN = 200_000
