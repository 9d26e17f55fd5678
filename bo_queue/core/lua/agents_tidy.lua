-- include: pull.lua
-- ARGV: ns, now, ttl, type, ids... -> reply(json {dropped}): drops ids that ended while they
-- waited (cancelled) from a type's queue.
out.dropped = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local state = state_of(id)
  if not state or is_terminal(state) then
    local meta = meta_of(id)
    if not (meta and meta.agent) and redis.call('ZREM', K.pull_ready(ns, ARGV[4]), id) == 1 then
      drop(id, meta, state)
      out.dropped = out.dropped + 1
    end
  end
end
return reply(cjson.encode(out))
