"""Task and study state-change events, and the indexes that list tasks by state.

Every change of a task's state goes through one Lua function, `set_state`, inside the
script that makes the change: it moves the task between the per-state indexes
(`{ns}:state:<STATE>`, sorted by when it got there), adds a FAILED task to the failed
registry (`{ns}:failed`), and appends an event to the stream `{ns}:events`. Because the
event is written by the same script as the change, the stream has every change of a task,
in the order they happened; subscribers and metrics read it (bo_queue.monitor.manager). The
stream is capped near `events_max_len` entries (XADD MAXLEN ~).
"""

from __future__ import annotations

# The stream's cap where no Settings are at hand (study storage); BOQueue's task records
# use Settings.events_max_len. XADD MAXLEN ~ trims to about the latest cap given.
EVENTS_MAX_LEN = 200_000

# Shared Lua; `lua()` fills in __MAX_EVENTS__.
_SET_STATE = """
local function is_terminal(state)
  return state == 'SUCCEEDED' or state == 'FAILED' or state == 'CANCELLED' or state == 'EXPIRED'
end
-- Move task `id` to `state`, writing `fields` (a flat list) with it; index and announce it.
local function set_state(ns, id, state, now, fields)
  local key = ns .. ':task:' .. id
  local old = redis.call('HGET', key, 'state')
  redis.call('HSET', key, 'state', state, unpack(fields or {}))
  if old then redis.call('ZREM', ns .. ':state:' .. old, id) end
  redis.call('ZADD', ns .. ':state:' .. state, now, id)
  if state == 'FAILED' then redis.call('ZADD', ns .. ':failed', now, id) end
  -- out of the queue: the message kept in case Redis loses it is no longer needed
  if state ~= 'QUEUED' and state ~= 'PENDING' then redis.call('HDEL', ns .. ':outbox', id) end
  local info = redis.call('HMGET', key, 'handler', 'queue', 'attempts', 'started_at')
  local error = nil  -- this change's own reason, never one an earlier attempt left
  for i = 1, #(fields or {}) - 1, 2 do
    if fields[i] == 'error' then error = fields[i + 1] end
  end
  local event = {'kind', 'task', 'id', id, 'state', state, 'at', tostring(now),
                 'handler', info[1] or '', 'queue', info[2] or '', 'attempt', info[3] or '0'}
  if is_terminal(state) then
    if info[4] and state ~= 'EXPIRED' then
      table.insert(event, 'duration')
      table.insert(event, tostring(math.max(0, now - tonumber(info[4]))))
    end
    if error then
      table.insert(event, 'error')
      table.insert(event, error)
    end
  end
  redis.call('XADD', ns .. ':events', 'MAXLEN', '~', __MAX_EVENTS__, '*', unpack(event))
end
"""

# KEYS: events stream. ARGV: study id, status, message, now. (Appended to study scripts.)
STUDY_EVENT = """
local function study_event(stream, id, status, message, now)
  redis.call('XADD', stream, 'MAXLEN', '~', __MAX_EVENTS__, '*', 'kind', 'study', 'id', id,
             'state', status, 'at', tostring(now), 'message', message)
end
"""


def lua(max_len: int, *parts: str) -> str:
    """The state-change helpers, then `parts`, with the stream cap filled in."""
    return (_SET_STATE + "".join(parts)).replace("__MAX_EVENTS__", str(int(max_len)))
