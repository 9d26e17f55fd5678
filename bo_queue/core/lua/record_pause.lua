-- include: set_state.lua
-- KEYS: record. ARGV: ns, id, now.
-- -> false (no such task) | the state it was in: PENDING or QUEUED (now PAUSED), PAUSED
--    (nothing to do), or another state (it has started or ended: nothing changed).
-- bq.pause: the message stays where it is; a worker that takes it holds it back
-- (record_start.lua), and bq.resume (record_resume.lua) makes the task what it was.
local ns, id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state ~= 'PENDING' and state ~= 'QUEUED' then return state end
redis.call('HSET', KEYS[1], 'paused_from', state)
set_state(ns, id, 'PAUSED', now)
redis.call('PERSIST', KEYS[1])  -- paused for as long as it takes
return state
