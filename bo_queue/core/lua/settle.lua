-- include: dependencies.lua
-- settle(ns, id, state, now, ttl) -> {released count, cancelled id...}: `id` has just
-- ended in `state`; walk its dependents (and, for cancellations, theirs).
local function settle(ns, root, root_state, now, ttl)
  local ids, states, released, out = {root}, {root_state}, 0, {}
  local i = 1
  while i <= #ids do
    local id, state = ids[i], states[i]
    i = i + 1
    local dependents = redis.call('SMEMBERS', K.dependents(ns, id))
    if #dependents > 0 then extend(K.dependents(ns, id), ttl) end  -- as its record
    for _, dep in ipairs(dependents) do
      local rkey = K.task(ns, dep)
      if redis.call('HGET', rkey, 'state') == 'PENDING' then
        local waiting = K.waiting(ns, dep)
        if state == 'SUCCEEDED' or redis.call('HGET', rkey, 'on_dependency_failure') == 'run' then
          redis.call('SREM', waiting, id)
          if redis.call('SCARD', waiting) == 0 then
            released = released + release(ns, dep, now, ttl)
          end
        else
          cancel_waiting(ns, dep, now, ttl, 'dependency ' .. id .. ' ' .. state)
          table.insert(out, dep)
          table.insert(ids, dep)
          table.insert(states, 'CANCELLED')
        end
      end
    end
  end
  table.insert(out, 1, released)
  return out
end
