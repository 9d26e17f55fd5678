-- include: settle.lua
-- KEYS: record, cancel flag. ARGV: ns, id, now, ttl, reason.
-- -> reply(false (no such task) | the state before the cancel) (settle.lua)
local ns, now, ttl = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return reply(false) end
if is_terminal(state) then return reply(state) end
redis.call('SET', KEYS[2], ARGV[5], 'EX', ttl)
if state == 'RUNNING' then return reply(state) end
set_state(ns, ARGV[2], 'CANCELLED', now, {'finished_at', ARGV[3], 'error', ARGV[5]})
unpark(ns, ARGV[2], ttl)  -- a parked dependent's record expires again from now
settle(ns, ARGV[2], 'CANCELLED', now, ttl)
return reply(state)
