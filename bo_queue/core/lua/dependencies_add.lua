-- include: dependencies.lua
-- ARGV: ns, id, ttl, now, dependency ids...
-- -> {'added', how many dependencies it now waits on} | {'gone'} (no such task) |
--    {'started', state} | {'unknown', dependency} | {'failed', dependency, its state}
-- bq.add_dependency: a task that has not started (PENDING, QUEUED, PAUSED) also waits
-- on these. Everything is checked before anything is written. A QUEUED task whose
-- message is in its queue becomes PENDING; the worker that takes the message holds it
-- where dependents wait (record_start.lua), and their release sends it.
local ns, id, ttl, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rkey = K.task(ns, id)
local state = redis.call('HGET', rkey, 'state')
if not state then return {'gone'} end
if state ~= 'PENDING' and state ~= 'QUEUED' and state ~= 'PAUSED' then
  return {'started', state}
end
local run_anyway = redis.call('HGET', rkey, 'on_dependency_failure') == 'run'
local states = {}
for i = 5, #ARGV do
  local dep_state = redis.call('HGET', K.task(ns, ARGV[i]), 'state')
  if not dep_state then return {'unknown', ARGV[i]} end
  if is_terminal(dep_state) and dep_state ~= 'SUCCEEDED' and not run_anyway then
    return {'failed', ARGV[i], dep_state}
  end
  states[i] = dep_state
end
local ok, deps = pcall(cjson.decode, redis.call('HGET', rkey, 'depends_on') or '[]')
if not ok or type(deps) ~= 'table' then deps = {} end
local have = {}
for _, dep in ipairs(deps) do have[dep] = true end
for i = 5, #ARGV do
  local dep = ARGV[i]
  if not have[dep] then
    table.insert(deps, dep)
    have[dep] = true
  end
  local links, left = K.dependents(ns, dep), redis.call('TTL', K.task(ns, dep))
  redis.call('SADD', links, id)
  if left == -1 then redis.call('PERSIST', links) else extend(links, math.max(ttl, left)) end
  if not is_terminal(states[i]) then redis.call('SADD', K.waiting(ns, id), dep) end
end
redis.call('HSET', rkey, 'depends_on', cjson.encode(deps))
redis.call('HSETNX', rkey, 'on_dependency_failure', 'cancel')
local waiting = redis.call('SCARD', K.waiting(ns, id))
if waiting > 0 then
  if state == 'QUEUED' then set_state(ns, id, 'PENDING', now) end
  redis.call('PERSIST', rkey)  -- as a dependent parked at submit: unpark expires it again
  redis.call('PERSIST', K.waiting(ns, id))
end
return {'added', waiting}
