-- include: keys.lua
-- KEYS: none. ARGV: ns, then for each new task: id, retention (s), state, when (its
-- created_at), handler, queue, the number n of record arguments, then n record
-- field/value arguments.
-- A submit's new records in one call, each written as set_state would announce it: the
-- record (expiring), the state index, the event.
-- -> the number of records written
local ns = ARGV[1]
local events = K.events(ns)
local i, written = 2, 0
while i <= #ARGV do
  local id, state, at, n = ARGV[i], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 6])
  local key = K.task(ns, id)
  redis.call('HSET', key, unpack(ARGV, i + 7, i + 6 + n))
  redis.call('EXPIRE', key, ARGV[i + 1])
  redis.call('ZADD', K.state_index(ns, state), at, id)
  redis.call('XADD', events, 'MAXLEN', '~', __MAX_EVENTS__, '*', 'kind', 'task', 'id', id,
             'state', state, 'at', at, 'handler', ARGV[i + 4], 'queue', ARGV[i + 5],
             'attempt', 0)
  i, written = i + 7 + n, written + 1
end
return written
