-- include: set_state.lua
-- KEYS: record. ARGV: ns, id, now, ttl.
-- -> false (no such task) | {state before, 1 if a held message was scheduled to be sent
--    now (the caller sends it), else 0, the state it is in now}. Only a PAUSED task changes: it becomes PENDING
--    if it waits on dependencies (its held message goes where dependents wait), else
--    QUEUED if a worker held its message back (sent again), else what it was paused from.
local ns, id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'PAUSED' then return {state, 0, state} end
local held = redis.call('HGET', K.paused(ns), id)
local back = redis.call('HGET', KEYS[1], 'paused_from') or 'QUEUED'
local sent = 0
local waiting = redis.call('SCARD', K.waiting(ns, id)) > 0
if waiting then
  back = 'PENDING'
  if held then redis.call('HSET', K.parked(ns), id, held) end
elseif held then
  back = 'QUEUED'
  redis.call('HSET', K.delayed_specs(ns), id, held)
  redis.call('ZADD', K.delayed(ns), now, id)
  sent = 1
end
redis.call('HDEL', K.paused(ns), id)
redis.call('HDEL', KEYS[1], 'paused_from')
set_state(ns, id, back, now)
if not waiting then  -- a waiting dependent stays without expiry, as dependents do
  local due = tonumber(redis.call('HGET', KEYS[1], 'due_at') or now)
  redis.call('EXPIRE', KEYS[1], ttl + math.ceil(math.max(0, due - now)))
end
return {state, sent, back}
