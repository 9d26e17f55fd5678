-- include: keys.lua, terminal.lua
-- set_state (bo_queue.core.events): every change of a task's state goes through it.
-- Move task `id` to `state`, writing `fields` (a flat list) with it; index and announce it.
local function set_state(ns, id, state, now, fields)
  local key = K.task(ns, id)
  local old = redis.call('HGET', key, 'state')
  redis.call('HSET', key, 'state', state, unpack(fields or {}))
  if old then redis.call('ZREM', K.state_index(ns, old), id) end
  redis.call('ZADD', K.state_index(ns, state), now, id)
  if state == 'FAILED' then redis.call('ZADD', K.failed(ns), now, id) end
  -- out of the queue: the message kept in case Redis loses it is no longer needed
  -- (a PAUSED task's message may still be in its queue: bq.resume lets it run)
  if state ~= 'QUEUED' and state ~= 'PENDING' and state ~= 'PAUSED' then
    redis.call('HDEL', K.outbox(ns), id)
  end
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
  redis.call('XADD', K.events(ns), 'MAXLEN', '~', __MAX_EVENTS__, '*', unpack(event))
end
