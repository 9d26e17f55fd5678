-- include: pull.lua
-- ARGV: ns, now, ttl, agent -> reply(json {held, cancelled, revoked})
local agent = ARGV[4]
touch(agent)
maintain(__BATCH__)
out.held, out.cancelled = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', agent_tasks(agent))) do
  local meta = held_by(id, agent)
  if not meta then
    redis.call('SREM', agent_tasks(agent), id)
  elseif cancel_reason(id) then
    revoke(id, meta, 'CANCELLED', cancel_reason(id))
    table.insert(out.cancelled, id)
  else
    local until_ = now + meta.lease_s
    if until_ > tonumber(redis.call('ZSCORE', LEASES, id) or 0) then
      redis.call('ZADD', LEASES, until_, id)
    end
    extend(K.task(ns, id), ttl + math.ceil(meta.lease_s))
    table.insert(out.held, id)
  end
end
return reply(cjson.encode(out))
