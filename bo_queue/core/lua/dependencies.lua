-- include: set_state.lua
-- Helpers of the dependency scripts (bo_queue.core.dependencies). Key names are built from
-- the namespace (ARGV), so these scripts need a single Redis server, as the rest of
-- bo_queue does.
local function extend(key, ttl)
  local left = redis.call('TTL', key)
  if left == -1 or left < ttl then redis.call('EXPIRE', key, ttl) end
end
-- A parked dependent never expires (its dependencies may be due days later); once it
-- leaves the park, its record counts its retention again.
local function unpark(ns, id, ttl)
  redis.call('HDEL', K.parked(ns), id)
  redis.call('HDEL', K.paused(ns), id)  -- a paused task's held message (bq.pause)
  redis.call('EXPIRE', K.task(ns, id), ttl)
  redis.call('EXPIRE', K.waiting(ns, id), ttl)
end
-- Schedule a parked dependent to be sent (due at its own due time, or now). A PAUSED one
-- is sent too, and stays PAUSED: the worker that takes it holds it back (record_start.lua),
-- and bq.resume makes it QUEUED.
local function release(ns, id, now, ttl)
  local spec = redis.call('HGET', K.parked(ns), id)
  if not spec then return 0 end
  local due = tonumber(redis.call('HGET', K.task(ns, id), 'due_at') or now)
  if due <= now then
    due = now
    if redis.call('HGET', K.task(ns, id), 'state') == 'PAUSED' then
      redis.call('HSET', K.task(ns, id), 'paused_from', 'QUEUED')
    else
      set_state(ns, id, 'QUEUED', now)
    end
  end
  unpark(ns, id, ttl + math.ceil(due - now))  -- retention counts from when it is due
  redis.call('HSET', K.delayed_specs(ns), id, spec)
  redis.call('ZADD', K.delayed(ns), due, id)
  return 1
end
local function cancel_waiting(ns, id, now, ttl, reason)
  set_state(ns, id, 'CANCELLED', now, {'finished_at', now, 'error', reason})
  redis.call('SET', K.cancelled(ns, id), reason, 'EX', ttl)
  unpark(ns, id, ttl)
end
