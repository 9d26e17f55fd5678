-- include: settle.lua, runs.lua
-- KEYS: record. ARGV: ns, id, new state, now, ttl, then field/value pairs.
-- Moves a non-terminal record on; a terminal record keeps its final state. Moving a
-- RUNNING record on ends its run (runs.lua).
-- -> reply(1 moved | 0 not) (settle.lua)
local ns, now, ttl = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HGET', KEYS[1], 'state')
if not state or is_terminal(state) then return reply(0) end
local fields = {}
for i = 6, #ARGV do table.insert(fields, ARGV[i]) end
set_state(ns, ARGV[2], ARGV[3], now, fields)
if state == 'RUNNING' and ARGV[3] ~= 'RUNNING' then
  end_run(ns, ARGV[2], ARGV[3], now, ttl, fields)
end
redis.call('EXPIRE', KEYS[1], ttl)
if is_terminal(ARGV[3]) then settle(ns, ARGV[2], ARGV[3], now, ttl) end
return reply(1)
