-- include: keys.lua
-- KEYS: none. ARGV: ns, the number of records, then for each new task: id, retention (s),
-- state, when (its created_at), handler, queue, the number n of record arguments, then
-- n record field/value arguments; then writes of the messages sent with them, each
-- 'hset' or 'lpush', a key, the number m of values, then m values (RecordStore's Sends).
-- A submit's new records in one call, each written as set_state would announce it: the
-- record (expiring), the state index, the event; then their messages' outbox entries
-- and pushes, after every record (bo_queue.core.outbox).
-- -> the number of records written
local ns = ARGV[1]
local events = K.events(ns)
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local id, state, at, n = ARGV[i], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 6])
  local key = K.task(ns, id)
  redis.call('HSET', key, unpack(ARGV, i + 7, i + 6 + n))
  redis.call('EXPIRE', key, ARGV[i + 1])
  redis.call('ZADD', K.state_index(ns, state), at, id)
  redis.call('XADD', events, 'MAXLEN', '~', __MAX_EVENTS__, '*', 'kind', 'task', 'id', id,
             'state', state, 'at', at, 'handler', ARGV[i + 4], 'queue', ARGV[i + 5],
             'attempt', 0)
  i = i + 7 + n
end
while i <= #ARGV do
  local m = tonumber(ARGV[i + 2])
  -- in slices: unpack puts its values on Lua's stack, which holds some thousands
  for first = i + 3, i + 2 + m, 1000 do
    redis.call(ARGV[i], ARGV[i + 1], unpack(ARGV, first, math.min(first + 999, i + 2 + m)))
  end
  i = i + 3 + m
end
return tonumber(ARGV[2])
