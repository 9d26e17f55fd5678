-- include: dependencies.lua
-- ARGV: ns, id, now, ttl, message JSON, dependency ids...
-- -> {'queued'} | {'waiting'} | {'cancelled', dependency, its state} | {'gone', state}
-- Registers a new PENDING record as waiting on each dependency that has not ended.
local ns, id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local rkey = K.task(ns, id)
local own = redis.call('HGET', rkey, 'state')
if own ~= 'PENDING' then return {'gone', own or 'UNKNOWN'} end  -- cancelled since written
local run_anyway = redis.call('HGET', rkey, 'on_dependency_failure') == 'run'
for i = 6, #ARGV do
  local dep = ARGV[i]
  local state = redis.call('HGET', K.task(ns, dep), 'state')
  if state then  -- the link, even to a dependency that has ended, is what graph() reads
    local links, left = K.dependents(ns, dep), redis.call('TTL', K.task(ns, dep))
    redis.call('SADD', links, id)
    if left == -1 then redis.call('PERSIST', links) else extend(links, math.max(ttl, left)) end
  end
  if state ~= 'SUCCEEDED' then
    if not state or is_terminal(state) then
      if not run_anyway then
        local reason = 'dependency ' .. dep .. ' ' .. (state or 'UNKNOWN')
        cancel_waiting(ns, id, now, ttl, reason)
        return {'cancelled', dep, state or 'UNKNOWN'}
      end
    else
      redis.call('SADD', K.waiting(ns, id), dep)
    end
  end
end
redis.call('HSET', K.parked(ns), id, ARGV[5])
if redis.call('SCARD', K.waiting(ns, id)) == 0 then
  release(ns, id, now, ttl)
  return {'queued'}
end
redis.call('PERSIST', rkey)
redis.call('PERSIST', K.waiting(ns, id))
return {'waiting'}
