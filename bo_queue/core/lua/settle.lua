-- include: dependencies.lua
-- settle(ns, id, state, now, ttl): `id` has just ended in `state`; walk its dependents
-- (and, for cancellations, theirs). What it did adds up in `settled`.
--
-- Every script that can end a task settles its dependents in the same call, and replies
-- reply(main, extra): {main, extra (nil if none), how many dependents were released to be
-- sent, then the ids of the dependents cancelled}, what bo_queue.core.dependencies'
-- settled_reply reads.
local settled = {released = 0, cancelled = {}}
local function settle(ns, root, root_state, now, ttl)
  local ids, states = {root}, {root_state}
  local i = 1
  while i <= #ids do
    local id, state = ids[i], states[i]
    i = i + 1
    local dependents = redis.call('SMEMBERS', K.dependents(ns, id))
    if #dependents > 0 then extend(K.dependents(ns, id), ttl) end  -- as its record
    for _, dep in ipairs(dependents) do
      local rkey = K.task(ns, dep)
      local dep_state = redis.call('HGET', rkey, 'state')
      if dep_state == 'PENDING' or dep_state == 'PAUSED' then
        local waiting = K.waiting(ns, dep)
        if state == 'SUCCEEDED' or redis.call('HGET', rkey, 'on_dependency_failure') == 'run' then
          redis.call('SREM', waiting, id)
          if redis.call('SCARD', waiting) == 0 then
            settled.released = settled.released + release(ns, dep, now, ttl)
          end
        else
          cancel_waiting(ns, dep, now, ttl, 'dependency ' .. id .. ' ' .. state)
          table.insert(settled.cancelled, dep)
          table.insert(ids, dep)
          table.insert(states, 'CANCELLED')
        end
      end
    end
  end
end
local function reply(main, extra)
  local out = {main, extra or false, settled.released}
  for _, id in ipairs(settled.cancelled) do table.insert(out, id) end
  return out
end
