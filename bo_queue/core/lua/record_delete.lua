-- include: keys.lua, terminal.lua
-- KEYS: record, Celery's result key (or none: the results live on another server).
-- ARGV: ns, id.
-- -> false (no such task) | the task's state: 'deleted' if it was deleted (it had
--    ended), else the state it is in (it has not ended: nothing was deleted).
-- bq.delete: an ended task and everything bo_queue keeps about it, in one step.
local ns, id = ARGV[1], ARGV[2]
local record = KEYS[1]
local state = redis.call('HGET', record, 'state')
if not state then return false end
if not is_terminal(state) then return state end
local info = redis.call('HMGET', record, 'tags', 'parent_id', 'depends_on')
local ok, tags = pcall(cjson.decode, info[1] or '[]')
if ok and type(tags) == 'table' then
  for _, tag in ipairs(tags) do redis.call('SREM', K.tag(ns, tag), id) end
end
if info[2] and info[2] ~= '' then redis.call('SREM', K.children(ns, info[2]), id) end
local ok2, deps = pcall(cjson.decode, info[3] or '[]')
if ok2 and type(deps) == 'table' then
  for _, dep in ipairs(deps) do redis.call('SREM', K.dependents(ns, dep), id) end
end
redis.call('ZREM', K.state_index(ns, state), id)
redis.call('ZREM', K.failed(ns), id)
redis.call('HDEL', K.outbox(ns), id)
redis.call('HDEL', K.parked(ns), id)
redis.call('HDEL', K.paused(ns), id)
redis.call('ZREM', K.delayed(ns), id)
redis.call('HDEL', K.delayed_specs(ns), id)
-- a pull task cancelled while it waited is still in its type's queue until a claim or a
-- sweep drops it (bo_queue.agents)
local pulled = redis.call('HGET', K.pull_tasks(ns), id)
if pulled then
  local ok3, meta = pcall(cjson.decode, pulled)
  if ok3 and type(meta) == 'table' and meta.type then
    redis.call('ZREM', K.pull_ready(ns, meta.type), id)
  end
  redis.call('HDEL', K.pull_tasks(ns), id)
end
redis.call('HDEL', K.pull_messages(ns), id)
redis.call('ZREM', K.pull_leases(ns), id)
redis.call('ZREM', K.pull_later(ns), id)
redis.call('DEL', record, K.children(ns, id), K.dependents(ns, id), K.waiting(ns, id),
           K.checkpoint(ns, id), K.cancelled(ns, id), K.runs(ns, id))
if KEYS[2] then redis.call('DEL', KEYS[2]) end
return 'deleted'
