-- include: settle.lua, runs.lua
-- transition(ns, id, key, new state, now, ttl, fields): move the non-terminal record at
-- `key` on (a terminal record keeps its final state), writing `fields` (a flat list);
-- moving a RUNNING record on ends its run (runs.lua), ending it settles its dependents.
-- -> 1 moved | 0 not
local function transition(ns, id, key, new_state, now, ttl, fields)
  local state = redis.call('HGET', key, 'state')
  if not state or is_terminal(state) then return 0 end
  set_state(ns, id, new_state, now, fields)
  if state == 'RUNNING' and new_state ~= 'RUNNING' then
    end_run(ns, id, new_state, now, ttl, fields)
  end
  redis.call('EXPIRE', key, ttl)
  if is_terminal(new_state) then settle(ns, id, new_state, now, ttl) end
  return 1
end
