-- include: pull.lua
-- ARGV: ns, now, ttl, agent, then (type, lease_s) pairs.
-- -> reply(json {claimed?, busy?, revoked}, message?)
local agent = ARGV[4]
touch(agent)
maintain(__BATCH__)
local skipped = 0
while true do
  local best, rank, kind, lease = nil, nil, nil, nil
  for i = 5, #ARGV - 1, 2 do
    local top = redis.call('ZRANGE', K.pull_ready(ns, ARGV[i]), 0, 0, 'WITHSCORES')
    if top[1] and (not best or tonumber(top[2]) < rank) then
      best, rank, kind, lease = top[1], tonumber(top[2]), ARGV[i], tonumber(ARGV[i + 1])
    end
  end
  if not best then return reply(cjson.encode(out)) end
  if skipped >= __SKIP__ then
    out.busy = true
    return reply(cjson.encode(out))
  end
  redis.call('ZREM', K.pull_ready(ns, kind), best)
  local rkey = K.task(ns, best)
  local meta, state = meta_of(best), state_of(best)
  local message = redis.call('HGET', MESSAGES, best)
  local expires = tonumber(redis.call('HGET', rkey, 'expires_at') or 'x')
  if meta and meta.agent then
    skipped = skipped + 1  -- held already (cannot happen): leave it to its holder
  elseif not meta or not message or not state or is_terminal(state) then
    drop(best, meta, state)
    skipped = skipped + 1
  elseif cancel_reason(best) then
    revoke(best, meta, 'CANCELLED', cancel_reason(best))
    skipped = skipped + 1
  elseif expires and expires <= now then
    revoke(best, meta, 'EXPIRED', 'expired')
    skipped = skipped + 1
  else
    local attempts = redis.call('HINCRBY', rkey, 'attempts', 1)
    redis.call('HDEL', rkey, 'next_attempt_at')
    set_state(ns, best, 'RUNNING', now, {'started_at', ARGV[2], 'worker', agent})
    meta.agent, meta.lease_s = agent, lease
    redis.call('HSET', TASKS, best, cjson.encode(meta))
    redis.call('ZADD', LEASES, now + lease, best)
    redis.call('SADD', agent_tasks(agent), best)
    redis.call('EXPIRE', rkey, ttl + math.ceil(lease))
    local info = redis.call('HMGET', rkey, 'priority', 'tags', 'parent_id')
    out.claimed = {id = best, type = kind, attempt = attempts, lease_until = now + lease,
                   priority = info[1] or false, tags = info[2] or false,
                   parent_id = info[3] or false}
    return reply(cjson.encode(out), message)
  end
end
