-- include: pull.lua
-- ARGV: ns, now, ttl, id, type, broker priority, due_at (0: now), message -> 1 | 0
-- Offers a task to the agents (Core.send, bo_queue.core.pull); a task ended or offered already is not.
local id = ARGV[4]
local state = state_of(id)
if not state or is_terminal(state) or redis.call('HEXISTS', TASKS, id) == 1 then return 0 end
local seq = redis.call('INCR', K.pull_seq(ns)) % 1e13
-- rank < 1e14: exact through cjson, which keeps 14 digits
local meta = {type = ARGV[5], rank = tonumber(ARGV[6]) * 1e13 + seq}
redis.call('HSET', MESSAGES, id, ARGV[8])
if tonumber(ARGV[7]) > now then
  redis.call('HSET', TASKS, id, cjson.encode(meta))
  redis.call('ZADD', LATER, ARGV[7], id)
  redis.call('PERSIST', K.task(ns, id))
else
  make_ready(id, meta)
end
return 1
